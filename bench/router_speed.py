"""How fast the gate routes and refits on this CPU.

    python bench/router_speed.py --json [--data data] [--out bench/results/router_speed.json] [--no-states]

- latency: p50/p90 of `route` on one question, after warm-up, over distinct questions;
- throughput: `route_batch` on 1,000 distinct short questions (one encoder call);
- refit: `Gate.fit` after adding a 400-question expert to the data/ experts, with the others' embeddings
  already in the cache (a copy of the cache, so the new questions are really encoded each run).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.router_eval import DEFAULT_CACHE, add_states_flag, app_states, training_data  # noqa: E402
from experts import BUNDLED_DIR  # noqa: E402
from router import EmbeddingCache, Gate  # noqa: E402
from router.tuning import load_encoder  # noqa: E402

TEMPLATES = ["How long should I cook {}?", "What goes well with {}?", "Can I freeze {}?", "How do I season {}?",
             "Is {} better baked or fried?", "How do I store leftover {}?", "What wine pairs with {}?",
             "How do I know when {} is done?", "Can I make {} ahead of time?", "Why is my {} always dry?",
             "What is a quick recipe for {}?", "How do I reheat {}?", "Should I marinate {} overnight?",
             "How much {} should I make for six people?", "What spices suit {}?", "Can I cook {} in a slow cooker?",
             "How do I keep {} from sticking to the pan?", "What's the best oil for {}?", "Is {} good for a picnic?",
             "How do I cut {} evenly?"]
FOODS = ["roast chicken", "salmon fillets", "brown rice", "lentil soup", "beef stew", "pancakes", "sourdough bread",
         "mashed potatoes", "tofu", "pork chops", "risotto", "banana bread", "grilled vegetables", "meatballs",
         "quiche", "chickpea curry", "lasagna", "shrimp", "fried eggs", "apple pie"]
SUBJECTS = ["aspirin", "a lease", "an index fund", "a Python list", "a fever", "a will", "a mortgage", "a SQL join",
            "asthma", "a patent", "a bond", "a regex", "insulin", "a tort", "an ETF", "a hash map", "the flu",
            "a contract", "a Roth IRA", "recursion", "the weather", "a poem", "chess", "the moon", "a guitar"]
SHORT = ["What is {}?", "How does {} work?", "Explain {} simply.", "Is {} risky?", "Tell me about {}.",
         "Why does {} matter?", "When is {} used?", "Who needs {}?"]


def short_questions(n: int) -> list[str]:
    """n distinct short questions (3-7 words) across all domains, numbered past the templates' reach."""
    base = [t.format(s) for t, s in itertools.product(SHORT, SUBJECTS)]
    return [q if i < len(base) else f"{q[:-1]} #{i // len(base)}?" for i, q in
            enumerate(itertools.islice(itertools.cycle(base), n))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--singles", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "router_speed.json")
    parser.add_argument("--json", action="store_true")
    add_states_flag(parser)
    args = parser.parse_args()

    encoder = load_encoder(BUNDLED_DIR)  # the encoder the app runs: MiniLM with its tuned LoRA merged in
    states = app_states(args.states)
    experts, general = training_data(args.data)
    gate = Gate.fit(experts, general, encoder, cache_dir=args.cache_dir, states=states)

    questions = short_questions(1000 + args.singles + 10)
    for q in questions[:10]:
        gate.route(q)
    times = []
    for q in questions[10:10 + args.singles]:
        start = time.perf_counter()
        gate.route(q)
        times.append(time.perf_counter() - start)
    times.sort()

    batch = questions[-1000:]
    start = time.perf_counter()
    gate.route_batch(batch)
    batch_seconds = time.perf_counter() - start

    cooking = [t.format(f) for t, f in itertools.product(TEMPLATES, FOODS)]
    with tempfile.TemporaryDirectory() as tmp:
        for view in filter(None, (encoder, states)):
            cache_file = EmbeddingCache(args.cache_dir, view).path
            shutil.copy(cache_file, Path(tmp) / cache_file.name)
        start = time.perf_counter()
        refit = Gate.fit({**experts, "cooking": cooking}, general, encoder, cache_dir=tmp, states=states)
        refit_seconds = time.perf_counter() - start
    routed = [d.routed for d in refit.route_batch(
        ["How long do I roast a whole turkey?", "What herbs go in a tomato sauce?"])]

    result = {
        "encoder": encoder.name,
        "hidden_states": states.name if states else None,
        "torch_threads": __import__("torch").get_num_threads(),
        "single_route_ms": {"p50": round(1000 * statistics.median(times), 2),
                            "p90": round(1000 * times[int(0.9 * len(times))], 2), "n": len(times)},
        "route_batch": {"questions": len(batch), "seconds": round(batch_seconds, 2),
                        "per_second": round(len(batch) / batch_seconds, 1)},
        "refit_new_expert": {"new_questions": len(cooking), "cached_questions": sum(map(len, experts.values()))
                             + len(general), "seconds": round(refit_seconds, 2), "new_expert_routes": routed},
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
