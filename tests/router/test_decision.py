import pytest

from router.decision import ExpertChoice, RoutingDecision, decide


def test_top_two_weights_renormalised_and_sum_to_one():
    d = decide({"medical": 0.6, "finance": 0.3, "legal": 0.05, "general": 0.05}, top_k=2, threshold=0.3, min_weight=0.1)
    assert not d.fallback
    assert [e.name for e in d.experts] == ["medical", "finance"]
    assert d.experts[0].weight == pytest.approx(0.6 / 0.9)
    assert sum(e.weight for e in d.experts) == pytest.approx(1.0)
    assert d.reason == "medical 0.60, finance 0.30: top-2 above min weight 0.1"


def test_expert_under_min_weight_is_dropped_but_top_is_kept():
    d = decide({"medical": 0.80, "finance": 0.08, "legal": 0.07, "general": 0.05}, top_k=2, threshold=0.3,
               min_weight=0.1)
    assert d.experts == (ExpertChoice("medical", 1.0),)
    assert "finance weight 0.09 under min weight 0.1" in d.reason

    d = decide({"a": 0.4, "b": 0.35, "c": 0.2, "general": 0.05}, top_k=3, threshold=0.3, min_weight=0.9)
    assert d.experts == (ExpertChoice("a", 1.0),)


def test_general_most_probable_falls_back():
    d = decide({"medical": 0.1, "legal": 0.09, "general": 0.81}, top_k=2, threshold=0.3, min_weight=0.1)
    assert d.fallback and d.experts == ()
    assert d.reason == "general 0.81 > all experts: fallback to base model"


def test_unsure_top_expert_falls_back():
    d = decide({"legal": 0.41, "finance": 0.30, "general": 0.29}, top_k=2, threshold=0.55, min_weight=0.1)
    assert d.fallback and d.experts == ()
    assert d.reason == "top expert legal 0.41 under threshold 0.55: fallback"


def test_routed_is_the_top_expert_or_general_on_fallback():
    routed = decide({"finance": 0.5, "medical": 0.4, "general": 0.1}, top_k=2, threshold=0.3, min_weight=0.1)
    assert routed.routed == "finance"
    unsure = decide({"legal": 0.41, "finance": 0.30, "general": 0.29}, top_k=2, threshold=0.55, min_weight=0.1)
    assert unsure.routed == "general"


def test_to_json_has_exactly_the_documented_shape():
    d = decide({"medical": 0.7, "finance": 0.2, "general": 0.1}, top_k=2, threshold=0.3, min_weight=0.1,
               truncated=True, max_tokens=256)
    j = d.to_json()
    assert list(j) == ["experts", "fallback", "probabilities", "reason", "truncated"]
    assert j["experts"][0] == {"name": "medical", "weight": pytest.approx(0.7 / 0.9)}
    assert j["probabilities"] == {"medical": 0.7, "finance": 0.2, "general": 0.1}
    assert j["truncated"] is True and "truncated to the encoder window of 256 tokens" in j["reason"]


@pytest.mark.parametrize("k", [0, 5, -1, 2.0, True])
def test_top_k_outside_range_raises(k):
    with pytest.raises(ValueError, match="top_k must be an integer from 1 to 4"):
        decide({"a": 0.9, "general": 0.1}, top_k=k, threshold=0.3, min_weight=0.1)


def test_decision_is_frozen():
    d = RoutingDecision((), True, {"general": 1.0}, "x", False)
    with pytest.raises(AttributeError):
        d.fallback = False
