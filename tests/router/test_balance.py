import math
import threading

import pytest

from router import LoadStats
from router.decision import decide


def routed(probabilities):
    return decide(probabilities, top_k=2, threshold=0.3, min_weight=0.1)


A = {"a": 0.7, "b": 0.2, "general": 0.1}
B = {"a": 0.2, "b": 0.7, "general": 0.1}


def test_hand_computed_snapshot():
    stats = LoadStats()
    stats.set_experts(["a", "b"])
    for p in [A, {"a": 0.6, "b": 0.3, "general": 0.1}, B, {"a": 0.1, "b": 0.1, "general": 0.8}]:
        stats.record(routed(p))
    s = stats.snapshot()
    assert s["total_requests"] == s["recent_requests"] == 4
    assert s["experts"]["a"] == {"share": 0.5, "mean_probability": pytest.approx(0.4)}
    assert s["experts"]["b"] == {"share": 0.25, "mean_probability": pytest.approx(0.325)}
    assert s["general"] == {"share": 0.25, "mean_probability": pytest.approx(0.275)}
    assert s["balance"] == pytest.approx(2 * (0.5 * 0.4 + 0.25 * 0.325))
    assert s["entropy_bits"] == pytest.approx(1.5)
    assert s["warnings"] == []


def test_uniform_routing_balances_to_one():
    stats = LoadStats()
    for _ in range(10):
        stats.record(routed({"a": 1.0, "b": 0.0, "general": 0.0}))
        stats.record(routed({"a": 0.0, "b": 1.0, "general": 0.0}))
    s = stats.snapshot()
    assert s["balance"] == pytest.approx(1.0) and s["entropy_bits"] == pytest.approx(1.0)


def test_hog_warning_needs_enough_requests():
    stats = LoadStats()
    stats.set_experts(["a", "b"])
    for _ in range(19):
        stats.record(routed(A))
    assert stats.snapshot()["warnings"] == []
    stats.record(routed(A))
    assert stats.snapshot()["warnings"] == ["expert a took 100% of the last 20 requests (over half)"]


def test_starved_warning_after_a_full_window_and_not_for_a_new_expert():
    stats = LoadStats(window=200)
    stats.set_experts(["a", "b"])
    for i in range(200):
        stats.record(routed(A if i % 2 else {"a": 0.1, "b": 0.1, "general": 0.8}))
    assert "expert b got none of the last 200 requests" in stats.snapshot()["warnings"]
    stats.set_experts(["a", "b", "c"])
    assert not any("expert c" in w for w in stats.snapshot()["warnings"])
    assert stats.snapshot()["experts"]["c"] == {"share": 0.0, "mean_probability": 0.0}


def test_window_forgets_old_requests():
    stats = LoadStats(window=4)
    for p in [A, A, A, B, B, B, B]:
        stats.record(routed(p))
    s = stats.snapshot()
    assert s["total_requests"] == 7 and s["experts"]["b"]["share"] == 1.0


def test_record_from_many_threads():
    stats = LoadStats(window=50)
    threads = [threading.Thread(target=lambda: [stats.record(routed(A)) for _ in range(250)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = stats.snapshot()
    assert s["total_requests"] == 1000 and s["recent_requests"] == 50
    assert not math.isnan(s["balance"])
