"""The real all-MiniLM-L6-v2 encoder: the interface holds and a small gate on it routes obvious questions."""
import os

import numpy as np
import pytest

from router import Gate, SentenceEncoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def test_minilm_interface(encoder):
    assert (encoder.name, encoder.dim, encoder.max_tokens) == ("all-MiniLM-L6-v2", 384, 256)
    x = encoder.encode(["What is a contract?", "How do I treat a fever?"])
    assert x.shape == (2, 384) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    assert encoder.token_count("hello world") == 4
    assert encoder.token_count("word " * 300) > encoder.max_tokens


def test_minilm_gate_routes_and_flags_truncation(encoder):
    from tests.router.fakes import EXAMPLES, GENERAL

    gate = Gate.fit(EXAMPLES, GENERAL, encoder)
    assert gate.route("My child has a high fever and a rash, should I call the doctor?").experts[0].name == "medical"
    assert gate.route("Can I break my apartment lease early without penalty?").experts[0].name == "legal"
    assert gate.route("Write me a haiku about the moon.").fallback
    long = gate.route("Is a verbal agreement to sell my car binding? " + "It was a handshake deal. " * 60)
    assert long.truncated and "truncated" in long.reason
