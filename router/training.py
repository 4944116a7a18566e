"""Fitting the gate's classifier: check the examples, fit, then calibrate and set the threshold on held-out folds."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from router.calibration import expected_calibration_error, fit_temperature, softmax
from router.decision import GENERAL

MIN_PER_CLASS = 2


@dataclass(frozen=True)
class FitReport:
    """How the gate did on its own held-out folds; saved with it so a refit can be compared.

    `calibration_rows` of the `n` out-of-fold rows, those whose question the encoder was not trained on, set
    the temperature and threshold and give the ECEs and the balanced accuracy below."""

    n: int
    folds: int
    calibration_rows: int
    temperature: float
    ece_raw: float
    ece_calibrated: float
    threshold: float
    heldout_balanced_accuracy: float

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class LinearGate:
    """logits = x @ coef.T + intercept, probabilities = softmax(logits / temperature); classes in `labels` order."""

    labels: tuple[str, ...]
    coef: np.ndarray  # (C, F) float32
    intercept: np.ndarray  # (C,) float32
    temperature: float
    threshold: float
    report: FitReport


def training_hash(examples: dict[str, list[str]], general: list[str]) -> str:
    """sha256 of the training questions per class, independent of order: tells the app whether a refit is due."""
    data = {name: sorted(texts) for name, texts in {**examples, GENERAL: general}.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def training_set(examples: dict[str, list[str]], general: list[str]) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """Labels (experts sorted, then "general"), all questions, and their (N,) class indices; ValueError on bad input."""
    if not isinstance(examples, dict) or not examples:
        raise ValueError("the gate needs at least 2 classes: give at least one expert besides general")
    for name, texts in examples.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"expert names must be non-empty strings, got {name!r}")
        if name.strip().lower() == GENERAL:
            raise ValueError(f"{name!r} is reserved for the base-model fallback; pass those questions as `general`")
        _check_texts(f"expert {name!r}", texts)
    _check_texts(f"{GENERAL!r} (off-domain questions)", general)
    labels = (*sorted(examples), GENERAL)
    texts = [t for name in labels[:-1] for t in examples[name]] + list(general)
    y = np.repeat(np.arange(len(labels)), [len(examples[n]) for n in labels[:-1]] + [len(general)])
    return labels, texts, y


def _check_texts(what: str, texts: list[str]) -> None:
    if not isinstance(texts, (list, tuple)) or len(texts) == 0:
        raise ValueError(f"{what} has no questions")
    if len(texts) < MIN_PER_CLASS:
        raise ValueError(f"{what} has {len(texts)} question; at least {MIN_PER_CLASS} are needed to hold some out")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{what}: question {i} is empty or not a string")


def fit_linear(x: np.ndarray | sp.spmatrix, y: np.ndarray, labels: tuple[str, ...], *, c: float, folds: int,
               seed: int, unseen: np.ndarray | None = None) -> LinearGate:
    """Out-of-fold logits give the temperature and the threshold; the final classifier is fit on all of `x`.

    `x` is (N, F) features, dense or scipy-sparse. `unseen` (N,) bool marks the rows whose question the encoder
    was not trained on: a tuned encoder makes its own training questions look easier than new ones, so only
    those rows calibrate, unless some class has fewer than `MIN_PER_CLASS` of them. BLAS runs single-threaded
    here: on a small shared CPU, threads fighting over these small matrices made each fit 20-50x slower.
    """
    with threadpool_limits(limits=1):
        return _fit_linear(x, y, labels, c=c, folds=folds, seed=seed, unseen=unseen)


def _fit_linear(x: np.ndarray | sp.spmatrix, y: np.ndarray, labels: tuple[str, ...], *, c: float, folds: int,
                seed: int, unseen: np.ndarray | None) -> LinearGate:
    folds = max(2, min(folds, int(np.bincount(y).min())))
    oof = np.zeros((len(y), len(labels)))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        oof[held] = _classifier(c, seed).fit(x[train], y[train]).decision_function(x[held])
    rows = unseen if unseen is not None and np.bincount(y[unseen], minlength=len(labels)).min() >= MIN_PER_CLASS \
        else np.ones(len(y), dtype=bool)
    oof, y_cal = oof[rows], y[rows]

    temperature = fit_temperature(oof, y_cal)
    ece_raw = expected_calibration_error(softmax(oof), y_cal)
    ece_calibrated = expected_calibration_error(softmax(oof, temperature), y_cal)
    if ece_calibrated >= ece_raw:
        temperature, ece_calibrated = 1.0, ece_raw
    threshold, score = choose_threshold(softmax(oof, temperature), y_cal)

    final = _classifier(c, seed).fit(x, y)
    report = FitReport(len(y), folds, int(rows.sum()), temperature, ece_raw, ece_calibrated, threshold, score)
    # safetensors.numpy writes the raw buffer: a Fortran-ordered coef_ would load back scrambled.
    coef = np.ascontiguousarray(final.coef_, dtype=np.float32)
    intercept = np.ascontiguousarray(final.intercept_, dtype=np.float32)
    return LinearGate(labels, coef, intercept, temperature, threshold, report)


def _classifier(c: float, seed: int) -> LogisticRegression:
    return LogisticRegression(C=c, class_weight="balanced", max_iter=1000, random_state=seed)


def choose_threshold(probabilities: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The top-expert probability under which to fall back that maximises balanced routing accuracy.

    A row is right when it falls back and is general, or routes to its own expert as top-1 without falling back.
    Balanced: the mean over classes, so a small general class weighs as much as a big expert. Every threshold
    within one standard error of the best score counts as best, and the middle of those is taken: on a few
    hundred calibration rows a one-question bump is noise, and the middle keeps distance from both kinds of
    error. "general" is the last column.
    """
    general = probabilities.shape[1] - 1
    experts = probabilities[:, :general]
    top = experts.argmax(axis=1)
    top_p = experts.max(axis=1)
    general_wins = probabilities[:, general] >= top_p
    classes = np.unique(y)
    counts = np.array([(y == k).sum() for k in classes])
    candidates = np.round(np.arange(0.0, 1.0, 0.01), 2)
    accuracy = []
    for t in candidates:
        fallback = general_wins | (top_p < t)
        right = np.where(y == general, fallback, ~fallback & (top == y))
        accuracy.append([right[y == k].mean() for k in classes])
    accuracy = np.asarray(accuracy)
    scores = accuracy.mean(axis=1)
    peak = accuracy[scores.argmax()]
    error = np.sqrt(np.sum(peak * (1 - peak) / counts)) / len(classes)
    best = np.flatnonzero(scores >= scores.max() - error - 1e-9)
    return float(candidates[best[len(best) // 2]]), float(scores.max())
