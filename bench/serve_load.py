"""Does the server's micro-batching pay off? 32 questions sent at once versus the same 32 one at a time.

    python bench/serve_load.py --json [--url URL] [--base-model M] [--experts-dir DIR] [--max-new-tokens 64]
                               [--out bench/results/serve_load.json]

Without --url it starts `expertgate serve` itself (the default base model and bundled experts unless
given). Questions: 8 from each of data/{medical,legal,finance,code}/eval.jsonl, through gradio_client's
`/ask`. speedup = sequential_s / concurrent_s; both runs follow one warm-up request.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradio_client import Client  # noqa: E402

from tests.app_process import running_server  # noqa: E402

DOMAINS = ("medical", "legal", "finance", "code")
PER_DOMAIN = 8


def questions() -> list[str]:
    """Interleaved over the domains, so every batch mixes experts."""
    per_domain = []
    for domain in DOMAINS:
        lines = (ROOT / "data" / domain / "eval.jsonl").read_text(encoding="utf-8").splitlines()
        per_domain.append([json.loads(line)["question"] for line in lines if line.strip()][:PER_DOMAIN])
    return [q for group in zip(*per_domain) for q in group]


def run_concurrent(client: Client, items: list[str], max_new_tokens: int) -> tuple[float, list]:
    started = time.perf_counter()
    jobs = [client.submit(q, 2, max_new_tokens, api_name="/ask") for q in items]
    results = []
    for job in jobs:
        try:
            results.append(job.result(timeout=600))
        except Exception as err:  # noqa: BLE001 - counted and reported, the run goes on
            results.append(err)
    return time.perf_counter() - started, results


def run_sequential(client: Client, items: list[str], max_new_tokens: int) -> tuple[float, list]:
    started = time.perf_counter()
    results = []
    for q in items:
        try:
            results.append(client.predict(q, 2, max_new_tokens, api_name="/ask"))
        except Exception as err:  # noqa: BLE001 - counted and reported, the run goes on
            results.append(err)
    return time.perf_counter() - started, results


def summary(results: list) -> dict:
    infos = [r[1] for r in results if not isinstance(r, Exception)]
    return {"answered": len(infos), "errors": [str(r) for r in results if isinstance(r, Exception)][:5],
            "tokens": sum(i["new_tokens"] for i in infos),
            "mean_batch_size": round(statistics.mean(i["batch_size"] for i in infos), 2) if infos else 0,
            "max_batch_size": max((i["batch_size"] for i in infos), default=0),
            "experts": {d: sum(1 for i in infos if i["experts"] and i["experts"][0]["name"] == d) for d in DOMAINS}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--base-model")
    parser.add_argument("--experts-dir")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()

    flags = [f for name in ("base_model", "experts_dir") if getattr(args, name)
             for f in (f"--{name.replace('_', '-')}", getattr(args, name))]
    server = nullcontext(args.url) if args.url else running_server(*flags, timeout=600)
    items = questions()
    with server as url:
        client = Client(url, verbose=False)
        client.predict(items[0], 2, args.max_new_tokens, api_name="/ask")
        concurrent_s, concurrent = run_concurrent(client, items, args.max_new_tokens)
        sequential_s, sequential = run_sequential(client, items, args.max_new_tokens)
    together, alone = summary(concurrent), summary(sequential)
    result = {"sent": len(items), "answered": together["answered"],
              "speedup": round(sequential_s / concurrent_s, 2), "concurrent_s": round(concurrent_s, 2),
              "sequential_s": round(sequential_s, 2), "max_new_tokens": args.max_new_tokens,
              "concurrent_tokens_per_s": round(together["tokens"] / concurrent_s, 1),
              "sequential_tokens_per_s": round(alone["tokens"] / sequential_s, 1),
              "sequential_answered": alone["answered"], "concurrent": together, "sequential": alone,
              "server": args.url or "started here", "base_model": args.base_model or "default",
              "experts_dir": args.experts_dir or "bundled"}
    text = json.dumps(result, indent=None if args.json else 2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if result["answered"] == result["sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
