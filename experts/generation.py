"""Batched decoding from small pure functions: left-padded prefill, then one token per row per step.

The loop is ours rather than `model.generate` so that each row of the batch stays at a fixed index
for the whole call (the mixing layers hold one gate row per batch row) and so a callback sees every
step of every row, which is how the UI streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

TokenCallback = Callable[[int, list[int], list[bool]], None]
"""Called once per decode step with (step, token of each row, whether each row has finished)."""


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_at_eos: bool = True  # False runs every row for max_new_tokens, as throughput benchmarks need

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be between 1 and 4096, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class RowOutput:
    text: str
    token_ids: list[int]
    stopped_at_eos: bool

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids) + int(self.stopped_at_eos)


def eos_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def sample(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row. logits: (B, V) -> (B,)"""
    if config.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > config.top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prefill(model, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the left-padded prompts; returns last-position logits (B, V) and positions (B, 1)."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], positions[:, -1:]


def decode_one_token(model, token: torch.Tensor, mask: torch.Tensor, position: torch.Tensor,
                     cache: DynamicCache) -> torch.Tensor:
    """token: (B,), mask: (B, T+1) including this token, position: (B, 1) -> logits (B, V)"""
    out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position, cache=cache,
                use_cache=True)
    return out.logits[:, -1]


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], config: SamplingConfig = SamplingConfig(),
             callback: TokenCallback | None = None) -> list[RowOutput]:
    """Generates a continuation for every prompt in one batch; a row stops at eos or max_new_tokens."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    mask = enc.attention_mask
    stop = torch.tensor(eos_ids(tokenizer, model), device=device)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    cache = DynamicCache(config=model.config)
    logits, position = prefill(model, enc.input_ids, mask, cache)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for step in range(config.max_new_tokens):
        token = sample(logits, config, generator).masked_fill(done, int(stop[0]))
        steps.append(token)
        if config.stop_at_eos:
            done |= torch.isin(token, stop)
        if callback is not None:
            callback(step, token.tolist(), done.tolist())
        if bool(done.all()) or step + 1 == config.max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        position = position + 1
        logits = decode_one_token(model, token, mask, position, cache)
    return _rows(tokenizer, torch.stack(steps, dim=1).tolist(), set(stop.tolist()))


def _rows(tokenizer, generated: list[list[int]], stop: set[int]) -> list[RowOutput]:
    rows = []
    for tokens in generated:
        end = next((i for i, t in enumerate(tokens) if t in stop), None)
        kept = tokens if end is None else tokens[:end]
        rows.append(RowOutput(tokenizer.decode(kept, skip_special_tokens=True).strip(), kept, end is not None))
    return rows
