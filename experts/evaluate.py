"""Answer-token loss and perplexity, shared by training and the experts-vs-base evaluation matrix.

Only answer tokens are scored: the prompt (system message + question) is context, masked with -100.
Logits are computed only at scored positions, since the 49k-wide output layer over prompt and padding
tokens would cost time and memory for nothing.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from experts.data import Example
from experts.prompt import chat_example

__all__ = ["EVAL_ROWS", "Encoded", "answer_nll", "batches", "encode_examples", "eval_matrix", "perplexity",
           "thread_count"]

IGNORE = -100
EVAL_ROWS = ("medical", "legal", "finance", "code", "general")


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens


def encode_examples(tokenizer, examples: list[Example], max_length: int) -> list[Encoded]:
    """Prompt and answer are tokenized apart, so the prompt's tokens are exactly those seen when serving.

    Answers that do not fit in `max_length` tokens are cut; prompts longer than that are dropped.
    """
    encoded = []
    for example in examples:
        prompt, full = chat_example(tokenizer, example.question, example.answer)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        answer_ids = answer_ids[: max_length - len(prompt_ids)]
        if answer_ids:
            encoded.append(Encoded(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids))
    return encoded


def batches(items: list[Encoded], batch_size: int, *, seed: int | None = None) -> list[list[Encoded]]:
    """Length-bucketed batches: little padding, and (with `seed`) shuffled within chunks of 16 batches."""
    order = list(range(len(items)))
    if seed is None:
        order.sort(key=lambda i: len(items[i].input_ids))
        return [[items[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = batch_size * 16
    result = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: len(items[i].input_ids))
        result += [[items[i] for i in part[s:s + batch_size]] for s in range(0, len(part), batch_size)]
    rng.shuffle(result)
    return result


def collate(batch: list[Encoded], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels), each (B, T)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return ids.to(device), mask.to(device), labels.to(device)


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_nll(model, batch: list[Encoded], pad_id: int) -> tuple[torch.Tensor, int]:
    """(summed negative log-likelihood of the answer tokens, their count); works on PEFT and plain models."""
    lm = _causal_lm(model)
    device = next(lm.parameters()).device
    ids, mask, labels = collate(batch, pad_id, device)
    hidden = lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, d)
    targets = labels[:, 1:]
    scored = targets != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][scored])  # (N, vocab) for the N scored positions
    nll = torch.nn.functional.cross_entropy(logits.float(), targets[scored], reduction="sum")
    return nll, int(scored.sum())


@torch.no_grad()
def perplexity(model, tokenizer, examples: list[Example], *, batch_size: int = 8, max_length: int = 256) -> float:
    """exp(mean answer-token NLL) over `examples`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches(encode_examples(tokenizer, examples, max_length), batch_size):
            nll, n = answer_nll(model, batch, tokenizer.pad_token_id)
            total, count = total + float(nll), count + n
    finally:
        model.train(was_training)
    return math.exp(total / count) if count else float("nan")


def eval_matrix(base, registry, data_root: Path, *, extra: Path | None = None, limit: int | None = None,
                batch_size: int = 8, max_length: int = 256) -> dict[str, dict[str, float]]:
    """{row: {"base": ppl, expert: ppl, ...}} for each domain's held-out answers (data/<row>/eval.jsonl).

    Every adapter is loaded by PEFT onto one fresh float copy of the base (the serving model may have had
    its linears replaced); the base column runs with adapters disabled.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from experts.data import load_eval_file

    rows = {row: data_root / row / "eval.jsonl" for row in EVAL_ROWS}
    if extra is not None:
        rows[Path(extra).stem if Path(extra).stem != "eval" else Path(extra).parent.name] = Path(extra)
    data = {row: load_eval_file(path)[:limit] for row, path in rows.items() if path.is_file()}
    model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32).to(base.device).eval()
    names = registry.names()
    result: dict[str, dict[str, float]] = {row: {} for row in data}
    with tqdm(total=len(data) * (1 + len(names)), desc="evaluating", unit="cell") as bar:
        def measure(column: str) -> None:
            for row, examples in data.items():
                result[row][column] = perplexity(model, base.tokenizer, examples, batch_size=batch_size,
                                                 max_length=max_length)
                bar.update(1)

        measure("base")
        if names:
            model = PeftModel.from_pretrained(model, str(registry.folder(names[0])), adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(str(registry.folder(name)), adapter_name=name)
            model.eval()
        for name in names:
            model.set_adapter(name)
            measure(name)
    return {row: {col: round(value, 3) for col, value in cols.items()} for row, cols in result.items()}


def thread_count(requested: int | None = None) -> int:
    """Threads for torch: the idle cores, when not given.

    On a shared CPU, OpenMP threads that outnumber the idle cores spin and wait on each other; measured
    here under load, 2 threads trained at 14 tokens/s where 1 thread managed 64.
    """
    if requested:
        return requested
    cores = os.cpu_count() or 1
    return max(1, min(cores, round(cores - os.getloadavg()[0] + 0.5)))
