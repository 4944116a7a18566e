"""Route the training questions added since a git revision with the gate as it stood there: terms it never saw.

    python bench/unseen_terms.py --since 4a495cc [--until REV] [--lexical 1.5,1.0 --lexical 3.0,1.0]
                                 [--states on|off|both] [--out FILE]

The held-out eval's errors are mostly terms no training question names, and every later data batch names new
ones, so it gives hundreds of such questions without reading an eval file. The gate is fitted on
data/*/train.jsonl as committed at `--since`, with the encoder shipped at that revision (tuned on that data), and
routes the questions added to each file since (up to `--until`, else the working tree). `--states` fits the gate
with the base model's hidden states (on, the app's default), without (off), or both ways. With several settings
(each `--lexical` weight, each way of `--states`) the first is the baseline, and each other is compared with it
question by question (exact McNemar test on the questions only one gets right).
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.router_eval import DEFAULT_CACHE, app_states  # noqa: E402
from router import GENERAL, Gate, Lexical  # noqa: E402
from router.tuning import load_encoder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ENCODER_POINTER = "experts/bundled/encoder.json"


def git(*args: str) -> bytes:
    result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True)
    if result.returncode:
        raise SystemExit(f"git {' '.join(args)}: {result.stderr.decode().strip()}")
    return result.stdout


def questions(text: str) -> list[str]:
    return [json.loads(line)["question"] for line in text.splitlines() if line.strip()]


def train_file(name: str, rev: str | None) -> str:
    if rev is None:
        return (REPO / "data" / name / "train.jsonl").read_text(encoding="utf-8")
    return git("show", f"{rev}:data/{name}/train.jsonl").decode("utf-8")


def split_by_revision(since: str, until: str | None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per class, the training questions at `since`, and those at `until` (None: the working tree) not among them."""
    before, added = {}, {}
    for path in sorted((REPO / "data").glob("*/train.jsonl")):
        name = path.parent.name
        before[name] = questions(train_file(name, since))
        seen = set(before[name])
        added[name] = [q for q in questions(train_file(name, until)) if q not in seen]
    return before, added


def encoder_at(rev: str, folder: Path):
    """The tuned encoder shipped at `rev`, unpacked from git into `folder`."""
    tuned = json.loads(git("show", f"{rev}:{ENCODER_POINTER}"))["folder"]
    archive = git("archive", rev, ENCODER_POINTER, f"experts/bundled/{tuned}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return load_encoder(folder / "experts" / "bundled")


def route(gate: Gate, added: dict[str, list[str]]) -> dict[str, list[bool]]:
    """Per class, whether each added question went to its own class (an expert on top, or the fallback)."""
    return {name: [d.routed == name for d in gate.route_batch(qs)] for name, qs in added.items()}


def summary(right: dict[str, list[bool]]) -> dict[str, object]:
    domain = [r for name, rows in right.items() if name != GENERAL for r in rows]
    general = right.get(GENERAL, [])
    return {"added": {name: len(rows) for name, rows in right.items()},
            "wrong": {name: rows.count(False) for name, rows in right.items()},
            "domain_accuracy": round(sum(domain) / len(domain), 4) if domain else None,
            "general_fallback_rate": round(sum(general) / len(general), 4) if general else None}


def paired(baseline: list[bool], other: list[bool]) -> dict[str, object]:
    fixed = sum(o and not b for b, o in zip(baseline, other))
    broken = sum(b and not o for b, o in zip(baseline, other))
    p = binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "mcnemar_exact_p": round(float(p), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", required=True, help="git revision whose data and encoder the gate is fitted with")
    parser.add_argument("--until", help="git revision whose added questions are routed (default: the working tree)")
    parser.add_argument("--lexical", action="append", help="WORD,CHAR block weights (repeat to compare)")
    parser.add_argument("--states", choices=["on", "off", "both"], default="on",
                        help="fit with the base model's hidden states, without, or both (without first)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "unseen_terms.json")
    args = parser.parse_args()

    before, added = split_by_revision(args.since, args.until)
    if not any(added.values()):
        raise SystemExit(f"no training question was added since {args.since}")
    lexicals = [Lexical(*map(float, w.split(","))) for w in args.lexical] if args.lexical else [Lexical()]
    states = app_states(args.states != "off")
    views = {"on": [states], "off": [None], "both": [None, states]}[args.states]
    with tempfile.TemporaryDirectory() as tmp:
        encoder = encoder_at(args.since, Path(tmp))
        runs = []
        for lexical, view in itertools.product(lexicals, views):
            gate = Gate.fit({n: qs for n, qs in before.items() if n != GENERAL}, before[GENERAL], encoder,
                            cache_dir=args.cache_dir, lexical=lexical, states=view)
            runs.append((lexical, view, route(gate, added)))
    flat = [[r for rows in right.values() for r in rows] for *_, right in runs]
    result = {"since": args.since, "until": args.until or "working tree", "encoder": encoder.name,
              "settings": [{"lexical": lexical.to_json(), "hidden_states": view.name if view else None,
                            **summary(right), **({"vs_first": paired(flat[0], flat[k])} if k else {})}
                           for k, (lexical, view, right) in enumerate(runs)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
