import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from router import Gate, Lexical, training_hash
from router.gate import FORMAT_VERSION
from tests.router.fakes import EXAMPLES, GENERAL, ConstantEncoder, HashingEncoder


@pytest.fixture
def encoder():
    return HashingEncoder()


@pytest.fixture
def gate(encoder):
    return Gate.fit(EXAMPLES, GENERAL, encoder)


def test_routes_domain_questions_and_falls_back_on_general(gate):
    assert gate.experts == ("finance", "legal", "medical")
    assert gate.route("Which symptoms should my doctor check for blood pressure?").experts[0].name == "medical"
    assert gate.route("Can my landlord break the contract?").experts[0].name == "legal"
    assert gate.route("How do I save for retirement with an index fund?").experts[0].name == "finance"
    d = gate.route("Write a poem about the capital of France.")
    assert d.fallback and d.experts == ()
    assert set(d.probabilities) == {"finance", "legal", "medical", "general"}
    assert sum(d.probabilities.values()) == pytest.approx(1.0)


def test_threshold_is_chosen_and_reported(gate):
    assert 0.0 <= gate.threshold < 1.0
    assert gate.report.n == sum(map(len, EXAMPLES.values())) + len(GENERAL)
    assert 0.0 <= gate.report.ece_calibrated <= gate.report.ece_raw


def test_calibrates_on_the_questions_the_encoder_was_not_tuned_on():
    every = [q for questions in EXAMPLES.values() for q in questions] + GENERAL
    assert Gate.fit(EXAMPLES, GENERAL, HashingEncoder()).report.calibration_rows == len(every)
    tuned = frozenset(every[::2])
    gate = Gate.fit(EXAMPLES, GENERAL, HashingEncoder(tuned=tuned))
    assert gate.report.calibration_rows == sum(q not in tuned for q in every) < len(every)
    assert gate.report.n == len(every)


def test_calibrates_on_every_question_when_a_class_has_too_few_unseen():
    every = [q for questions in EXAMPLES.values() for q in questions] + GENERAL
    gate = Gate.fit(EXAMPLES, GENERAL, HashingEncoder(tuned=frozenset(every) - {GENERAL[0]}))
    assert gate.report.calibration_rows == len(every)


@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_weights_sum_to_one_and_respect_top_k(gate, top_k):
    for d in gate.route_batch(["What is a good credit score for a mortgage loan contract?",
                               "Is a fever and a rash a sign of infection?"], top_k=top_k):
        assert 1 <= len(d.experts) <= top_k
        assert sum(e.weight for e in d.experts) == pytest.approx(1.0)
        assert all(e.weight >= gate.min_weight for e in d.experts[1:])


def test_route_batch_uses_one_encoder_call_and_matches_route(gate, encoder):
    questions = ["How do bonds pay interest?", "Tell me a joke about cats.", "Is my verbal contract binding?"]
    encoder.calls = 0
    batch = gate.route_batch(questions)
    assert encoder.calls == 1
    for q, d in zip(questions, batch):
        assert gate.route(q).probabilities == pytest.approx(d.probabilities)


def test_save_load_roundtrip_without_pickle(gate, encoder, tmp_path):
    gate.save(tmp_path / "gate")
    assert sorted(p.name for p in (tmp_path / "gate").iterdir()) == ["gate.json", "gate.safetensors"]
    config = json.loads((tmp_path / "gate" / "gate.json").read_text())
    assert config["encoder"]["name"] == encoder.name and config["threshold"] == gate.threshold
    assert Lexical.from_json(config["lexical"]) == gate.lexical
    loaded = Gate.load(tmp_path / "gate", encoder)
    questions = ["What causes migraine headaches?", "Who painted the Mona Lisa?", "HELOC vs refinance?"]
    assert np.array_equal(loaded.probabilities(questions), gate.probabilities(questions))
    assert np.array_equal(loaded.columns, gate.columns)
    for a, b in zip(gate.route_batch(questions, 3), loaded.route_batch(questions, 3)):
        assert a == b
    assert loaded.training_hash == gate.training_hash == training_hash(EXAMPLES, GENERAL)


def test_load_refuses_an_older_format(gate, encoder, tmp_path):
    gate.save(tmp_path)
    config = json.loads((tmp_path / "gate.json").read_text())
    (tmp_path / "gate.json").write_text(json.dumps({**config, "format_version": FORMAT_VERSION - 1}))
    with pytest.raises(ValueError, match=f"has format {FORMAT_VERSION - 1} but this version reads format "
                                         f"{FORMAT_VERSION}: refit it"):
        Gate.load(tmp_path, encoder)


def test_load_refuses_weights_that_do_not_match_the_columns(gate, encoder, tmp_path):
    gate.save(tmp_path)
    tensors = load_file(tmp_path / "gate.safetensors")
    save_file({**tensors, "columns": tensors["columns"][:-1].copy()}, tmp_path / "gate.safetensors")
    with pytest.raises(ValueError, match=r"gate weights cover .* features, not the .* of the encoder \(256\)"):
        Gate.load(tmp_path, encoder)


def test_lexical_features_route_words_the_encoder_cannot_see():
    """With an encoder that gives every question the same vector, only the hashed n-grams can tell domains apart."""
    blind = Gate.fit(EXAMPLES, GENERAL, ConstantEncoder(), lexical=Lexical(0.0, 0.0))
    assert len(blind.columns) == 0
    medical, legal = blind.probabilities(["Does my doctor treat a fever?", "Is my lease contract legal in court?"])
    assert np.allclose(medical, legal)
    gate = Gate.fit(EXAMPLES, GENERAL, ConstantEncoder())
    assert gate.route("Does my doctor treat a fever?").experts[0].name == "medical"
    assert gate.route("Is my lease contract legal in court?").experts[0].name == "legal"
    assert gate.route("Should I invest my savings for retirement?").experts[0].name == "finance"
    assert gate.route("Write a funny poem.").fallback


def test_load_refuses_another_encoder(gate, tmp_path):
    gate.save(tmp_path)
    with pytest.raises(ValueError, match="was fit with encoder 'hashing-bow'.*refit"):
        Gate.load(tmp_path, HashingEncoder(name="other"))
    with pytest.raises(ValueError, match="holds no saved gate"):
        Gate.load(tmp_path / "missing", HashingEncoder())


def test_refit_with_new_expert_routes_to_it_and_reuses_cached_embeddings(tmp_path):
    encoder = HashingEncoder()
    Gate.fit(EXAMPLES, GENERAL, encoder, cache_dir=tmp_path)
    assert len(encoder.encoded) == sum(map(len, EXAMPLES.values())) + len(GENERAL)
    cooking = ["How long do I cook an egg in a recipe?", "What oven temperature does a chicken recipe need?",
               "How do I cook bread dough in the oven?", "Can I freeze a cooked rice recipe?",
               "How much salt goes in a pasta recipe?", "What spices suit a soup recipe I cook?"]
    Gate.fit({**EXAMPLES, "cooking": cooking}, GENERAL, HashingEncoder(), cache_dir=tmp_path)
    fresh = HashingEncoder()
    gate = Gate.fit({**EXAMPLES, "cooking": cooking}, GENERAL, fresh, cache_dir=tmp_path)
    assert fresh.encoded == []
    assert "cooking" in gate.experts
    assert gate.route("Which recipe do I cook pasta with?").experts[0].name == "cooking"


def test_refit_encodes_only_new_questions(tmp_path):
    Gate.fit(EXAMPLES, GENERAL, HashingEncoder(), cache_dir=tmp_path)
    encoder = HashingEncoder()
    new = ["How do I knead bread dough?", "Can I freeze cooked rice?"]
    Gate.fit({**EXAMPLES, "cooking": new}, GENERAL, encoder, cache_dir=tmp_path)
    assert encoder.encoded == new


def test_over_long_question_is_truncated_and_says_so(gate, encoder):
    short = gate.route("What causes a fever?")
    long = gate.route("What causes a fever? " + "I also feel tired and sore " * 10)
    assert not short.truncated and "truncated" not in short.reason
    assert long.truncated and f"truncated to the encoder window of {encoder.max_tokens} tokens" in long.reason


@pytest.mark.parametrize("question", ["", "   \n\t"])
def test_empty_question_raises(gate, question):
    with pytest.raises(ValueError, match="question 0 is empty"):
        gate.route(question)


@pytest.mark.parametrize("top_k", [0, 5])
def test_bad_top_k_raises(gate, top_k):
    with pytest.raises(ValueError, match="top_k must be an integer from 1 to 4"):
        gate.route("What is a bond?", top_k=top_k)


@pytest.mark.parametrize("examples, general, message", [
    ({}, GENERAL, "at least 2 classes"),
    ({"general": ["a b", "c d"], "legal": EXAMPLES["legal"]}, GENERAL, "'general' is reserved"),
    ({"General ": ["a b", "c d"], "legal": EXAMPLES["legal"]}, GENERAL, "is reserved"),
    ({"": ["a b", "c d"]}, GENERAL, "non-empty strings"),
    ({"legal": []}, GENERAL, "expert 'legal' has no questions"),
    ({"legal": ["only one"]}, GENERAL, "at least 2"),
    ({"legal": ["fine question", "  "]}, GENERAL, "question 1 is empty"),
    ({"legal": EXAMPLES["legal"]}, [], "'general'.*has no questions"),
])
def test_bad_training_data_raises(examples, general, message):
    with pytest.raises(ValueError, match=message):
        Gate.fit(examples, general, HashingEncoder())


def test_training_hash_ignores_order():
    shuffled = {k: list(reversed(v)) for k, v in reversed(EXAMPLES.items())}
    assert training_hash(shuffled, GENERAL[::-1]) == training_hash(EXAMPLES, GENERAL)
    assert training_hash(EXAMPLES, GENERAL[1:]) != training_hash(EXAMPLES, GENERAL)


def test_fit_is_deterministic_for_a_seed(encoder):
    a = Gate.fit(EXAMPLES, GENERAL, encoder, seed=3)
    b = Gate.fit(EXAMPLES, GENERAL, encoder, seed=3)
    assert np.array_equal(a.linear.coef, b.linear.coef) and a.threshold == b.threshold
