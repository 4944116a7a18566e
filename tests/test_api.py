"""The named API endpoints through gradio_client, the serving safety rules, and the training request checks."""
import json

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from app.config import AppConfig
from app.server import ServeError, ServeOptions, launch, parse_auth
from app.training import TrainingError, TrainingRunner, TrainRequest
from tests.app_process import free_port
from tests.experts_dir import build_experts_dir


@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory, tiny_model_dir):
    return build_experts_dir(tiny_model_dir, tmp_path_factory.mktemp("api") / "experts")


@pytest.fixture(scope="module")
def client(tiny_model_dir, experts_dir):
    config = AppConfig(base_model=str(tiny_model_dir), device="cpu", experts_dir=experts_dir, max_new_tokens=8)
    demo, url = launch(config, ServeOptions(port=free_port()), block=False)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def test_ask_returns_the_text_and_its_explanation(client):
    text, info = client.predict("What are the symptoms of anaemia?", 2, 8, api_name="/ask")
    assert info["answer"] == text and info["question"] == "What are the symptoms of anaemia?"
    assert [e["name"] for e in info["experts"]] == ["medical"] and not info["fallback"]
    assert set(info["probabilities"]) == {"medical", "legal", "finance", "code", "general"}
    assert {"route", "generate", "queue"} <= set(info["timings_ms"])
    assert info["batch_size"] >= 1 and info["tokens_per_s"] >= 0 and 1 <= info["new_tokens"] <= 8
    assert set(info) >= {"reason", "truncated"}


def test_concurrent_asks_are_batched(client):
    questions = [f"How do I sort a list in Python, case {i}?" for i in range(8)]
    jobs = [client.submit(q, 1, 8, api_name="/ask") for q in questions]
    infos = [job.result()[1] for job in jobs]
    assert [i["question"] for i in infos] == questions
    assert all(i["experts"][0]["name"] == "code" for i in infos)
    assert max(i["batch_size"] for i in infos) > 1


def test_bad_input_is_a_clear_error(client):
    with pytest.raises(AppError, match="the question is empty"):
        client.predict("  ", 2, 8, api_name="/ask")
    with pytest.raises(AppError, match="top_k"):
        client.predict("Is a verbal contract binding?", 9, api_name="/route")


def test_route_and_experts(client):
    decision = client.predict("Can my landlord keep my deposit?", 2, api_name="/route")
    assert decision["experts"][0]["name"] == "legal" and not decision["fallback"]
    assert client.predict("Tell me a joke about penguins.", 2, api_name="/route")["fallback"]
    experts = client.predict(api_name="/experts")
    assert [e["name"] for e in experts] == ["medical", "legal", "finance", "code"]
    assert all(e["loaded"] and e["rank"] == 4 and e["size_bytes"] > 0 for e in experts)
    json.dumps(experts)


def test_serving_safety_rules():
    with pytest.raises(ServeError, match="--auth"):
        ServeOptions(host="0.0.0.0").check()
    ServeOptions(host="0.0.0.0", auth=("ann", "pw")).check()
    ServeOptions(host="0.0.0.0", insecure=True).check()
    assert ServeOptions().editable() and not ServeOptions(read_only=True).editable()
    assert not ServeOptions(host="0.0.0.0", auth=("ann", "pw")).editable()
    assert ServeOptions(host="0.0.0.0", auth=("ann", "pw"), allow_edits=True).editable()
    assert parse_auth("ann:p:w") == ("ann", "p:w")
    with pytest.raises(ServeError):
        parse_auth("ann")


def test_training_request_is_checked_before_any_process(tmp_path, experts_dir):
    runner = TrainingRunner(AppConfig(experts_dir=experts_dir))
    data = tmp_path / "upload-123.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n' * 19 + "[1]\n", encoding="utf-8")
    request = TrainRequest(name="astro", description="", data=data, shown_as="astro.jsonl")
    with pytest.raises(TrainingError, match=r"^astro.jsonl: 1 bad line\(s\): line 20: expected a JSON object"):
        next(runner.run(request))
    with pytest.raises(TrainingError, match="already registered"):
        runner.check(TrainRequest(name="medical", description="", data=data, shown_as="x"))
    with pytest.raises(TrainingError, match="reserved"):
        runner.check(TrainRequest(name="general", description="", data=data, shown_as="x"))
