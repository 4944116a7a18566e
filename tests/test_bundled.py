"""The shipped experts folder: what `make serve` starts with on a fresh clone, without training or refitting."""
import json

import pytest

from app.gating import GATE_DIR, gate_states, general_questions
from experts import BUNDLED_DIR
from experts.adapters import read_manifest
from experts.base_model import load_base_model
from experts.engine import TorchBackend
from experts.rebuild import DOMAINS
from experts.registry import Registry
from router import Gate, training_hash
from router.tuning import load_encoder, tuned_classes

pytestmark = pytest.mark.real_model


def test_the_four_experts_are_registered_with_their_training_questions():
    registry = Registry(BUNDLED_DIR)
    assert sorted(registry.names()) == sorted(DOMAINS)
    for name in DOMAINS:
        manifest = read_manifest(registry.folder(name))
        questions = registry.questions(name)
        assert manifest["examples"] + manifest["heldout_examples"] == len(questions) >= 400
        assert manifest["eval_perplexity"] < 0.8 * manifest["base_perplexity"]


def test_the_saved_gate_matches_the_experts_so_a_fresh_start_does_not_refit():
    registry = Registry(BUNDLED_DIR)
    encoder = load_encoder(BUNDLED_DIR)
    assert "+encoder-" in encoder.name and tuned_classes(BUNDLED_DIR) == [*sorted(DOMAINS), "general"]
    states, warning = gate_states()
    assert warning is None and states.name.endswith(":layers6:bfloat16")
    gate = Gate.load(BUNDLED_DIR / GATE_DIR, encoder, states)
    questions = {name: registry.questions(name) for name in registry.names()}
    assert gate.training_hash == training_hash(questions, general_questions(BUNDLED_DIR))
    assert gate.experts == tuple(sorted(DOMAINS))


def test_every_adapter_loads_onto_the_real_base_model():
    backend = TorchBackend(load_base_model(device="cpu"))
    for name in DOMAINS:
        backend.add_expert(name, BUNDLED_DIR / name)
        config = json.loads((BUNDLED_DIR / name / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert config["peft_type"] == "LORA" and not (BUNDLED_DIR / name / "adapter_model.bin").exists()
    assert backend.experts() == sorted(DOMAINS)
