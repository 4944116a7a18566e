"""What the gate decided for one question, and the pure rule that turns probabilities into that decision."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

GENERAL = "general"
MAX_TOP_K = 4


@dataclass(frozen=True)
class ExpertChoice:
    name: str
    weight: float


@dataclass(frozen=True)
class RoutingDecision:
    """Experts to mix (weights sum to 1), or none with `fallback` set: answer with the base model."""

    experts: tuple[ExpertChoice, ...]
    fallback: bool
    probabilities: dict[str, float]
    reason: str
    truncated: bool

    @property
    def routed(self) -> str:
        """The one class the question went to: its top expert, or "general" when the base model answers."""
        return self.experts[0].name if self.experts and not self.fallback else GENERAL

    def to_json(self) -> dict[str, Any]:
        return {
            "experts": [{"name": e.name, "weight": e.weight} for e in self.experts],
            "fallback": self.fallback,
            "probabilities": dict(self.probabilities),
            "reason": self.reason,
            "truncated": self.truncated,
        }


def check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")


def decide(probabilities: dict[str, float], *, top_k: int, threshold: float, min_weight: float,
           truncated: bool = False, max_tokens: int | None = None) -> RoutingDecision:
    """Top-k experts renormalised over the kept ones; fall back when general wins or the top expert is unsure.

    `probabilities` covers every class including "general". Candidates are the top_k experts; weights are
    their probabilities renormalised over the candidates, those under `min_weight` are dropped (the top one
    never is) and the rest renormalised again.
    """
    check_top_k(top_k)
    ranked = sorted(((p, n) for n, p in probabilities.items() if n != GENERAL), key=lambda pn: (-pn[0], pn[1]))
    general = probabilities.get(GENERAL, 0.0)
    top_p, top_name = ranked[0]
    if general >= top_p:
        return _fallback(probabilities, f"{GENERAL} {general:.2f} > all experts: fallback to base model",
                         truncated, max_tokens)
    if top_p < threshold:
        return _fallback(probabilities, f"top expert {top_name} {top_p:.2f} under threshold {threshold:.2f}: fallback",
                         truncated, max_tokens)

    candidates = ranked[:top_k]
    total = sum(p for p, _ in candidates)
    kept = [(p, n) for i, (p, n) in enumerate(candidates) if i == 0 or p / total >= min_weight]
    dropped = [(p / total, n) for p, n in candidates if (p, n) not in kept]
    kept_total = sum(p for p, _ in kept)
    experts = tuple(ExpertChoice(n, p / kept_total) for p, n in kept)

    listed = ", ".join(f"{n} {p:.2f}" for p, n in candidates)
    if dropped:
        why = ", ".join(f"{n} weight {w:.2f}" for w, n in dropped)
        reason = f"{listed}: kept top-{len(kept)}, {why} under min weight {min_weight:g}"
    elif len(kept) == 1:
        reason = f"{listed}: top-1"
    else:
        reason = f"{listed}: top-{len(kept)} above min weight {min_weight:g}"
    return RoutingDecision(experts, False, dict(probabilities), _note_truncation(reason, truncated, max_tokens),
                           truncated)


def _fallback(probabilities: dict[str, float], reason: str, truncated: bool, max_tokens: int | None) -> RoutingDecision:
    return RoutingDecision((), True, dict(probabilities), _note_truncation(reason, truncated, max_tokens), truncated)


def _note_truncation(reason: str, truncated: bool, max_tokens: int | None) -> str:
    if not truncated:
        return reason
    window = f" to the encoder window of {max_tokens} tokens" if max_tokens else ""
    return f"{reason} (question truncated{window})"
