"""Cross-validate the gate's settings on the training questions only, so choices never see an eval file.

    python bench/gate_cv.py [--c 8 --c 16] [--lexical 1.5,1.0 --lexical 0,0] [--folds 5] [--seed 0]
                            [--encoder plain|shipped] [--no-states]

For every setting, `Gate.fit` on some training questions (data/*/train.jsonl, general included), which sets
temperature and threshold on its own inner folds, then routes the questions left out. Prints JSON, per setting,
router_eval.py's summary numbers over the routed questions.

`--encoder plain` (the default) embeds with plain MiniLM and routes every outer stratified fold in turn.
`--encoder shipped` embeds with the bundled tuned encoder and routes only the tenth its tuning held out
(router.heldout), fitting on the other nine tenths: an encoder has seen the questions it was tuned on, so no
other split is honest for it. There the gate's calibration falls back to all rows, all of them seen by the
encoder, so the threshold is set on easier logits than in the shipped gate.
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

from bench.router_eval import DEFAULT_CACHE, add_states_flag, app_states, training_data  # noqa: E402
from experts import BUNDLED_DIR  # noqa: E402
from router import GENERAL, Gate, Lexical, SentenceEncoder  # noqa: E402
from router.calibration import expected_calibration_error  # noqa: E402
from router.hidden_states import HiddenStates  # noqa: E402
from router.training import training_set  # noqa: E402
from router.tuning import load_encoder  # noqa: E402


def cross_validate(experts: dict[str, list[str]], general: list[str], encoder: SentenceEncoder, *,
                   splits: list[tuple[np.ndarray, np.ndarray]], seed: int, cache_dir: Path,
                   states: HiddenStates | None = None, **settings: float | Lexical) -> dict[str, object]:
    """`splits` are (fit rows, routed rows) index pairs into `training_set`'s order; `states` and `settings` are
    passed on to `Gate.fit` (c, lexical), and leaving a setting out keeps the gate's default."""
    labels, texts, y = training_set(experts, general)
    predicted = np.full(len(y), -1)
    probabilities = np.zeros((len(y), len(labels)))
    for train, held in splits:
        split = {name: [texts[i] for i in train if y[i] == k] for k, name in enumerate(labels)}
        gate = Gate.fit({n: split[n] for n in labels[:-1]}, split[GENERAL], encoder, cache_dir=cache_dir, seed=seed,
                        states=states, **settings)
        for i, d in zip(held, gate.route_batch([texts[i] for i in held])):
            predicted[i] = labels.index(d.routed)
            probabilities[i] = [d.probabilities[n] for n in labels]
    routed = predicted >= 0
    predicted, probabilities, y = predicted[routed], probabilities[routed], y[routed]
    general_k = labels.index(GENERAL)
    recall = {n: round(float(np.mean(predicted[y == k] == k)), 4) for k, n in enumerate(labels)}
    return {
        "settings": {k: v.to_json() if isinstance(v, Lexical) else v for k, v in settings.items()},
        "hidden_states": states.name if states else None,
        "routed": int(routed.sum()),
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
    parser.add_argument("--encoder", choices=["plain", "shipped"], default="plain",
                        help="plain MiniLM over outer folds, or the bundled tuned encoder on its held-out tenth")
    add_states_flag(parser)
    args = parser.parse_args()

    cs = [{"c": c} for c in args.c] if args.c else [{}]
    lexicals = [{"lexical": Lexical(*map(float, w.split(",")))} for w in args.lexical] if args.lexical else [{}]
    experts, general = training_data(args.data)
    _, texts, y = training_set(experts, general)
    if args.encoder == "shipped":
        encoder = load_encoder(BUNDLED_DIR)
        held = ~encoder.tuned_on(texts)
        if not held.any():
            raise SystemExit("the bundled encoder held no question out of its tuning: nothing to route")
        splits = [(np.flatnonzero(~held), np.flatnonzero(held))]
    else:
        encoder = SentenceEncoder()
        splits = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(texts, y))
    states = app_states(args.states)
    results = [cross_validate(experts, general, encoder, splits=splits, seed=args.seed, cache_dir=args.cache_dir,
                              states=states, **c, **lexical)
               for c, lexical in itertools.product(cs, lexicals)]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
