"""The micro-batcher with a fake generator: grouping, per-row streams, the busy limit and error delivery."""
import platform
import threading

import pytest

from app.batcher import BusyError, MicroBatcher
from app.memory import release_free_memory
from app.service import Answer


class FakeModel:
    """Answers question q with its reverse, one character per decode step; records each batch."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False):
        self.calls: list[tuple[list[str], int, int]] = []
        self.started = threading.Event()
        self.gate = gate
        self.fail = fail

    def __call__(self, questions, top_k, max_new_tokens, callback):
        self.calls.append((list(questions), top_k, max_new_tokens))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise RuntimeError("out of memory")
        answers = [q[::-1][:max_new_tokens] for q in questions]
        for step in range(max(map(len, answers))):
            tokens = [ord(a[step]) if step < len(a) else 0 for a in answers]
            callback(step, tokens, [step >= len(a) for a in answers])
        return [Answer(question=q, answer=a, experts=[], fallback=True, probabilities={}, reason="fake",
                       truncated=False, new_tokens=len(a)) for q, a in zip(questions, answers)]


def decode(tokens: list[int]) -> str:
    return "".join(map(chr, tokens))


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_row():
    model = FakeModel()
    batcher = MicroBatcher(model, decode, wait_ms=100)
    questions = ["alpha", "be", "gamma ray", "d"]
    tickets = [batcher.submit(q, 2, 64) for q in questions]
    streams = [list(t) for t in tickets]
    assert model.calls == [(questions, 2, 64)]
    for question, ticket, stream in zip(questions, tickets, streams):
        *texts, answer = stream
        assert answer.answer == question[::-1] and answer.question == question
        assert texts and texts[-1] == question[::-1]
        assert all(question[::-1].startswith(t) for t in texts)
        assert ticket.batch_size == 4 and answer.timings_ms["queue"] >= 0


def test_batches_hold_at_most_max_batch_rows_and_one_setting():
    model = FakeModel()
    batcher = MicroBatcher(model, decode, max_batch=3, wait_ms=100)
    tickets = [batcher.submit(f"q{i}", 2, 8) for i in range(4)] + [batcher.submit("long", 2, 16)]
    results = [t.result() for t in tickets]
    assert [r.answer for r in results] == ["0q", "1q", "2q", "3q", "gnol"]
    assert [(len(qs), n) for qs, _, n in model.calls] == [(3, 8), (1, 8), (1, 16)]


def test_busy_when_too_many_wait_and_serves_again_after():
    gate = threading.Event()
    model = FakeModel(gate)
    batcher = MicroBatcher(model, decode, max_batch=1, wait_ms=0, max_waiting=2)
    running = batcher.submit("first", 1, 8)
    assert model.started.wait(5)
    waiting = [batcher.submit("second", 1, 8), batcher.submit("third", 1, 8)]
    with pytest.raises(BusyError, match="busy"):
        batcher.submit("fourth", 1, 8)
    assert batcher.waiting() == 2
    gate.set()
    assert [t.result().answer for t in [running, *waiting]] == ["tsrif", "dnoces", "driht"]
    assert batcher.submit("fifth", 1, 8).result().answer == "htfif"


def test_a_failed_batch_reaches_every_request_and_the_worker_survives():
    model = FakeModel(fail=True)
    batcher = MicroBatcher(model, decode, wait_ms=50)
    tickets = [batcher.submit(q, 2, 8) for q in ("a", "b")]
    for ticket in tickets:
        with pytest.raises(RuntimeError, match="out of memory"):
            ticket.result()
    model.fail = False
    assert batcher.submit("ok", 2, 8).result().answer == "ko"


def test_rejects_nonsense_limits():
    with pytest.raises(ValueError):
        MicroBatcher(FakeModel(), decode, max_batch=0)


def test_memory_is_handed_back_after_every_batch_even_a_failed_one(monkeypatch):
    released = threading.Semaphore(0)
    monkeypatch.setattr("app.batcher.release_free_memory", released.release)
    model = FakeModel(fail=True)
    batcher = MicroBatcher(model, decode, wait_ms=1)
    with pytest.raises(RuntimeError):
        batcher.submit("a", 2, 8).result()
    assert released.acquire(timeout=5)
    model.fail = False
    assert batcher.submit("ab", 2, 8).result().answer == "ba"
    assert released.acquire(timeout=5)


def test_release_free_memory_reaches_the_allocator_on_glibc():
    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")
