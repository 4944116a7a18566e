"""The learned gate: embed a question, score every class, and decide which experts answer it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from router.atomic import atomic_write
from router.cache import EmbeddingCache
from router.calibration import softmax
from router.decision import GENERAL, RoutingDecision, check_top_k, decide
from router.encoder import Encoder
from router.hidden_states import HiddenStates, StateBlock
from router.lexical import Lexical, keep_columns, seen_columns
from router.training import FitReport, LinearGate, fit_linear, training_hash, training_set

WEIGHTS_FILE = "gate.safetensors"
CONFIG_FILE = "gate.json"
FORMAT_VERSION = 3


class Gate:
    """Logistic regression over an L2-normalised sentence embedding, optionally the base LM's hidden states, and
    hashed n-grams of the question, temperature-calibrated, with a held-out threshold.

    Features of a question: [embedding (D) | standardised hidden states (H, when `states` is given) | hashed
    n-grams restricted to `columns` (K)]; columns no training question touched carry no weight, so they are
    dropped. Classes are the experts plus "general" (answer with the base model). Build with `Gate.fit` or
    `Gate.load`.
    """

    def __init__(self, linear: LinearGate, encoder: Encoder, lexical: Lexical, columns: np.ndarray, *,
                 min_weight: float, data_hash: str, states: HiddenStates | None = None,
                 block: StateBlock | None = None) -> None:
        if not 0.0 <= min_weight < 1.0:
            raise ValueError(f"min_weight must be in [0, 1), got {min_weight}")
        if (states is None) != (block is None):
            raise ValueError("hidden states need their standardisation block, and a block needs its states")
        width = encoder.dim + (states.dim if states is not None else 0) + len(columns)
        if linear.coef.shape[1] != width:
            raise ValueError(f"gate weights cover {linear.coef.shape[1]} features, not the {width} of the encoder "
                             f"({encoder.dim}), hidden states and {len(columns)} lexical columns")
        self.linear = linear
        self.encoder = encoder
        self.states = states
        self.block = block
        self.lexical = lexical
        self.columns = columns
        self.min_weight = min_weight
        self.training_hash = data_hash

    @classmethod
    def fit(cls, examples: dict[str, list[str]], general: list[str], encoder: Encoder, *,
            cache_dir: str | Path | None = None, seed: int = 0, min_weight: float = 0.1, c: float = 8.0,
            folds: int = 3, lexical: Lexical = Lexical(), states: HiddenStates | None = None,
            states_weight: float = 3.0) -> Gate:
        """Fit on each expert's training questions plus off-domain `general` ones.

        With `cache_dir`, embeddings (and hidden states) are kept there by content hash, so refitting after adding
        an expert only encodes its questions. `states` adds the base LM's view (router.hidden_states), counting
        `states_weight` times the embedding. `folds`-fold cross-validation inside the examples sets the calibration
        temperature and the fallback threshold on the questions the encoder was not tuned on (3 folds did as
        well as 5 in nested cross-validation and keep a refit ~40% faster); `c` is the inverse L2 regularisation
        strength; `lexical` sets the hashed n-gram block (`Lexical(0, 0)` leaves the embedding alone).
        """
        labels, texts, y = training_set(examples, general)
        x = _embed(encoder, texts, cache_dir)
        block = None
        if states is not None:
            raw = _embed(states, texts, cache_dir)
            block = StateBlock.fit(raw, states_weight)
            x = np.hstack([x, block.transform(raw)])
        hashed = lexical.transform(texts)
        columns = seen_columns(hashed)
        linear = fit_linear(_join(x, hashed, columns), y, labels, c=c, folds=folds, seed=seed,
                            unseen=~encoder.tuned_on(texts))
        return cls(linear, encoder, lexical, columns, min_weight=min_weight,
                   data_hash=training_hash(examples, general), states=states, block=block)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.linear.labels

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(n for n in self.linear.labels if n != GENERAL)

    @property
    def threshold(self) -> float:
        return self.linear.threshold

    @property
    def report(self) -> FitReport:
        return self.linear.report

    def probabilities(self, questions: list[str]) -> np.ndarray:
        """(N, C) calibrated class probabilities of N questions, columns in `labels` order; one encoder call."""
        questions = list(questions)
        x = self.encoder.encode(questions)
        if self.states is not None:
            x = np.hstack([x, self.block.transform(self.states.encode(questions))])
        x = _join(x, self.lexical.transform(questions), self.columns)
        logits = x @ self.linear.coef.T.astype(np.float64) + self.linear.intercept
        return softmax(np.asarray(logits), self.linear.temperature)

    def route(self, question: str, top_k: int = 2) -> RoutingDecision:
        return self.route_batch([question], top_k)[0]

    def route_batch(self, questions: list[str], top_k: int = 2) -> list[RoutingDecision]:
        """One encoder call for the whole batch; a question longer than the encoder window is flagged truncated."""
        check_top_k(top_k)
        if isinstance(questions, str):
            raise ValueError("route_batch takes a list of questions, got a single string: use route()")
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"question {i} is empty: give a non-empty question to route")
        if not questions:
            return []
        probs = self.probabilities(list(questions))
        window = self.encoder.max_tokens
        return [
            decide({n: float(p) for n, p in zip(self.labels, row)}, top_k=top_k, threshold=self.threshold,
                   min_weight=self.min_weight, truncated=self.encoder.token_count(q) > window, max_tokens=window)
            for q, row in zip(questions, probs)
        ]

    def save(self, folder: str | Path) -> None:
        """Coefficients to safetensors, everything else to JSON; no pickle, so loading runs no code."""
        folder = Path(folder)
        config = {
            "format_version": FORMAT_VERSION,
            "labels": list(self.labels),
            "temperature": self.linear.temperature,
            "threshold": self.threshold,
            "min_weight": self.min_weight,
            "encoder": {"name": self.encoder.name, "dim": self.encoder.dim},
            "lexical": self.lexical.to_json(),
            "hidden_states": None if self.states is None else {"name": self.states.name, "dim": self.states.dim,
                                                                 "weight": self.block.weight},
            "training_hash": self.training_hash,
            "report": self.report.to_json(),
        }
        tensors = {"coef": self.linear.coef, "intercept": self.linear.intercept, "columns": self.columns}
        if self.block is not None:
            tensors |= {"states_mean": self.block.mean, "states_scale": self.block.scale}
        atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(tensors, p))
        atomic_write(folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))

    @classmethod
    def load(cls, folder: str | Path, encoder: Encoder, states: HiddenStates | None = None) -> Gate:
        """The gate saved in `folder`; ValueError unless it was fit with this encoder and these hidden states."""
        folder = Path(folder)
        if not (folder / CONFIG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
            raise ValueError(f"{folder} holds no saved gate (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"gate in {folder} has format {config.get('format_version')!r} but this version reads "
                             f"format {FORMAT_VERSION}: refit it")
        saved = config["encoder"]
        if (saved["name"], saved["dim"]) != (encoder.name, encoder.dim):
            raise ValueError(f"gate in {folder} was fit with encoder {saved['name']!r} ({saved['dim']}-dim), "
                             f"not {encoder.name!r} ({encoder.dim}-dim): refit it")
        _check_states(folder, config.get("hidden_states"), states)
        tensors = load_file(folder / WEIGHTS_FILE)
        linear = LinearGate(tuple(config["labels"]), tensors["coef"], tensors["intercept"], config["temperature"],
                            config["threshold"], FitReport(**config["report"]))
        block = None if states is None else StateBlock(tensors["states_mean"], tensors["states_scale"],
                                                       config["hidden_states"]["weight"])
        return cls(linear, encoder, Lexical.from_json(config["lexical"]), tensors["columns"],
                   min_weight=config["min_weight"], data_hash=config["training_hash"], states=states, block=block)


def _check_states(folder: Path, saved: dict | None, states: HiddenStates | None) -> None:
    if saved is None and states is not None:
        raise ValueError(f"gate in {folder} was fit without the base model's hidden states: refit it to use them")
    if saved is not None and states is None:
        raise ValueError(f"gate in {folder} was fit with the base model's hidden states ({saved['name']}), "
                         "which were not given: load them or refit the gate")
    if saved is not None and (saved["name"], saved["dim"]) != (states.name, states.dim):
        raise ValueError(f"gate in {folder} was fit with hidden states {saved['name']!r} ({saved['dim']}-dim), "
                         f"not {states.name!r} ({states.dim}-dim): refit it")


def _embed(encoder: Encoder | HiddenStates, texts: list[str], cache_dir: str | Path | None) -> np.ndarray:
    return EmbeddingCache(cache_dir, encoder).embed(texts) if cache_dir is not None else encoder.encode(texts)


def _join(embeddings: np.ndarray, hashed: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
    """(N, D) embeddings beside (N, K) `columns` of the (N, W) hashed n-grams -> (N, D + K) float64."""
    return sp.hstack([sp.csr_matrix(embeddings, dtype=np.float64), keep_columns(hashed, columns)], format="csr")

