"""How well the gate routes held-out questions: fit on data/*/train.jsonl, score on the eval and boundary files.

    python bench/router_eval.py --json [--data data] [--top-k 2] [--out bench/results/router_eval.json]
        [--encoder shipped|plain|tune] [--tune-without DOMAIN] [--held-out SHARE] [--no-states]

Every data/<domain>/ with a train.jsonl is an expert, except data/general/, whose questions are the
off-domain class the gate falls back on. Held out: each domain's eval.jsonl labelled with the domain,
data/general/eval.jsonl labelled "general", and data/general/boundary.jsonl (hard near-boundary cases,
each with its own domain). Threshold and calibration come from folds of the training data only, and only from
the training questions the encoder's tuning held out (router.heldout).

The encoder: "shipped" is the one the app uses (MiniLM with the LoRA tuned in experts/bundled, itself tuned
on the same train.jsonl questions), "plain" is MiniLM as published, "tune" tunes one here from train.jsonl
(minutes). `--tune-without legal` leaves that domain out of the tuning but not out of the gate: how a domain
added after the encoder was tuned is routed. `--held-out` sets the share of questions the tuning leaves out
for calibration (router.tuning.TuneConfig's default otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.gating import gate_states  # noqa: E402
from experts import BUNDLED_DIR  # noqa: E402
from router import GENERAL, Gate, SentenceEncoder, evaluate, load_labelled  # noqa: E402
from router.hidden_states import HiddenStates  # noqa: E402
from router.tuning import TuneConfig, load_encoder, tune_encoder  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "expertgate" / "router"


def read_questions(path: Path) -> list[str]:
    questions = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    questions.append(json.loads(line)["question"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise SystemExit(f"{path}:{line_no}: no readable 'question' ({e})") from None
    return questions


def add_states_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-states", dest="states", action="store_false",
                        help="fit the gate without the base model's hidden states (router.hidden_states)")


def app_states(enabled: bool) -> HiddenStates | None:
    """The base model's first layers as the app gives them to the gate, or None when `enabled` is false."""
    if not enabled:
        return None
    states, warning = gate_states()
    if warning:
        raise SystemExit(warning)
    return states


def training_data(data: Path) -> tuple[dict[str, list[str]], list[str]]:
    experts = {p.parent.name: read_questions(p) for p in sorted(data.glob("*/train.jsonl"))
               if p.parent.name != GENERAL}
    return experts, read_questions(data / GENERAL / "train.jsonl")


def held_out(data: Path, domains: list[str]) -> tuple[list[str], list[str]]:
    questions, labels = [], []
    for domain in [*domains, GENERAL]:
        path = data / domain / "eval.jsonl"
        if path.exists():
            qs = read_questions(path)
            questions += qs
            labels += [domain] * len(qs)
    return questions, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "router_eval.json")
    parser.add_argument("--save-gate", type=Path, help="also save the fitted gate to this folder")
    parser.add_argument("--json", action="store_true", help="print the full JSON result (else a summary)")
    parser.add_argument("--encoder", choices=["shipped", "plain", "tune"], default="shipped")
    parser.add_argument("--tune-without", help="with --encoder tune: a domain left out of the tuning")
    parser.add_argument("--held-out", type=float, help="with --encoder tune: share of questions left out of it")
    add_states_flag(parser)
    args = parser.parse_args()

    if (args.tune_without or args.held_out is not None) and args.encoder != "tune":
        raise SystemExit("--tune-without and --held-out need --encoder tune")
    experts, general = training_data(args.data)
    tuning = None
    if args.encoder == "plain":
        encoder = SentenceEncoder()
    elif args.encoder == "shipped":
        encoder = load_encoder(BUNDLED_DIR)
    else:
        if args.tune_without is not None and args.tune_without not in experts:
            raise SystemExit(f"--tune-without {args.tune_without!r} is not one of {', '.join(experts)}")
        with tempfile.TemporaryDirectory() as folder:
            config = TuneConfig() if args.held_out is None else TuneConfig(held_out=args.held_out)
            tuning = tune_encoder({k: v for k, v in experts.items() if k != args.tune_without}, general, folder,
                                  config=config)
            encoder = load_encoder(folder)
    start = time.perf_counter()
    # an encoder tuned in this run is never seen again: caching its embeddings would only leave files behind
    gate = Gate.fit(experts, general, encoder, cache_dir=None if tuning else args.cache_dir, seed=args.seed,
                    states=app_states(args.states))
    fit_seconds = time.perf_counter() - start
    if args.save_gate:
        gate.save(args.save_gate)

    questions, domains = held_out(args.data, list(experts))
    heldout = evaluate(gate, questions, domains, top_k=args.top_k)
    boundary_path = args.data / GENERAL / "boundary.jsonl"
    boundary = evaluate(gate, *load_labelled(boundary_path), top_k=args.top_k) if boundary_path.exists() else None

    result = {
        "encoder": encoder.name,
        "hidden_states": gate.states.name if gate.states else None,
        "tuning": asdict(tuning) if tuning else None,
        "tuned_without": args.tune_without,
        "train": {"experts": {k: len(v) for k, v in experts.items()}, GENERAL: len(general),
                  "fit_seconds": round(fit_seconds, 2), "report": gate.report.to_json()},
        "summary": {
            "domain_accuracy": heldout["domain_accuracy"],
            "general_fallback_rate": heldout["recall"].get(GENERAL),
            "accuracy": heldout["accuracy"],
            "macro_f1": heldout["macro_f1"],
            "ece": heldout["ece"],
            "boundary_accuracy": boundary["accuracy"] if boundary else None,
        },
        "heldout": heldout,
        "boundary": boundary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result if args.json else result["summary"], indent=2))


if __name__ == "__main__":
    main()
