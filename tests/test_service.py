"""The composed service and the routing CLI on the tiny model with a four-expert folder and the real MiniLM gate."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from app.config import AppConfig
from app.service import ExpertGate, InputError
from tests.experts_dir import build_experts_dir

pytestmark = pytest.mark.real_model  # the gate uses the real MiniLM encoder


@pytest.fixture(scope="module")
def experts_dir(tiny_model_dir, tmp_path_factory):
    return build_experts_dir(tiny_model_dir, tmp_path_factory.mktemp("experts"))


@pytest.fixture(scope="module")
def service(tiny_model_dir, experts_dir, tmp_path_factory):
    config = AppConfig(base_model=str(tiny_model_dir), device="cpu", experts_dir=experts_dir,
                       cache_dir=tmp_path_factory.mktemp("cache"), max_new_tokens=4)
    return ExpertGate(config)


def test_ask_routes_each_row_to_its_expert(service):
    answers = service.ask(["What are the warning signs of a stroke?", "How do I reverse a list in Python?",
                           "What is the capital of Australia?"], top_k=2)
    assert answers[0].experts[0]["name"] == "medical" and not answers[0].fallback
    assert answers[1].experts[0]["name"] == "code"
    assert answers[2].fallback and answers[2].experts == []
    for answer in answers[:2]:
        assert abs(sum(e["weight"] for e in answer.experts) - 1) < 1e-6
        assert set(answer.probabilities) == {"medical", "legal", "finance", "code", "general"}
    assert service.stats.snapshot()["total_requests"] >= 3


@pytest.mark.parametrize("question", ["", "   ", "\x00\x01", "y" * 4001])
def test_bad_questions_are_refused(service, question):
    with pytest.raises(InputError):
        service.ask([question])


def test_bad_top_k_is_refused(service):
    with pytest.raises(InputError, match="top_k"):
        service.ask(["What is a tort?"], top_k=5)


def test_corrupt_adapter_disables_only_that_expert(tiny_model_dir, experts_dir, tmp_path):
    broken = tmp_path / "experts"
    shutil.copytree(experts_dir, broken)
    weights = broken / "legal" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    service = ExpertGate(AppConfig(base_model=str(tiny_model_dir), device="cpu", experts_dir=broken,
                                   cache_dir=tmp_path / "cache", max_new_tokens=2))
    assert service.backend.experts() == ["code", "finance", "medical"]
    assert len(service.warnings) == 1 and "'legal' is disabled" in service.warnings[0]
    assert "legal" not in service.gate.experts
    assert service.ask(["How is a fever treated?"])[0].experts[0]["name"] == "medical"


def test_gate_reads_the_base_models_hidden_states_when_asked(tiny_model_dir, experts_dir, tmp_path):
    folder = tmp_path / "experts"
    shutil.copytree(experts_dir, folder)

    def start(states: bool) -> ExpertGate:
        return ExpertGate(AppConfig(base_model=str(tiny_model_dir), device="cpu", experts_dir=folder,
                                    cache_dir=tmp_path / "cache", max_new_tokens=2, gate_states=states))

    service = start(True)
    assert service.gate.states.name == f"{tiny_model_dir.name}:layers2:bfloat16" and service.warnings == []
    assert json.loads((folder / "gate" / "gate.json").read_text())["hidden_states"]["name"] == service.gate.states.name
    assert start(False).gate.states is None  # the saved gate no longer fits: refit without them
    assert json.loads((folder / "gate" / "gate.json").read_text())["hidden_states"] is None


def test_route_cli_without_a_readable_base_model_routes_on_the_embedding_with_a_warning(experts_dir, tmp_path):
    result = cli("route", "Can my landlord keep my deposit?", "--json", "--experts-dir", str(experts_dir),
                 "--base-model", str(tmp_path / "missing"), env={"EXPERTGATE_GATE_STATES": "1"})
    assert result.returncode == 0, result.stderr
    assert "warning: the gate routes without the base model's hidden states: base model path does not exist" \
        in result.stderr
    assert json.loads(result.stdout)["experts"][0]["name"] == "legal"


def cli(*args, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_route_cli_single_and_file(experts_dir, tmp_path):
    result = cli("route", "What is the penalty for breaking a lease early?", "--json", "--experts-dir", str(experts_dir))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["experts"][0]["name"] == "legal"
    questions = tmp_path / "q.txt"
    questions.write_text("How do I compute compound interest?\nHow do I fix a KeyError when reading a Python dict?\n\nWho wrote Hamlet?\n")
    result = cli("route", "--file", str(questions), "--json", "--experts-dir", str(experts_dir))
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["experts"][0]["name"] if r["experts"] else "general" for r in rows] == ["finance", "code", "general"]


def test_route_cli_errors(experts_dir):
    for args, fragment in [(("route", "", "--experts-dir", str(experts_dir)), "empty"),
                           (("route", "hi", "--top-k", "7", "--experts-dir", str(experts_dir)), "top_k"),
                           (("route",), "either a QUESTION or --file")]:
        result = cli(*args)
        assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr


def test_eval_router_cli(experts_dir, tmp_path):
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What does a high white blood cell count mean?", "domain": "medical"},
        {"question": "Can my employer fire me for no reason?", "domain": "legal"},
        {"question": "What is a Roth IRA?", "domain": "finance"},
        {"question": "How does a Python generator work?", "domain": "code"},
        {"question": "How do I bake sourdough bread?", "domain": "general"}]))
    result = cli("eval", "router", "--data", str(labelled), "--json", "--experts-dir", str(experts_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"accuracy", "macro_f1", "recall", "confusion", "fallback_rate"} <= set(report)
    assert report["accuracy"] >= 0.8


def test_tune_router_cli_installs_an_encoder_the_gate_then_uses(experts_dir, tmp_path):
    tuned = tmp_path / "experts"
    shutil.copytree(experts_dir, tuned)
    result = cli("tune-router", "--epochs", "1", "--held-out", "0.25", "--json", "--experts-dir", str(tuned))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tuning"]["classes"] == ["code", "finance", "legal", "medical", "general"]
    assert report["tuning"]["steps"] == report["tuning"]["questions"] // 32 > 0
    assert report["tuning"]["config"]["held_out"] == 0.25
    assert report["gate"]["calibration_rows"] == report["tuning"]["held_out"] > 0
    folder = json.loads((tuned / "encoder.json").read_text())["folder"]
    gate = json.loads((tuned / "gate" / "gate.json").read_text())
    assert gate["encoder"]["name"] == f"all-MiniLM-L6-v2+{folder}"
    result = cli("route", "Can my landlord keep my deposit?", "--json", "--experts-dir", str(tuned))
    assert result.returncode == 0 and "warning: " not in result.stderr, result.stderr
    assert json.loads(result.stdout)["experts"][0]["name"] == "legal"


def test_tune_router_cli_errors(tmp_path):
    result = cli("tune-router", "--experts-dir", str(tmp_path))
    assert result.returncode == 2 and "no experts are registered" in result.stderr and "Traceback" not in result.stderr
    result = cli("tune-router", "--epochs", "0", "--experts-dir", str(tmp_path))
    assert result.returncode == 2 and "must be above 0" in result.stderr
    result = cli("tune-router", "--held-out", "1", "--experts-dir", str(tmp_path))
    assert result.returncode == 2 and "must be at least 0 and below 1" in result.stderr


def test_broken_tuned_encoder_falls_back_to_plain_minilm_with_a_warning(tiny_model_dir, experts_dir, tmp_path):
    broken = tmp_path / "experts"
    shutil.copytree(experts_dir, broken)
    (broken / "encoder.json").write_text('{"folder": ')
    shutil.rmtree(broken / "gate", ignore_errors=True)  # the gate is refit too, past the broken pointer
    service = ExpertGate(AppConfig(base_model=str(tiny_model_dir), device="cpu", experts_dir=broken,
                                   cache_dir=tmp_path / "cache", max_new_tokens=2))
    assert service.encoder.name == "all-MiniLM-L6-v2"
    assert len(service.warnings) == 1 and "tuned encoder is not used" in service.warnings[0]
    assert service.ask(["How is a fever treated?"])[0].experts[0]["name"] == "medical"
