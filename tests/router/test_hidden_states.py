"""The base LM's hidden states as the gate's second view, on a tiny random Llama so it runs in seconds."""
import json

import numpy as np
import pytest
import torch

from router import Gate
from router.hidden_states import HiddenStates, StateBlock
from tests.router.fakes import EXAMPLES, GENERAL, HashingEncoder

QUESTIONS = ["What causes migraine headaches?", "Is my verbal contract binding?", "HELOC vs refinance?"]


@pytest.fixture(scope="module")
def states(tiny_model_dir):
    return HiddenStates(tiny_model_dir, layers=1)


@pytest.fixture(scope="module")
def gate(states):
    return Gate.fit(EXAMPLES, GENERAL, HashingEncoder(), states=states)


def test_a_question_embeds_the_same_alone_or_padded_in_a_batch(states):
    alone = np.vstack([states.encode([q]) for q in QUESTIONS])
    batch = states.encode(QUESTIONS + ["a much longer question that pads every other row of its batch " * 3])
    assert alone.shape == (3, states.dim) and alone.dtype == np.float32
    assert np.allclose(batch[:3], alone, atol=1e-2)  # bfloat16 sums may round differently in another shape
    assert np.abs(alone[0] - alone[1]).max() > 0.1


def test_states_are_the_full_models_hidden_states_after_those_layers(tiny_model_dir, tmp_path):
    """Only the first layers are loaded, yet with the checkpoint's weights, also from a folder written as the GGUF
    cache writes one (experts.base_model): tied embeddings stored only as `lm_head.weight`."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    full.config.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    save_model(full, str(tmp_path / "model.safetensors"))
    tokens = AutoTokenizer.from_pretrained(tiny_model_dir)(QUESTIONS[:1], return_tensors="pt")
    with torch.no_grad():
        expected = full.model(**tokens, output_hidden_states=True).hidden_states[1].mean(1).numpy()
    for folder in (tiny_model_dir, tmp_path):
        got = HiddenStates(folder, layers=1, dtype=torch.float32).encode(QUESTIONS[:1])
        assert np.allclose(got, expected, atol=1e-5)


def test_layers_are_capped_at_the_model_and_named(tiny_model_dir, states):
    capped = HiddenStates(tiny_model_dir, layers=30)
    assert capped.name == f"{tiny_model_dir.name}:layers2:bfloat16" and states.name.endswith(":layers1:bfloat16")
    assert not np.allclose(capped.encode(QUESTIONS), states.encode(QUESTIONS), atol=1e-3)


def test_an_over_long_question_keeps_its_end(states):
    """Past MAX_TOKENS the start is cut, not the end, where a long question asks what it asks."""
    from router.hidden_states import MAX_TOKENS

    end = " So is my verbal contract binding?"
    long = "word " * (2 * MAX_TOKENS)
    assert states._tokenizer(long + end, truncation=True, max_length=MAX_TOKENS)["input_ids"][-3:] == \
        states._tokenizer(end)["input_ids"][-3:]
    assert np.isfinite(states.encode([long + end])).all()


def test_bad_folder_or_layer_count_is_a_clear_error(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="cannot load the base model's first layers from"):
        HiddenStates(tmp_path)
    with pytest.raises(ValueError, match="layers must be a whole number at least 1"):
        HiddenStates(tiny_model_dir, layers=0)


def test_block_standardises_then_scales_each_row_to_its_weight():
    raw = np.random.default_rng(0).normal(size=(50, 8)) * np.array([1000, 1, 1, 1, 1, 1, 1, 1])
    block = StateBlock.fit(raw, 3.0)
    out = block.transform(raw)
    assert np.allclose(np.linalg.norm(out, axis=1), 3.0, atol=1e-5)
    assert abs(out[:, 0]).mean() < 2 * abs(out[:, 1:]).mean()  # the huge dimension no longer dominates
    with pytest.raises(ValueError, match="weight must be above 0"):
        StateBlock.fit(raw, 0.0)


def test_gate_with_states_saves_and_loads_them(gate, states, tmp_path):
    assert gate.linear.coef.shape[1] == gate.encoder.dim + states.dim + len(gate.columns)
    gate.save(tmp_path)
    saved = json.loads((tmp_path / "gate.json").read_text())["hidden_states"]
    assert saved == {"name": states.name, "dim": states.dim, "weight": 3.0}
    loaded = Gate.load(tmp_path, HashingEncoder(), states)
    assert np.array_equal(loaded.probabilities(QUESTIONS), gate.probabilities(QUESTIONS))
    plain = Gate.fit(EXAMPLES, GENERAL, HashingEncoder())
    assert not np.allclose(plain.probabilities(QUESTIONS), gate.probabilities(QUESTIONS), atol=1e-4)


def test_load_refuses_a_gate_fit_with_other_states(gate, states, tiny_model_dir, tmp_path):
    gate.save(tmp_path / "with")
    with pytest.raises(ValueError, match="fit with the base model's hidden states .* which were not given"):
        Gate.load(tmp_path / "with", HashingEncoder())
    with pytest.raises(ValueError, match="fit with hidden states .*layers1.* not .*layers2.*: refit it"):
        Gate.load(tmp_path / "with", HashingEncoder(), HiddenStates(tiny_model_dir, layers=2))
    Gate.fit(EXAMPLES, GENERAL, HashingEncoder()).save(tmp_path / "without")
    with pytest.raises(ValueError, match="fit without the base model's hidden states: refit it to use them"):
        Gate.load(tmp_path / "without", HashingEncoder(), states)


def test_refit_caches_the_states_of_training_questions(states, tmp_path):
    Gate.fit(EXAMPLES, GENERAL, HashingEncoder(), states=states, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("embeddings-*layers1*.safetensors"))) == 1
