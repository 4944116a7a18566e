"""How load spreads over the experts in recent traffic, so an operator sees a hogging or a starved expert."""
from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

from router.decision import GENERAL, RoutingDecision

HOG_SHARE = 0.5
HOG_MIN_REQUESTS = 20


class LoadStats:
    """Counts over the last `window` decisions; each request goes to its top expert, or "general" on fallback.

    Per expert i of N: share f_i of recent requests and mean gate probability P_i; balance is the Switch
    Transformer auxiliary value N * sum_i f_i * P_i (1.0 when uniform, up to N when one expert takes all).
    Safe to call from several threads.
    """

    def __init__(self, window: int = 200) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window
        self._lock = threading.Lock()
        self._recent: deque[tuple[str, dict[str, float]]] = deque(maxlen=window)
        self._total = 0
        self._experts: dict[str, int] = {}  # name -> total request count when it joined
        self._fixed = False

    def set_experts(self, names: list[str]) -> None:
        """Declare the current experts; one added now is not called starved until a full window has passed."""
        with self._lock:
            self._experts = {n: self._experts.get(n, self._total) for n in names if n != GENERAL}
            self._fixed = True

    def record(self, decision: RoutingDecision) -> None:
        with self._lock:
            if not self._fixed:
                for name in decision.probabilities:
                    if name != GENERAL:
                        self._experts.setdefault(name, self._total)
            self._recent.append((decision.routed, dict(decision.probabilities)))
            self._total += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            recent = list(self._recent)
            total = self._total
            joined = dict(self._experts)
        n = len(recent)
        counts = {name: 0 for name in (*joined, GENERAL)}
        for routed, _ in recent:
            counts[routed] = counts.get(routed, 0) + 1
        share = {name: (c / n if n else 0.0) for name, c in counts.items()}
        mean_p = {name: (sum(p.get(name, 0.0) for _, p in recent) / n if n else 0.0) for name in (*joined, GENERAL)}
        balance = len(joined) * sum(share[e] * mean_p[e] for e in joined)
        entropy = -sum(f * math.log2(f) for f in share.values() if f > 0)

        warnings = []
        for name in joined:
            if n >= HOG_MIN_REQUESTS and share[name] > HOG_SHARE:
                warnings.append(f"expert {name} took {share[name]:.0%} of the last {n} requests (over half)")
            if counts[name] == 0 and n >= self.window and total - joined[name] >= self.window:
                warnings.append(f"expert {name} got none of the last {self.window} requests")
        return {
            "total_requests": total,
            "recent_requests": n,
            "experts": {e: {"share": share[e], "mean_probability": mean_p[e]} for e in joined},
            GENERAL: {"share": share[GENERAL], "mean_probability": mean_p[GENERAL]},
            "balance": balance,
            "entropy_bits": entropy,
            "warnings": warnings,
        }
