"""Cross-validate the gate's settings on the training questions only, so choices never see an eval file.

    python bench/gate_cv.py [--c 8 --c 16] [--lexical 1.5,1.0 --lexical 0,0] [--folds 5] [--seed 0]

For every setting: outer stratified folds of data/*/train.jsonl (general included); `Gate.fit` on the other
folds, which sets temperature and threshold on its own inner folds, then routes the held-out fold. Prints JSON,
per setting, router_eval.py's summary numbers pooled over the outer folds. It embeds with plain MiniLM: the
shipped encoder's LoRA was tuned on nine tenths of train.jsonl, spread over every fold, so no fold would be
held out from it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.router_eval import DEFAULT_CACHE, training_data  # noqa: E402
from router import GENERAL, Gate, Lexical, SentenceEncoder  # noqa: E402
from router.calibration import expected_calibration_error  # noqa: E402
from router.training import training_set  # noqa: E402


def cross_validate(experts: dict[str, list[str]], general: list[str], encoder: SentenceEncoder, *, folds: int,
                   seed: int, cache_dir: Path, **settings: float | Lexical) -> dict[str, object]:
    """`settings` are passed on to `Gate.fit` (c, lexical); leaving one out keeps the gate's default."""
    labels, texts, y = training_set(experts, general)
    predicted = np.empty(len(y), dtype=int)
    probabilities = np.zeros((len(y), len(labels)))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(texts, y):
        split = {name: [texts[i] for i in train if y[i] == k] for k, name in enumerate(labels)}
        gate = Gate.fit({n: split[n] for n in labels[:-1]}, split[GENERAL], encoder, cache_dir=cache_dir, seed=seed,
                        **settings)
        for i, d in zip(held, gate.route_batch([texts[i] for i in held])):
            predicted[i] = labels.index(GENERAL if d.fallback else d.experts[0].name)
            probabilities[i] = [d.probabilities[n] for n in labels]
    general_k = labels.index(GENERAL)
    recall = {n: round(float(np.mean(predicted[y == k] == k)), 4) for k, n in enumerate(labels)}
    return {
        "settings": {k: v.to_json() if isinstance(v, Lexical) else v for k, v in settings.items()},
        "domain_accuracy": round(float(np.mean(predicted[y != general_k] == y[y != general_k])), 4),
        "general_fallback_rate": recall[GENERAL],
        "balanced_accuracy": round(float(np.mean(list(recall.values()))), 4),
        "ece": round(expected_calibration_error(probabilities, y), 4),
        "recall": recall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--c", type=float, action="append", help="inverse L2 strength (repeat for a grid)")
    parser.add_argument("--lexical", action="append", help="WORD,CHAR block weights (repeat for a grid)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cs = [{"c": c} for c in args.c] if args.c else [{}]
    lexicals = [{"lexical": Lexical(*map(float, w.split(",")))} for w in args.lexical] if args.lexical else [{}]
    encoder = SentenceEncoder()
    experts, general = training_data(args.data)
    results = [cross_validate(experts, general, encoder, folds=args.folds, seed=args.seed, cache_dir=args.cache_dir,
                              **c, **lexical)
               for c, lexical in itertools.product(cs, lexicals)]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
