"""An experts folder for app tests: random adapters on the tiny model, real questions so the real gate routes well."""
from __future__ import annotations

import json
from pathlib import Path

from experts.adapters import MANIFEST_FILE
from experts.registry import QUESTIONS_FILE, REGISTRY_FILE
from tests.tiny import save_random_adapter

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DOMAINS = ("medical", "legal", "finance", "code")
DESCRIPTIONS = {"medical": "health and medicine", "legal": "law and contracts", "finance": "money and investing",
                "code": "programming"}


def domain_questions(domain: str, limit: int) -> list[str]:
    lines = (DATA_DIR / domain / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["question"] for line in lines if line.strip()][:limit]


def _write_questions(path: Path, questions: list[str]) -> None:
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions), encoding="utf-8")


def build_experts_dir(model_dir: Path, folder: Path, *, questions: int = 80, rank: int = 4) -> Path:
    """`folder` with the four domain experts registered and a `general.jsonl` of off-domain questions."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, domain in enumerate(DOMAINS, 1):
        expert = save_random_adapter(model_dir, folder / domain, rank=rank, seed=seed, std=0.05)
        _write_questions(expert / QUESTIONS_FILE, domain_questions(domain, questions))
        manifest = {"name": domain, "description": DESCRIPTIONS[domain], "rank": rank, "examples": questions,
                    "eval_perplexity": 8.0 + seed, "base_perplexity": 12.0}
        (expert / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
        (expert / "README.md").unlink(missing_ok=True)
    _write_questions(folder / "general.jsonl", domain_questions("general", questions))
    registry = {"version": 1, "experts": [{"name": d, "folder": d} for d in DOMAINS]}
    (folder / REGISTRY_FILE).write_text(json.dumps(registry), encoding="utf-8")
    return folder


if __name__ == "__main__":
    import argparse

    from tests.tiny import save_tiny

    parser = argparse.ArgumentParser(description="write a tiny base model and a test experts folder")
    parser.add_argument("root", type=Path)
    root = parser.parse_args().root
    build_experts_dir(save_tiny(root / "tiny-llama"), root / "experts")
    print(root / "tiny-llama", root / "experts")
