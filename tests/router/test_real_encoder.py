"""The real all-MiniLM-L6-v2 encoder: the interface holds and a small gate on it routes obvious questions."""
import os

import numpy as np
import pytest

from router import Gate, SentenceEncoder
from router.encoder import MAX_WINDOWS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def test_minilm_interface(encoder):
    assert (encoder.name, encoder.dim, encoder.max_tokens) == ("all-MiniLM-L6-v2", 384, MAX_WINDOWS * 254 + 2)
    x = encoder.encode(["What is a contract?", "How do I treat a fever?"])
    assert x.shape == (2, 384) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    assert encoder.token_count("hello world") == 4
    assert encoder.token_count("word " * 1100) > encoder.max_tokens


def test_short_text_is_embedded_as_the_model_embeds_it(encoder):
    text = "What is the statute of limitations for breach of contract?"
    plain = encoder._model.encode([text], normalize_embeddings=True)
    assert np.allclose(encoder.encode([text]), plain, atol=1e-6)


def test_long_text_is_read_to_its_end(encoder):
    """Past one 256-token window the question at the end still moves the vector: windows are averaged."""
    facts = "The tenant and the landlord met on a Tuesday to walk through the flat before the move. " * 20
    assert 256 < encoder.token_count(facts) <= encoder.max_tokens
    a, b = encoder.encode([facts + "Can the landlord keep the deposit?", facts + "What is the capital of Peru?"])
    assert a @ b < 0.99
    windows = encoder._windows(facts + "Why?", encoder._offsets([facts + "Why?"])[0])
    assert 2 <= len(windows) <= MAX_WINDOWS and windows[-1].endswith("Why?") and windows[0].startswith("The tenant")
    pooled = encoder._model.encode(windows, normalize_embeddings=True).mean(axis=0)
    assert np.allclose(encoder.encode([facts + "Why?"])[0], pooled / np.linalg.norm(pooled), atol=1e-5)


def test_minilm_gate_routes_and_flags_truncation(encoder):
    from tests.router.fakes import EXAMPLES, GENERAL

    gate = Gate.fit(EXAMPLES, GENERAL, encoder)
    assert gate.route("My child has a high fever and a rash, should I call the doctor?").experts[0].name == "medical"
    assert gate.route("Can I break my apartment lease early without penalty?").experts[0].name == "legal"
    assert gate.route("Write me a haiku about the moon.").fallback
    long = gate.route("Is a verbal agreement to sell my car binding? " + "It was a handshake deal. " * 200)
    assert long.truncated and "truncated" in long.reason
