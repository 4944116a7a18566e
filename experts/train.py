"""Training one LoRA expert on question/answer pairs and registering it atomically.

data file -> validate -> split off a held-out set -> LoRA on a fresh float copy of the base (the
serving engine rewrites its own model's linears) -> loss on answer tokens only -> early stop on
held-out perplexity -> write adapter (fp16 safetensors, PEFT format) + expert.json + questions.jsonl
into a staging folder -> `Registry.add` moves it in. Any exception removes the staging folder.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from experts.adapters import MANIFEST_FILE, WEIGHTS_FILE
from experts.base_model import BaseModel
from experts.data import Example, data_sha256, load_training_file
from experts.evaluate import answer_nll, batches, encode_examples, perplexity, thread_count
from experts.registry import QUESTIONS_FILE, ExpertInfo, Registry

__all__ = ["ProgressCallback", "TrainConfig", "TrainResult", "train_expert"]

ProgressCallback = Callable[[int, int, float], None]  # (step, total_steps, running loss)


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: float | None = None  # LoRA alpha; None means 2 * rank
    target_modules: str | tuple[str, ...] = "all-linear"
    epochs: int = 1  # one pass of ~400 examples fits in 15 minutes on 2 CPU cores; more passes early-stop
    lr: float = 2e-3
    batch_size: int = 8
    max_length: int = 256  # tokens of prompt + answer; longer answers are cut
    warmup: float = 0.06  # fraction of steps with a linearly rising learning rate
    heldout: float = 0.05  # fraction of examples kept out of training, at least 4 and at most 40
    max_steps: int | None = None  # stop early, e.g. for tests
    seed: int = 0
    threads: int | None = None  # torch threads; None means the currently idle cores


@dataclass(frozen=True)
class TrainResult:
    info: ExpertInfo
    manifest: dict
    losses: list[float]  # per optimizer step


def _split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    count = min(40, max(4, round(len(examples) * fraction)))
    return shuffled[count:], shuffled[:count]


def _peft_model(base: BaseModel, config: TrainConfig):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32).to(base.device)
    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha or 2 * config.rank, target_modules=targets,
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def _fit(model, tokenizer, train: list[Example], heldout: list[Example], config: TrainConfig, name: str,
         progress: ProgressCallback | None) -> tuple[list[float], float]:
    """Runs the optimizer; after each epoch keeps the LoRA weights with the lowest held-out perplexity."""
    items = encode_examples(tokenizer, train, config.max_length)
    per_epoch = -(-len(items) // config.batch_size)
    total = per_epoch * config.epochs if config.max_steps is None else min(per_epoch * config.epochs, config.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    warmup = max(1, round(total * config.warmup))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    losses, running, step = [], None, 0
    best_ppl, best_state = float("inf"), None
    model.train()
    with tqdm(total=total, desc=f"training {name}", unit="step") as bar:
        for epoch in range(config.epochs):
            for batch in batches(items, config.batch_size, seed=config.seed + epoch):
                if step == total:
                    break
                nll, count = answer_nll(model, batch, tokenizer.pad_token_id)
                loss = nll / max(count, 1)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                losses.append(loss.item())
                running = losses[-1] if running is None else 0.9 * running + 0.1 * losses[-1]
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}")
                if progress:
                    progress(step, total, running)
            ppl = perplexity(model, tokenizer, heldout, batch_size=config.batch_size, max_length=config.max_length)
            bar.write(f"{name}: epoch {epoch + 1} held-out perplexity {ppl:.3f}")
            if ppl >= best_ppl:
                break
            best_ppl, best_state = ppl, _lora_state(model)
            if step == total:
                break
    if best_state is not None:
        with torch.no_grad():
            for key, param in model.named_parameters():
                if key in best_state:
                    param.copy_(best_state[key])
    return losses, best_ppl


def _to_fp16(path: Path) -> None:
    """Halves the adapter on disk; the loaders cast back to the serving dtype."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _write_expert(folder: Path, model, base_id: str, manifest: dict, examples: list[Example]) -> None:
    model.peft_config["default"].base_model_name_or_path = base_id
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's model-card template says nothing about this expert
    _to_fp16(folder / WEIGHTS_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(folder / QUESTIONS_FILE, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps({"question": example.question}, ensure_ascii=False) + "\n")


def train_expert(name: str, data: str | Path, base: BaseModel, registry: Registry, *, description: str = "",
                 config: TrainConfig = TrainConfig(), progress: ProgressCallback | None = None) -> TrainResult:
    """Trains expert `name` on the pairs in `data` and registers it; on any error nothing is registered."""
    registry.check_new(name)
    examples = load_training_file(data)
    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(thread_count(config.threads))
    try:
        train, heldout = _split(examples, config.heldout, config.seed)
        model = _peft_model(base, config)
        with model.disable_adapter():
            base_ppl = perplexity(model, base.tokenizer, heldout, batch_size=config.batch_size,
                                  max_length=config.max_length)
        losses, eval_ppl = _fit(model, base.tokenizer, train, heldout, config, name, progress)
    finally:
        torch.set_num_threads(threads)
    lora = model.peft_config["default"]
    manifest = {
        "name": name, "description": description, "base_model": base.model_id,
        "base_model_sha256": base.fingerprint, "rank": lora.r, "alpha": lora.lora_alpha,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in lora.target_modules}), "data_sha256": data_sha256(data),
        "examples": len(train), "heldout_examples": len(heldout), "steps": len(losses),
        "final_train_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "eval_perplexity": round(eval_ppl, 4), "base_perplexity": round(base_ppl, 4),
        "train_seconds": round(time.perf_counter() - started, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {k: v for k, v in asdict(config).items() if k != "threads"},
    }
    staging = registry.staging_folder()
    try:
        _write_expert(staging, model, base.hub_id, manifest, examples)
        info = registry.add(name, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TrainResult(info=info, manifest=manifest, losses=losses)
