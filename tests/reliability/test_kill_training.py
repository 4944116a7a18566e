"""SIGKILL in the middle of adding an expert, while it trains and while it writes the adapter.

registry.json and every earlier expert stay byte for byte as they were; a half-written staging folder is never
registered and the next start removes it; a fresh service lists and serves every earlier expert.
"""
import json
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from app.config import AppConfig
from app.service import ExpertGate
from app.training import Progress, TrainingError, TrainingRunner, TrainRequest
from experts.registry import REGISTRY_FILE, Registry
from tests.experts_dir import DATA_DIR, DOMAINS, build_experts_dir
from tests.reliability.snapshot import STAGING_PREFIX, describe_change, tree_digest, without_staging

ROOT = Path(__file__).resolve().parents[2]
NEW = "cardiology"
QUESTIONS = {"medical": "What are the symptoms of anaemia?", "legal": "Can my landlord keep my deposit?",
             "finance": "How do I compute compound interest?", "code": "How do I reverse a list in Python?"}
LONG = {"epochs": 1000, "max_steps": 5000}  # tens of seconds on the tiny model: the kill lands mid-run
STALL_WRITE = """
import json, sys
import experts.train
from app.train_job import main

def stall(path):
    print(json.dumps({"event": "writing"}), flush=True)
    sys.stdin.read()  # the adapter stays half-written until this process is killed

experts.train._to_fp16 = stall
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def steady_experts(tiny_model_dir, tmp_path_factory):
    """Four experts after one service start, so their gate is saved and a restart rewrites nothing."""
    root = tmp_path_factory.mktemp("kill")
    folder = build_experts_dir(tiny_model_dir, root / "experts")
    ExpertGate(AppConfig(base_model=str(tiny_model_dir), device="cpu", experts_dir=folder, cache_dir=root / "cache"))
    return folder


@pytest.fixture
def experts(steady_experts, tmp_path):
    return Path(shutil.copytree(steady_experts, tmp_path / "experts"))


@pytest.fixture
def config(experts, steady_experts, tiny_model_dir):
    return AppConfig(base_model=str(tiny_model_dir), device="cpu", experts_dir=experts,
                     cache_dir=steady_experts.parent / "cache", max_new_tokens=2)


@pytest.fixture
def data(tmp_path):
    """40 real medical pairs."""
    lines = (DATA_DIR / "medical" / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "medical40.jsonl"
    path.write_text("".join(lines[:40]), encoding="utf-8")
    return path


def wait_for(child: subprocess.Popen, event: str, timeout: float = 180.0) -> None:
    """Reads the child's JSON lines until one reports `event`; fails if it exits first or the timeout passes."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"the training reported no {event!r} within {timeout:.0f} s")
        if line is None:
            pytest.fail(f"the training exited with code {child.wait()} before reporting {event!r}")
        if line.startswith("{") and json.loads(line).get("event") == event:
            return


def assert_as_before(experts: Path, before: dict, registry_bytes: bytes, config: AppConfig, leftovers: int) -> None:
    """A kill may leave only a staging folder; the next start removes it and serves every earlier expert."""
    assert (experts / REGISTRY_FILE).read_bytes() == registry_bytes
    assert len(list(experts.glob(f"{STAGING_PREFIX}*"))) == leftovers
    after = without_staging(tree_digest(experts))
    assert after == before, describe_change(before, after)
    assert Registry(experts).names() == list(DOMAINS)

    service = ExpertGate(config)
    assert not list(experts.glob(f"{STAGING_PREFIX}*"))
    assert tree_digest(experts) == before, describe_change(before, tree_digest(experts))
    assert service.registry.names() == list(DOMAINS) and service.backend.experts() == sorted(DOMAINS)
    assert service.warnings == []
    answers = service.ask(list(QUESTIONS.values()), top_k=1)
    assert [a.experts[0]["name"] for a in answers] == list(QUESTIONS)


@pytest.mark.parametrize("entry, event, leftovers", [
    pytest.param(["-m", "app.train_job"], "progress", 0, id="while-training"),
    pytest.param(["-c", STALL_WRITE], "writing", 1, id="while-writing"),
])
def test_sigkill_changes_no_expert(experts, config, data, tiny_model_dir, entry, event, leftovers):
    before, registry_bytes = tree_digest(experts), (experts / REGISTRY_FILE).read_bytes()
    argv = [sys.executable, *entry, NEW, "--data", str(data), "--experts-dir", str(experts),
            "--base-model", str(tiny_model_dir), "--device", "cpu", "--threads", "1",
            "--epochs", str(LONG["epochs"]), "--max-steps", str(LONG["max_steps"])]
    child = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        wait_for(child, event)
        assert child.poll() is None, "the training ended before it could be killed"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
    assert_as_before(experts, before, registry_bytes, config, leftovers)


def test_server_reports_a_killed_training_child(experts, config, data):
    """The server's runner, whose child dies of SIGKILL, says so instead of hanging or registering anything."""
    before, registry_bytes = tree_digest(experts), (experts / REGISTRY_FILE).read_bytes()
    events = TrainingRunner(config).run(TrainRequest(NEW, "", data, shown_as=data.name, **LONG))
    assert isinstance(next(events), Progress)
    (child,) = [p for p in psutil.Process().children() if "app.train_job" in p.cmdline()]
    child.send_signal(signal.SIGKILL)
    with pytest.raises(TrainingError, match=r"^training stopped \(exit code -9\) without a result"):
        for _ in events:
            pass
    assert_as_before(experts, before, registry_bytes, config, leftovers=0)


def test_orphan_removal_spares_a_live_writer(tmp_path):
    registry = Registry(tmp_path)
    live = registry.staging_folder()  # this process, still writing
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{STAGING_PREFIX}{ended.stdout.strip()}@{socket.gethostname()}-x"
    elsewhere = tmp_path / f"{STAGING_PREFIX}{ended.stdout.strip()}@another-machine-y"  # a shared folder's other writer
    for folder in (dead, elsewhere):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"half")
    assert registry.remove_orphans() == [dead]
    assert live.is_dir() and elsewhere.is_dir() and registry.names() == []
