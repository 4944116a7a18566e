"""Throughput of per-row LoRA mixing against the plain base model and PEFT, interleaved in one process.

    python bench/mixing.py --json [--rounds 3] [--batches 8 32] [--phases] [--out bench/results/mixing.json]

Real base model, 4 random adapters (r=16, every linear layer), ~64-token prompts, 32 new tokens, greedy,
every row runs all 32 steps. Each round runs every configuration once, in turn, so machine noise hits
them alike; we report the median tokens/s over rounds. Also measures the resident memory an added
expert costs against its own parameter bytes.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.memory import release_free_memory  # noqa: E402
from experts.base_model import load_base_model  # noqa: E402
from experts.engine import TorchBackend  # noqa: E402
from experts.generation import SamplingConfig, generate  # noqa: E402
from experts.prompt import chat_prompt  # noqa: E402

EXPERTS = ["e0", "e1", "e2", "e3"]
TOPICS = ["compound interest and how banks apply it to savings accounts over many years",
          "the difference between a misdemeanor and a felony in criminal law",
          "why antibiotics do not work against viral infections such as the common cold",
          "how a hash map handles collisions and what that means for lookup time"]


def make_adapters(folder: Path, root: Path, rank: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i, name in enumerate(EXPERTS):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                                      init_lora_weights=False))
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_" in pname:
                    param.normal_(0, 0.02)
        peft_model.save_pretrained(root / name)
        paths.append(root / name)
    return paths


def prompts(tokenizer, batch: int) -> list[str]:
    """Questions whose chat prompts are about 64 tokens long."""
    out = []
    for i in range(batch):
        question = (f"Question {i}: please explain {TOPICS[i % 4]}, step by step, with one short example "
                    f"that a student could follow and remember.")
        out.append(chat_prompt(tokenizer, question))
    return out


class PeftRows(nn.Module):
    """Lets our decode loop drive PEFT with a per-row `adapter_names` list."""

    def __init__(self, peft_model, names):
        super().__init__()
        self.inner, self.names = peft_model, names
        self.config, self.generation_config = peft_model.config, peft_model.generation_config

    def forward(self, **kwargs):
        return self.inner(**kwargs, adapter_names=self.names)


def rss_bytes() -> int:
    gc.collect()
    release_free_memory()
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_expert(adapters: list[Path]) -> dict:
    base = load_base_model(device="cpu")
    backend = TorchBackend(base)
    rows = []
    for name, path in zip(EXPERTS, adapters):
        before = rss_bytes()
        backend.add_expert(name, path)
        grown = rss_bytes() - before
        own = backend.mixer.experts[name] * 4
        rows.append({"expert": name, "param_bytes": own, "rss_growth_bytes": grown, "ratio": round(grown / own, 3)})
    return {"per_expert": rows, "max_ratio": max(r["ratio"] for r in rows)}


def profile(fn, batch_prompts, top: int = 8) -> dict:
    """Self CPU time of the most expensive ops over one generate call, in milliseconds."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(batch_prompts)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1000
    return {"total_ms": round(total, 1),
            "ops": {e.key: {"ms": round(e.self_cpu_time_total / 1000, 1), "calls": e.count} for e in events[:top]}}


def phases(configs: dict, batch_prompts: list[str], rounds: int, steps: int = 16) -> dict:
    """Prefill (a call that makes one token) and one decode step ((1 + steps tokens - 1 token) / steps) per
    configuration, interleaved over rounds, medians; says whether a gap to base is in prefill or in decode."""
    lengths = (1, 1 + steps)
    times = {(name, n): [] for name in configs for n in lengths}
    for _ in range(rounds):
        for name, fn in configs.items():
            for n in lengths:
                started = time.perf_counter()
                fn(batch_prompts, SamplingConfig(max_new_tokens=n, stop_at_eos=False))
                times[(name, n)].append(time.perf_counter() - started)
    median = {key: statistics.median(t) for key, t in times.items()}
    prefill = {name: median[(name, 1)] for name in configs}
    step = {name: 1000 * (median[(name, 1 + steps)] - median[(name, 1)]) / steps for name in configs}
    return {name: {"prefill_s": round(prefill[name], 3), "decode_step_ms": round(step[name], 1),
                   "prefill_vs_base": round(prefill["base"] / prefill[name], 3),
                   "decode_vs_base": round(step["base"] / step[name], 3)} for name in configs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results/mixing.json"))
    parser.add_argument("--phases", action="store_true",
                        help="also time prefill and one decode step apart, at the largest batch")
    parser.add_argument("--profile", action="store_true", help="also profile one batch of base and ours_top1 by op")
    args = parser.parse_args()
    torch.manual_seed(0)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ours = TorchBackend(load_base_model(device="cpu"))
    folder, tokenizer = ours.base.folder, ours.base.tokenizer
    root = Path(tempfile.mkdtemp(prefix="mixing-bench-"))
    adapters = make_adapters(folder, root, args.rank)
    for name, path in zip(EXPERTS, adapters):
        ours.add_expert(name, path)
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                                           adapters[0], adapter_name=EXPERTS[0]).eval()
    for name, path in zip(EXPERTS[1:], adapters[1:]):
        peft_model.load_adapter(path, adapter_name=name)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False)

    def run_ours(batch, k):
        routes = [tuple((EXPERTS[(b + j) % 4], 1.0 / k) for j in range(k)) for b in range(batch)]
        return lambda p, s=sampling: ours.generate_prompts(p, routes, s)

    def run_peft(batch, single):
        names = [EXPERTS[0] if single else EXPERTS[b % 4] for b in range(batch)]
        if single:
            peft_model.set_adapter(EXPERTS[0])
            return lambda p, s=sampling: generate(peft_model, tokenizer, p, s)
        return lambda p, s=sampling: generate(PeftRows(peft_model, names), tokenizer, p, s)

    def configs_for(batch):
        return {
            "base": lambda p, s=sampling: generate(plain, tokenizer, p, s),
            "ours_top1": run_ours(batch, 1),
            "ours_top2": run_ours(batch, 2),
            "peft_mixed": run_peft(batch, single=False),
            "peft_single": run_peft(batch, single=True),
        }

    results = {}
    for batch in args.batches:
        configs = configs_for(batch)
        batch_prompts = prompts(tokenizer, batch)
        lengths = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in batch_prompts]
        for fn in configs.values():
            fn(batch_prompts)
        times = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, fn in configs.items():
                if name == "peft_single":
                    peft_model.set_adapter(EXPERTS[0])
                started = time.perf_counter()
                fn(batch_prompts)
                times[name].append(time.perf_counter() - started)
        tokens = batch * args.new_tokens
        results[f"batch_{batch}"] = {
            "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
            "tokens_per_s": {n: round(tokens / statistics.median(t), 1) for n, t in times.items()},
            "seconds": {n: [round(x, 3) for x in t] for n, t in times.items()},
        }
    if args.phases:
        batch = max(args.batches)
        configs = configs_for(batch)
        results["phases"] = phases({n: configs[n] for n in ("base", "ours_top1", "ours_top2", "peft_mixed")},
                                   prompts(tokenizer, batch), args.rounds)
    if args.profile:
        batch = max(args.batches)
        results["profile"] = {name: profile(fn, prompts(tokenizer, batch))
                              for name, fn in [("base", configs["base"]), ("ours_top1", run_ours(batch, 1))]}
    largest = results[f"batch_{max(args.batches)}"]["tokens_per_s"]
    report = {
        "setup": {"experts": len(EXPERTS), "rank": args.rank, "new_tokens": args.new_tokens, "rounds": args.rounds,
                  "threads": torch.get_num_threads(), "device": "cpu"},
        "results": results,
        "ratios": {
            "top1_vs_base": round(largest["ours_top1"] / largest["base"], 3),
            "top2_vs_top1": round(largest["ours_top2"] / largest["ours_top1"], 3),
            "top1_vs_peft_mixed": round(largest["ours_top1"] / largest["peft_mixed"], 3),
            "top1_vs_peft_single": round(largest["ours_top1"] / largest["peft_single"], 3),
        },
        "memory": memory_per_expert(adapters),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
