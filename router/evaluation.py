"""Scoring a gate on labelled questions, and reading those labelled questions from JSONL or CSV."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from router.calibration import expected_calibration_error
from router.decision import GENERAL
from router.gate import Gate


def evaluate(gate: Gate, questions: list[str], domains: list[str], top_k: int = 2) -> dict[str, Any]:
    """Accuracy, macro F1, per-domain recall, confusion (true -> predicted), fallback rate and ECE.

    The prediction is the top expert, or "general" when the gate falls back; a domain question is right only
    when routed to its own domain, a "general" one only when it falls back. ECE is over the gate's classes:
    questions whose domain the gate does not know are left out of it.
    """
    if len(questions) != len(domains):
        raise ValueError(f"{len(questions)} questions but {len(domains)} domains")
    if not questions:
        raise ValueError("nothing to evaluate: no questions")
    decisions = gate.route_batch(list(questions), top_k=top_k)
    predicted = [d.routed for d in decisions]

    names = sorted(set(domains) | set(predicted))
    confusion = {t: {p: 0 for p in names} for t in sorted(set(domains))}
    for t, p in zip(domains, predicted):
        confusion[t][p] += 1
    recall = {t: row[t] / sum(row.values()) for t, row in confusion.items()}
    right = [t == p for t, p in zip(domains, predicted)]
    on_domain = [r for r, t in zip(right, domains) if t != GENERAL]

    known = [i for i, t in enumerate(domains) if t in gate.labels]
    probs = np.array([[decisions[i].probabilities[n] for n in gate.labels] for i in known])
    probs = probs.reshape(-1, len(gate.labels))
    labels = np.array([gate.labels.index(domains[i]) for i in known], dtype=int)
    return {
        "n": len(questions),
        "accuracy": float(np.mean(right)),
        "domain_accuracy": float(np.mean(on_domain)) if on_domain else None,
        "macro_f1": float(f1_score(domains, predicted, labels=sorted(set(domains)), average="macro", zero_division=0)),
        "recall": recall,
        "confusion": confusion,
        "fallback_rate": float(np.mean([d.fallback for d in decisions])),
        "ece": expected_calibration_error(probs, labels),
        "truncated": sum(d.truncated for d in decisions),
    }


def load_labelled(path: str | Path) -> tuple[list[str], list[str]]:
    """Questions and domains from JSONL (one {"question", "domain"} object a line) or CSV with those columns."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return _read_jsonl(path)
    raise ValueError(f"{path}: expected a .jsonl or .csv file")


def _read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    questions, domains = [], []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object with 'question' and 'domain'")
            q, d = _fields(row, path, line_no)
            questions.append(q)
            domains.append(d)
    return questions, domains


def _read_csv(path: Path) -> tuple[list[str], list[str]]:
    questions, domains = [], []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"question", "domain"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}:1: header lacks column(s) {', '.join(sorted(missing))}")
        for row in reader:
            q, d = _fields(row, path, reader.line_num)
            questions.append(q)
            domains.append(d)
    return questions, domains


def _fields(row: dict, path: Path, line_no: int) -> tuple[str, str]:
    q, d = row.get("question"), row.get("domain")
    if not isinstance(q, str) or not q.strip():
        raise ValueError(f"{path}:{line_no}: missing or empty 'question'")
    if not isinstance(d, str) or not d.strip():
        raise ValueError(f"{path}:{line_no}: missing or empty 'domain'")
    return q, d.strip()
