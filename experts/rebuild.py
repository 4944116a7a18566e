"""Rebuilds the four shipped experts from data/<domain>/train.jsonl into experts/bundled.

Usage: expertgate experts rebuild-bundled [--only medical,code] [--rank R] [--epochs N] [--lr X].
Each domain's old expert is removed just before its new one is trained, one domain at a time.
"""
from __future__ import annotations

import json
from pathlib import Path

from experts.base_model import BaseModel
from experts.data import load_examples
from experts.registry import Registry
from experts.train import TrainConfig, train_expert

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "data"
DOMAINS = {
    "medical": "Health and medicine: symptoms, conditions, treatments, medicines and when to see a doctor.",
    "legal": "Law: contracts, tenancy, employment, consumer rights, courts and legal procedure.",
    "finance": "Personal finance and economics: saving, investing, loans, taxes, accounting and markets.",
    "code": "Programming: Python and other languages, algorithms, debugging, tools and software design.",
}


GENERAL_FILE = "general.jsonl"


def write_general_questions(root: Path, data_dir: Path = DATA_DIR) -> Path:
    """The gate's off-domain class ships beside the experts, so a refit needs only the experts folder."""
    path = root / GENERAL_FILE
    lines = [json.dumps({"question": e.question}, ensure_ascii=False) for e in
             load_examples(data_dir / "general" / "train.jsonl")]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rebuild(base: BaseModel, registry: Registry, *, data_dir: Path = DATA_DIR, domains: list[str] | None = None,
            config: TrainConfig = TrainConfig()) -> list[dict]:
    """Retrains each domain's expert; returns their manifests."""
    write_general_questions(registry.root, data_dir)
    manifests = []
    for domain in domains or list(DOMAINS):
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")
        if domain in registry.names():
            registry.remove(domain)
        result = train_expert(domain, data_dir / domain / "train.jsonl", base, registry,
                              description=DOMAINS[domain], config=config)
        manifests.append(result.manifest)
        print(f"{domain}: {result.manifest['train_seconds']:.0f} s, held-out perplexity "
              f"{result.manifest['eval_perplexity']:.3f} (base {result.manifest['base_perplexity']:.3f})", flush=True)
    return manifests
