"""Bad input through the library: a specific exception whose message names the fault, and the experts folder
untouched. Covers `ExpertGate` (ask, route), `train_expert` and `Registry`; adapters are in test_broken_adapters."""
import re

import pytest

from app.service import ExpertGate, InputError
from experts.base_model import load_base_model
from experts.data import DataError
from experts.registry import Registry, RegistryError
from experts.train import TrainConfig, train_expert
from tests.reliability.bad_inputs import BAD_FILES, BAD_NAMES, NEW_NAME, write_bad_file, write_good_file
from tests.reliability.snapshot import unchanged

Q = ["What is a tort?"]
TOP_K_RANGE = "top_k must be a whole number from 1 to 4"
TOKENS_RANGE = "max_new_tokens must be a whole number from 1 to 4096"

SERVICE_ROWS = [
    pytest.param("ask", [""], {}, "the question is empty", id="ask-empty"),
    pytest.param("ask", [" \n\t "], {}, "the question is empty", id="ask-whitespace"),
    pytest.param("ask", ["\x00\x1b\x7f\u200b"], {}, "the question is empty", id="ask-control-chars"),
    pytest.param("ask", ["\ud800\udfff"], {}, "the question is empty", id="ask-lone-surrogates"),
    pytest.param("ask", ["y" * 4001], {}, "4001 characters; the limit is 4000", id="ask-huge"),
    pytest.param("ask", [None], {}, "the question must be text, got NoneType", id="ask-none"),
    pytest.param("ask", [b"What is a tort?"], {}, "the question must be text, got bytes", id="ask-bytes"),
    pytest.param("ask", "What is a tort?", {}, "questions must be a list of strings", id="ask-bare-string"),
    pytest.param("ask", Q, {"top_k": 0}, f"{TOP_K_RANGE}, got 0", id="ask-top-k-0"),
    pytest.param("ask", Q, {"top_k": -1}, f"{TOP_K_RANGE}, got -1", id="ask-top-k-negative"),
    pytest.param("ask", Q, {"top_k": 5}, f"{TOP_K_RANGE}, got 5", id="ask-top-k-5"),
    pytest.param("ask", Q, {"top_k": 2.5}, f"{TOP_K_RANGE}, got 2.5", id="ask-top-k-fraction"),
    pytest.param("ask", Q, {"top_k": "2"}, f"{TOP_K_RANGE}, got '2'", id="ask-top-k-text"),
    pytest.param("ask", Q, {"top_k": True}, f"{TOP_K_RANGE}, got True", id="ask-top-k-bool"),
    pytest.param("ask", Q, {"max_new_tokens": 0}, f"{TOKENS_RANGE}, got 0", id="ask-tokens-0"),
    pytest.param("ask", Q, {"max_new_tokens": -1}, f"{TOKENS_RANGE}, got -1", id="ask-tokens-negative"),
    pytest.param("ask", Q, {"max_new_tokens": 4097}, f"{TOKENS_RANGE}, got 4097", id="ask-tokens-4097"),
    pytest.param("ask", Q, {"max_new_tokens": 2.5}, f"{TOKENS_RANGE}, got 2.5", id="ask-tokens-fraction"),
    pytest.param("ask", Q, {"max_new_tokens": float("inf")}, f"{TOKENS_RANGE}, got inf", id="ask-tokens-inf"),
    pytest.param("ask", Q, {"max_new_tokens": "16"}, f"{TOKENS_RANGE}, got '16'", id="ask-tokens-text"),
    pytest.param("route", [""], {}, "the question is empty", id="route-empty"),
    pytest.param("route", "Hi", {}, "questions must be a list of strings", id="route-bare-string"),
    pytest.param("route", Q, {"top_k": 0}, f"{TOP_K_RANGE}, got 0", id="route-top-k-0"),
    pytest.param("route", Q, {"top_k": float("nan")}, f"{TOP_K_RANGE}, got nan", id="route-top-k-nan"),
]


@pytest.fixture(scope="module")
def service(app_config):
    return ExpertGate(app_config)


@pytest.mark.parametrize("method, questions, options, fragment", SERVICE_ROWS)
def test_service_refuses(service, experts_dir, method, questions, options, fragment):
    with unchanged(experts_dir), pytest.raises(InputError) as err:
        getattr(service, method)(questions, **options)
    assert fragment in str(err.value)
    assert service.ask(Q, max_new_tokens=2)[0].new_tokens >= 1


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base_model(tiny_model_dir, device="cpu")


def train(name, data, base, experts_dir):
    return train_expert(name, data, base, Registry(experts_dir), config=TrainConfig(max_steps=1, threads=1))


@pytest.mark.parametrize("name, fragment", BAD_NAMES + [pytest.param(None, "invalid expert name None", id="none")])
def test_train_expert_refuses_name(base, experts_dir, tmp_path, name, fragment):
    with unchanged(experts_dir), pytest.raises(RegistryError) as err:
        train(name, write_good_file(tmp_path), base, experts_dir)
    assert fragment in str(err.value)


@pytest.mark.parametrize("kind, fragment", BAD_FILES)
def test_train_expert_refuses_data(base, experts_dir, tmp_path, kind, fragment):
    data = write_bad_file(kind, tmp_path)
    with unchanged(experts_dir), pytest.raises(DataError) as err:
        train(NEW_NAME, data, base, experts_dir)
    assert str(err.value).startswith(f"{data}: ") and fragment in str(err.value)


@pytest.mark.parametrize("data, fragment", [
    pytest.param("missing.jsonl", "no such file", id="missing-file"),
    pytest.param(".", "no such file", id="a-folder"),
])
def test_train_expert_refuses_unreadable_path(base, experts_dir, tmp_path, data, fragment):
    with unchanged(experts_dir), pytest.raises(DataError, match=fragment):
        train(NEW_NAME, tmp_path / data, base, experts_dir)


@pytest.mark.parametrize("name", ["nope", "../medical", "", "medical/"])
def test_registry_refuses_removing_unknown(experts_dir, name):
    refusal = re.escape(f"no expert named {name!r}; registered: medical, legal")
    with unchanged(experts_dir), pytest.raises(RegistryError, match=refusal):
        Registry(experts_dir).remove(name)
