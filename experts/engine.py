"""The generation backend: questions and per-row routing in, answers out.

`GenerationBackend` is the narrow interface the app depends on, so another backend (vLLM with
multi-LoRA, a remote server) can stand in for the torch one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

from experts.adapters import load_adapter
from experts.base_model import BaseModel
from experts.generation import RowOutput, SamplingConfig, TokenCallback, generate
from experts.mixing import LoraMixer, RoutingError, RowRoute
from experts.prompt import chat_prompt


class GenerationBackend(Protocol):
    model_id: str

    def experts(self) -> list[str]: ...

    def add_expert(self, name: str, folder: Path) -> None: ...

    def remove_expert(self, name: str) -> None: ...

    def generate(self, questions: Sequence[str], routes: Sequence[RowRoute], config: SamplingConfig,
                 callback: TokenCallback | None = None) -> list[RowOutput]: ...


class TorchBackend:
    """One base model in this process with LoRA experts mixed per row by `LoraMixer`."""

    def __init__(self, base: BaseModel):
        self.base = base
        self.model_id = base.model_id
        self.mixer = LoraMixer(base.model)

    def experts(self) -> list[str]:
        return sorted(self.mixer.experts)

    def add_expert(self, name: str, folder: Path) -> None:
        adapter = load_adapter(name, folder, self.mixer.layers, base_fingerprint=self.base.fingerprint,
                               device=self.base.device)
        self.mixer.add(adapter)

    def remove_expert(self, name: str) -> None:
        self.mixer.remove(name)

    def generate(self, questions: Sequence[str], routes: Sequence[RowRoute], config: SamplingConfig,
                 callback: TokenCallback | None = None) -> list[RowOutput]:
        if len(routes) != len(questions):
            raise RoutingError(f"{len(questions)} questions but {len(routes)} routes")
        return self.generate_prompts([chat_prompt(self.base.tokenizer, q) for q in questions], routes, config,
                                     callback)

    def generate_prompts(self, prompts: Sequence[str], routes: Sequence[RowRoute], config: SamplingConfig,
                         callback: TokenCallback | None = None) -> list[RowOutput]:
        """Runs the batch with rows sorted by their experts, so the mixer sees long runs; returns rows in order."""
        order = sorted(range(len(routes)), key=lambda b: [name for name, _ in routes[b]])
        place = [0] * len(order)
        for i, b in enumerate(order):
            place[b] = i
        inner = None
        if callback is not None:
            def inner(step: int, tokens: list[int], done: list[bool]) -> None:
                callback(step, [tokens[i] for i in place], [done[i] for i in place])
        with self.mixer.routing([routes[b] for b in order]):
            rows = generate(self.base.model, self.base.tokenizer, [prompts[b] for b in order], config, inner)
        return [rows[i] for i in place]
