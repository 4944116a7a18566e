"""The composed product: question -> gate -> routing decision -> batched generation -> answer + explanation."""
from __future__ import annotations

import time
import unicodedata
from dataclasses import asdict, dataclass, field

from app.config import MAX_QUESTION_CHARS, AppConfig
from experts.base_model import load_base_model
from experts.engine import TorchBackend
from experts.generation import SamplingConfig, TokenCallback


class InputError(ValueError):
    """The user's input cannot be used; the message says why."""


def clean_question(text) -> str:
    """Drops control characters and surrounding space; refuses empty and over-long questions."""
    if not isinstance(text, str):
        raise InputError(f"the question must be text, got {type(text).__name__}")
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C").strip()
    if not text:
        raise InputError("the question is empty")
    if len(text) > MAX_QUESTION_CHARS:
        raise InputError(f"the question has {len(text)} characters; the limit is {MAX_QUESTION_CHARS}")
    return text


@dataclass
class Answer:
    question: str
    answer: str
    experts: list[dict]  # [{"name": ..., "weight": ...}]
    fallback: bool
    probabilities: dict[str, float]
    reason: str
    new_tokens: int
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class ExpertGate:
    """Owns the backend (base model + experts) and answers batches of questions."""

    def __init__(self, config: AppConfig):
        self.config = config
        started = time.perf_counter()
        self.base = load_base_model(config.base_model, device=config.device, cache_dir=config.cache_dir)
        self.backend = TorchBackend(self.base)
        self.load_ms = (time.perf_counter() - started) * 1000

    def ask(self, questions: list[str], *, top_k: int | None = None, max_new_tokens: int | None = None,
            callback: TokenCallback | None = None) -> list[Answer]:
        questions = [clean_question(q) for q in questions]
        sampling = SamplingConfig(max_new_tokens=max_new_tokens or self.config.max_new_tokens)
        started = time.perf_counter()
        routes = [()] * len(questions)
        route_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        outputs = self.backend.generate(questions, routes, sampling, callback)
        generate_ms = (time.perf_counter() - started) * 1000
        return [
            Answer(question=q, answer=out.text, experts=[], fallback=True, probabilities={},
                   reason="no experts are loaded: the base model answers", new_tokens=out.new_tokens,
                   timings_ms={"route": round(route_ms, 1), "generate": round(generate_ms, 1)})
            for q, out in zip(questions, outputs)
        ]
