"""Broken adapter folders: the loader names each fault; a server started over them disables exactly those experts,
shows why on the page and through `/experts`, and the healthy experts keep answering."""
import html

import pytest
import torch

from experts.adapters import AdapterError, load_adapter
from experts.base_model import load_base_model
from tests.reliability.broken_adapters import FAULT_PARAMS, FAULTS, broken_copy
from tests.reliability.snapshot import unchanged
from tests.reliability.web_client import assert_serves

GOOD = {"medical": "What are the symptoms of anaemia?", "legal": "Can my landlord keep my deposit?",
        "finance": "How do I compute compound interest?", "code": "How do I reverse a list in Python?"}


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base_model(tiny_model_dir, device="cpu")


@pytest.mark.parametrize("fault, fragment", FAULT_PARAMS)
def test_loader_names_the_fault(base, experts_dir, tmp_path, fault, fragment):
    folder = broken_copy(experts_dir / "medical", fault, tmp_path / fault)
    linears = {n: m for n, m in base.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    with unchanged(folder), pytest.raises(AdapterError) as err:
        load_adapter(fault, folder, linears, base_fingerprint=base.fingerprint)
    assert fault in str(err.value) and fragment in str(err.value)  # the adapter is named, by name or folder


@pytest.fixture(scope="module")
def experts(server):
    return {e["name"]: e for e in server[0].predict(api_name="/experts")}


@pytest.mark.parametrize("fault, fragment", FAULT_PARAMS)
def test_experts_api_shows_why_an_expert_is_off(experts, fault, fragment):
    entry = experts[fault]
    assert entry["loaded"] is False
    assert entry["warning"].startswith(f"expert {fault!r} is disabled: ") and fragment in entry["warning"]


def test_page_warns_about_every_broken_expert(server):
    box = next(c["props"]["value"] for c in server[0].config["components"]
               if c["props"].get("elem_id") == "expert-warnings")
    warned = html.unescape(box)
    assert [f for f in FAULTS if f"expert {f!r} is disabled" in warned] == list(FAULTS)


def test_healthy_experts_still_serve(server, experts, experts_dir):
    client = server[0]
    assert {n for n, e in experts.items() if e["loaded"]} == set(GOOD)
    assert all(e["warning"] is None for n, e in experts.items() if n in GOOD)
    with unchanged(experts_dir):
        for domain, question in GOOD.items():
            _, info = client.predict(question, 1, 4, api_name="/ask")
            assert info["experts"][0]["name"] == domain and set(FAULTS).isdisjoint(info["probabilities"])
        assert_serves(client)
