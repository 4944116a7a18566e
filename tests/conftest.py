import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The tiny random base models most tests run on have hidden states that are noise to the gate; the tests of
# that view turn it on themselves.
os.environ.setdefault("EXPERTGATE_GATE_STATES", "0")

from experts.base_model import load_base_model  # noqa: E402
from tests.tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_base(tiny_model_dir):
    """A fresh tiny base model per test: mixing tests replace its linears in place."""
    return load_base_model(tiny_model_dir, device="cpu")
