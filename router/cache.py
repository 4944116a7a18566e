"""Embeddings of training questions kept on disk by content hash, so a refit only encodes new questions."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from router.atomic import atomic_write
from router.encoder import Encoder


def content_key(encoder_name: str, text: str) -> bytes:
    return hashlib.sha256(f"{encoder_name}\0{text}".encode()).digest()


class EmbeddingCache:
    """One safetensors file per encoder: `keys` (N, 32) uint8 sha256 digests, `vectors` (N, dim) float32."""

    def __init__(self, folder: str | Path, encoder: Encoder) -> None:
        self.encoder = encoder
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.name)
        self.path = Path(folder) / f"embeddings-{slug}.safetensors"
        self._rows: dict[bytes, np.ndarray] = {}
        if self.path.exists():
            stored = load_file(self.path)
            if stored["vectors"].shape[1:] != (encoder.dim,):
                raise ValueError(f"embedding cache {self.path} holds {stored['vectors'].shape[1]}-dim vectors but "
                                 f"encoder {encoder.name!r} gives {encoder.dim}: use another cache dir")
            self._rows = {bytes(k): v for k, v in zip(stored["keys"], stored["vectors"])}

    def __len__(self) -> int:
        return len(self._rows)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(N, dim) embeddings of `texts`, encoding only those not seen before and saving them."""
        keys = [content_key(self.encoder.name, t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts) if k not in self._rows}
        if missing:
            vectors = self.encoder.encode(list(missing.values()))
            self._rows.update(zip(missing.keys(), vectors))
            self._save()
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([self._rows[k] for k in keys]).astype(np.float32)

    def _save(self) -> None:
        keys = np.frombuffer(b"".join(self._rows), dtype=np.uint8).reshape(len(self._rows), 32)
        vectors = np.stack(list(self._rows.values())).astype(np.float32)
        atomic_write(self.path, lambda tmp: save_file({"keys": keys, "vectors": vectors}, tmp))
