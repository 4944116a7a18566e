"""The composed product: question -> gate -> routing decision -> batched generation -> answer + explanation."""
from __future__ import annotations

import logging
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass, field

from app.config import MAX_NEW_TOKENS, MAX_QUESTION_CHARS, MAX_TOP_K, AppConfig
from app.gating import gate_encoder, gate_states, load_or_fit_gate
from experts.adapters import AdapterError
from experts.base_model import load_base_model
from experts.engine import TorchBackend
from experts.generation import SamplingConfig, TokenCallback
from experts.registry import Registry
from router import Gate, LoadStats, RoutingDecision

log = logging.getLogger("expertgate")


NO_EXPERTS_DECISION = {"experts": [], "fallback": True, "probabilities": {}, "truncated": False,
                       "reason": "no experts are loaded: the base model answers"}


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


def whole_number(value, what: str, high: int) -> int:
    """An int from 1 to `high`; a JSON or slider 2.0 passes, but 2.5, True, "2" and inf are refused, not truncated."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InputError(f"{what} must be a whole number from 1 to {high}, got {value!r}")
    return value


def check_top_k(top_k) -> int:
    return whole_number(top_k, "top_k", MAX_TOP_K)


def check_max_new_tokens(max_new_tokens) -> int:
    return whole_number(max_new_tokens, "max_new_tokens", MAX_NEW_TOKENS)


def clean_questions(questions) -> list[str]:
    """A bare string would otherwise be read as one question per character."""
    if isinstance(questions, str):
        raise InputError("questions must be a list of strings, not one string")
    return [clean_question(q) for q in questions]


@dataclass
class Answer:
    question: str
    answer: str
    experts: list[dict]  # [{"name": ..., "weight": ...}]
    fallback: bool
    probabilities: dict[str, float]
    reason: str
    truncated: bool
    new_tokens: int
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class ExpertGate:
    """Owns the backend (base model + experts), the gate and the load statistics."""

    def __init__(self, config: AppConfig):
        self.config = config
        started = time.perf_counter()
        self.base = load_base_model(config.base_model, device=config.device, cache_dir=config.cache_dir)
        self.backend = TorchBackend(self.base)
        self.registry = Registry(config.experts_dir)
        self.encoder, self._encoder_warning = gate_encoder(config.experts_dir)
        self.states, self._states_warning = (gate_states(self.base.folder, device=str(self.base.device))
                                             if config.gate_states else (None, None))
        self.stats = LoadStats()
        self._disabled: dict[str, str] = {}  # expert name -> why it could not be loaded
        self._refit_lock = threading.Lock()
        for leftover in self.registry.remove_orphans():
            log.warning("removed %s, left by an interrupted expert write", leftover)
        for name in self.registry.names():
            self._load_expert(name)
        self.gate = self._fit_gate()
        self.load_ms = (time.perf_counter() - started) * 1000

    def _load_expert(self, name: str) -> None:
        """A broken adapter disables only that expert, with a warning everyone can see."""
        try:
            self.backend.add_expert(name, self.registry.folder(name))
            self._disabled.pop(name, None)
        except (AdapterError, OSError, ValueError) as err:
            message = f"expert {name!r} is disabled: {err}"
            log.warning(message)
            self._disabled[name] = message

    @property
    def disabled(self) -> dict[str, str]:
        """Registered experts that could not be loaded: name -> warning."""
        return dict(self._disabled)

    @property
    def warnings(self) -> list[str]:
        """One line per registered expert that could not be loaded, and one each if the tuned encoder or the base
        model's hidden states could not be."""
        return list(self._disabled.values()) + [w for w in (self._encoder_warning, self._states_warning) if w]

    def _fit_gate(self) -> Gate | None:
        names = self.backend.experts()
        self.stats.set_experts(names)
        return load_or_fit_gate(self.registry, names, self.encoder, self.config.cache_dir, self.states)

    def refresh(self) -> None:
        """Picks up experts added to or removed from the registry, then refits the gate."""
        with self._refit_lock:
            registered = set(self.registry.names())
            self._disabled = {n: m for n, m in self._disabled.items() if n in registered}
            for name in set(self.backend.experts()) - registered:
                self.backend.remove_expert(name)
            for name in sorted(registered - set(self.backend.experts())):
                self._load_expert(name)
            self.gate = self._fit_gate()

    def remove_expert(self, name: str) -> None:
        self.registry.remove(name)
        self.refresh()

    def route(self, questions: list[str], top_k: int | None = None) -> list[RoutingDecision | None]:
        """None for every question while no expert is loaded."""
        questions = clean_questions(questions)
        top_k = check_top_k(self.config.top_k if top_k is None else top_k)
        gate = self.gate
        return gate.route_batch(questions, top_k) if gate else [None] * len(questions)

    def ask(self, questions: list[str], *, top_k: int | None = None, max_new_tokens: int | None = None,
            callback: TokenCallback | None = None) -> list[Answer]:
        questions = clean_questions(questions)
        max_new_tokens = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        sampling = SamplingConfig(max_new_tokens=check_max_new_tokens(max_new_tokens))
        started = time.perf_counter()
        decisions = self.route(questions, top_k)
        route_ms = (time.perf_counter() - started) * 1000
        for decision in decisions:
            if decision is not None:
                self.stats.record(decision)
        routes = [tuple((c.name, c.weight) for c in d.experts) if d else () for d in decisions]
        started = time.perf_counter()
        outputs = self.backend.generate(questions, routes, sampling, callback)
        generate_ms = (time.perf_counter() - started) * 1000
        answers = []
        for question, decision, out in zip(questions, decisions, outputs):
            explained = decision.to_json() if decision else dict(NO_EXPERTS_DECISION)
            answers.append(Answer(question=question, answer=out.text, new_tokens=out.new_tokens, **explained,
                                  timings_ms={"route": round(route_ms, 1), "generate": round(generate_ms, 1)}))
        return answers
