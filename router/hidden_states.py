"""The base LM's view of a question: its mean hidden state after the first few layers, beside MiniLM's.

MiniLM is small, and tuned on our questions it places a term none of them names wherever it half-recognises it;
the base causal LM read trillions of tokens, and its early layers already place "D-dimer" or "HELOC" in a field.
On questions whose terms the training data never named (`bench/unseen_terms.py --states both` on five data
batches, each routed by a gate fitted before it), this block beside the embedding got 73 right that the gate alone
missed and missed 31 it got right. Only the first `layers` layers are loaded and run. Six layers, at weight 3 in
the gate, were chosen on those batches: 3 or 4 layers gained less, and weights 1, 1.5 and 2 gained less too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAX_TOKENS = 1024  # more than MiniLM reads in full (router.encoder), so this view never sees less of a question


class HiddenStates:
    """Mean over tokens of the residual stream after the first `layers` layers of a Hugging Face causal LM folder
    (all of them if it has fewer).

    Same `name`/`dim`/`encode` as a router.encoder.Encoder, so EmbeddingCache keeps its vectors too; the vectors
    are raw (not normalised): `StateBlock` standardises them with the training questions' statistics. The layers
    run in bfloat16 by default: 6 layers took 5.7 ms for one question on this CPU, against 14 ms in float32.
    """

    def __init__(self, folder: str | Path, *, layers: int = 6, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.bfloat16, batch_size: int = 32) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, logging

        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be a whole number at least 1, got {layers!r}")
        folder = Path(folder)
        verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()  # the layers left out are reported as unused weights: that is the point
        logging.disable_progress_bar()
        try:
            layers = min(layers, AutoConfig.from_pretrained(folder).num_hidden_layers)
            # through the causal-LM class: AutoModel has no lm_head, so from a checkpoint that stores the tied
            # embeddings only as lm_head.weight (experts.base_model's GGUF cache does) it leaves them random
            self._model = AutoModelForCausalLM.from_pretrained(folder, num_hidden_layers=layers, dtype=dtype).model
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as err:  # transformers raises OSError, ValueError, KeyError... for a broken folder
            raise ValueError(f"cannot load the base model's first layers from {folder}: {err}") from None
        finally:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
        self._model.norm = torch.nn.Identity()  # the final norm belongs after the last layer, not after these
        self._model.to(device).eval()
        self._tokenizer.padding_side = "right"
        self._tokenizer.truncation_side = "left"  # an exam vignette or a contract puts the question at the end
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self.name = f"{folder.name}:layers{layers}:{str(dtype).removeprefix('torch.')}"
        self.dim: int = int(self._model.config.hidden_size)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32; texts are batched by length, so padding costs little."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self._tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                                    max_length=MAX_TOKENS).to(self._model.device)
            with torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out[rows] = ((hidden.float() * mask).sum(1) / mask.sum(1)).cpu().numpy()
        return out


@dataclass(frozen=True)
class StateBlock:
    """Hidden states standardised per dimension with the training questions' mean and spread, L2-normalised and
    scaled by `weight` (how far the block counts next to the unit-length embedding): the early layers carry a
    few huge dimensions that would otherwise drown the rest."""

    mean: np.ndarray  # (dim,) float32
    scale: np.ndarray  # (dim,) float32, > 0
    weight: float

    @classmethod
    def fit(cls, states: np.ndarray, weight: float) -> StateBlock:
        if weight <= 0:
            raise ValueError(f"the hidden-state weight must be above 0, got {weight}")
        return cls(states.mean(0).astype(np.float32), (states.std(0) + 1e-6).astype(np.float32), float(weight))

    def transform(self, states: np.ndarray) -> np.ndarray:
        z = (states - self.mean) / self.scale
        return (self.weight * z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)
