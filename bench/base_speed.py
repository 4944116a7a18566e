"""Cold and warm load times of the base model and its greedy tokens/s at batch 1 and batch 8.

    python bench/base_speed.py --json [--rounds 3] [--new-tokens 64] [--out bench/results/base_speed.json]

Cold: an empty cache, so the GGUF is dequantized and cached. Warm: the same cache again.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from experts.base_model import load_base_model  # noqa: E402
from experts.generation import SamplingConfig, generate  # noqa: E402
from experts.prompt import chat_prompt  # noqa: E402

QUESTIONS = ["What is compound interest?", "How do I reverse a list in Python?", "What causes high blood pressure?",
             "Is a verbal contract binding?", "Why is the sky blue?", "What is inflation?",
             "How does a vaccine work?", "What is a hash map?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results/base_speed.json"))
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="base-speed-"))
    started = time.perf_counter()
    load_base_model(device="cpu", cache_dir=cache)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    base = load_base_model(device="cpu", cache_dir=cache)
    warm = time.perf_counter() - started
    prompts = [chat_prompt(base.tokenizer, q) for q in QUESTIONS]
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False)
    batches = {1: prompts[:1], 8: prompts}
    for batch in batches.values():
        generate(base.model, base.tokenizer, batch, SamplingConfig(max_new_tokens=4))
    seconds = {size: [] for size in batches}
    for _ in range(args.rounds):
        for size, batch in batches.items():
            started = time.perf_counter()
            generate(base.model, base.tokenizer, batch, sampling)
            seconds[size].append(time.perf_counter() - started)
    report = {
        "load_seconds": {"cold": round(cold, 2), "warm": round(warm, 2)},
        "tokens_per_s": {f"batch_{size}": round(size * args.new_tokens / statistics.median(s), 1)
                         for size, s in seconds.items()},
        "new_tokens": args.new_tokens, "rounds": args.rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
