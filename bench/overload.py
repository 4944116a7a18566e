"""Does the server hold up under overload? 200 /ask requests from 20 concurrent clients: every request must end
answered or with a clear "busy" error within a timeout, and the server's memory must not run away.

    python bench/overload.py [--url URL] [--base-model M] [--experts-dir DIR] [--device D] [--requests 200]
                             [--clients 20] [--max-new-tokens 16] [--timeout 300] [--out bench/results/overload.json]

Without --url it starts `expertgate serve` itself, as bench/serve_load.py does. Each client is its own
gradio_client Client sending its share of the requests one after another; all start together. Questions cycle
through bench/serve_load.py's mixed-domain set. RSS is the server process's, found by its listening port, after a
warm-up of a few requests and again after the run, and sampled twice a second during it for the peak; latencies
(p50, p95) are of answered requests. Exit code 0 only when nothing hung and nothing failed other than "busy".

A quick check on the tiny test model (never the real one on a busy machine):

    .venv/bin/python -m tests.experts_dir /tmp/eg     # writes /tmp/eg/tiny-llama and /tmp/eg/experts
    .venv/bin/python bench/overload.py --base-model /tmp/eg/tiny-llama --experts-dir /tmp/eg/experts --device cpu
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from bench.serve_load import questions  # noqa: E402
from tests.app_process import running_server  # noqa: E402

BUSY = ("the server is busy", "Queue is full")  # the batcher's refusal, and Gradio's when its own queue is full
WARMUP = 4


def server_rss_mb(url: str) -> float | None:
    """Resident memory of the process listening on `url`'s port, or None if it is not on this machine."""
    port = urlparse(url).port
    pids = {c.pid for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    if len(pids) != 1:
        return None
    return round(psutil.Process(pids.pop()).memory_info().rss / 2**20, 1)


class PeakRss:
    """Samples the server's resident memory every `every` seconds while the run lasts; `peak_mb` is the largest."""

    def __init__(self, url: str, every: float = 0.5):
        self.url, self.every, self.peak_mb = url, every, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            rss = server_rss_mb(self.url)
            if rss is not None:
                self.peak_mb = max(self.peak_mb or 0.0, rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def outcome(client: Client, question: str, max_new_tokens: int, timeout: float) -> tuple[str, float, str]:
    """(answered | busy | error | hung, seconds, error message) of one /ask request."""
    started = time.perf_counter()
    job = client.submit(question, 2, max_new_tokens, api_name="/ask")
    try:
        job.result(timeout=timeout)
        kind, message = "answered", ""
    except TimeoutError:
        job.cancel()
        kind, message = "hung", f"no answer within {timeout:.0f} s"
    except AppError as err:
        message = str(err)
        kind = "busy" if any(marker in message for marker in BUSY) else "error"
    except Exception as err:  # noqa: BLE001 - a transport failure is an outcome to count, not a reason to stop
        kind, message = "error", f"{type(err).__name__}: {err}"
    return kind, time.perf_counter() - started, message


def run_clients(url: str, items: list[str], clients: int, max_new_tokens: int, timeout: float) -> list[tuple]:
    """Each of `clients` threads connects, waits for the others, then sends its share of `items` in turn."""
    results: list[tuple] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def work(share: list[str]) -> None:
        client = Client(url, verbose=False)
        start.wait()
        for question in share:
            result = outcome(client, question, max_new_tokens, timeout)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=work, args=(items[i::clients],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def percentile_ms(seconds: list[float], q: float) -> float | None:
    """Nearest-rank percentile in milliseconds."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--base-model")
    parser.add_argument("--experts-dir")
    parser.add_argument("--device")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overload.json")
    args = parser.parse_args()

    flags = [f for name in ("base_model", "experts_dir", "device") if getattr(args, name)
             for f in (f"--{name.replace('_', '-')}", getattr(args, name))]
    server = nullcontext(args.url) if args.url else running_server(*flags, timeout=600)
    pool = questions()
    items = [pool[i % len(pool)] for i in range(args.requests)]
    with server as url:
        warmup = Client(url, verbose=False)
        for question in pool[:WARMUP]:
            warmup.predict(question, 2, args.max_new_tokens, api_name="/ask")
        rss_before = server_rss_mb(url)
        started = time.perf_counter()
        with PeakRss(url) as peak:
            results = run_clients(url, items, args.clients, args.max_new_tokens, args.timeout)
        wall_s = time.perf_counter() - started
        rss_after = server_rss_mb(url)
    counts = {kind: sum(1 for r in results if r[0] == kind) for kind in ("answered", "busy", "error", "hung")}
    answered_s = [seconds for kind, seconds, _ in results if kind == "answered"]
    report = {
        "sent": len(results), "clients": args.clients, "answered": counts["answered"], "busy": counts["busy"],
        "errors": counts["error"], "hung": counts["hung"], "rss_mb_before": rss_before, "rss_mb_after": rss_after,
        "rss_mb_peak": peak.peak_mb,
        "rss_growth": round(rss_after / rss_before, 3) if rss_before and rss_after else None,
        "p50_ms": percentile_ms(answered_s, 50), "p95_ms": percentile_ms(answered_s, 95),
        "wall_s": round(wall_s, 2), "max_new_tokens": args.max_new_tokens, "timeout_s": args.timeout,
        "messages": sorted({message for kind, _, message in results if kind != "answered"})[:10],
        "server": args.url or "started here", "base_model": args.base_model or (None if args.url else "default"),
        "experts_dir": args.experts_dir or (None if args.url else "bundled"),
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if counts["hung"] == counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
