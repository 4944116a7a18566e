"""Micro-batching: concurrent requests wait a few milliseconds, then share one batched generate call.

One worker thread owns generation. A request joins the queue; the worker takes the oldest one plus every
waiting request with the same (top_k, max_new_tokens), up to `max_batch` rows, and runs them as one batch.
Each request then receives only its own row: the text so far after every decode step, then its Answer.
Gradio's own `batch=True` cannot stream, which is why this exists.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from app.memory import release_free_memory
from app.service import Answer
from experts.generation import TokenCallback

__all__ = ["BatchRunner", "BusyError", "MicroBatcher", "Ticket"]

BatchRunner = Callable[[list[str], int, int, TokenCallback], list[Answer]]
"""(questions, top_k, max_new_tokens, callback) -> one Answer per question, e.g. ExpertGate.ask."""


class BusyError(RuntimeError):
    """Too many requests are already waiting; the caller should try again shortly."""


@dataclass
class Ticket:
    """One request's place in the queue; iterate it for the streamed text, then the Answer."""

    question: str
    top_k: int
    max_new_tokens: int
    queued_at: float = field(default_factory=time.perf_counter)
    batch_size: int = 0  # rows in the batch that answered it, set when the batch starts
    events: queue.Queue = field(default_factory=queue.Queue)  # str (text so far) | Answer | Exception

    def __iter__(self) -> Iterator[str | Answer]:
        """Text so far (only the newest when several steps piled up: each one holds all before it), then the Answer."""
        pending = None
        while True:
            event, pending = (pending if pending is not None else self.events.get()), None
            while isinstance(event, str):
                try:
                    newer = self.events.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(newer, str):
                    pending = newer
                    break
                event = newer
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Answer):
                return

    def result(self) -> Answer:
        """Waits for the whole answer, skipping the streamed text."""
        for event in self:
            if isinstance(event, Answer):
                return event
        raise RuntimeError("the batch ended without an answer")


class MicroBatcher:
    """Groups concurrent requests into batches of at most `max_batch` rows for one `run` call."""

    def __init__(self, run: BatchRunner, decode: Callable[[list[int]], str], *, max_batch: int = 16,
                 wait_ms: float = 10.0, max_waiting: int = 64) -> None:
        if max_batch < 1 or max_waiting < 1:
            raise ValueError(f"max_batch and max_waiting must be at least 1, got {max_batch}, {max_waiting}")
        self.run = run
        self.decode = decode
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.max_waiting = max_waiting
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self._waiting: deque[Ticket] = deque()
        self._ready = threading.Condition()
        self._worker = threading.Thread(target=self._serve, name="micro-batcher", daemon=True)
        self._worker.start()

    def submit(self, question: str, top_k: int, max_new_tokens: int) -> Ticket:
        """Queues a checked question; BusyError when `max_waiting` requests already wait."""
        ticket = Ticket(question, top_k, max_new_tokens)
        with self._ready:
            if len(self._waiting) >= self.max_waiting:
                raise BusyError(f"the server is busy ({len(self._waiting)} questions waiting); try again shortly")
            self._waiting.append(ticket)
            self._ready.notify()
        return ticket

    def waiting(self) -> int:
        with self._ready:
            return len(self._waiting)

    def _next_batch(self) -> list[Ticket]:
        """Blocks for a request, lets others join for up to `wait_s`, then takes the head's group."""
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            deadline = self._waiting[0].queued_at + self.wait_s
            while len(self._waiting) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                self._ready.wait(left)
            key = (self._waiting[0].top_k, self._waiting[0].max_new_tokens)
            batch = [t for t in self._waiting if (t.top_k, t.max_new_tokens) == key][: self.max_batch]
            for ticket in batch:
                self._waiting.remove(ticket)
            return batch

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            self.batch_sizes.append(len(batch))
            self._run_batch(batch)
            release_free_memory()

    def _run_batch(self, batch: list[Ticket]) -> None:
        """Runs one batch; any error goes to every request of the batch, never kills the worker."""
        started = time.perf_counter()
        for ticket in batch:
            ticket.batch_size = len(batch)
        tokens: list[list[int]] = [[] for _ in batch]
        finished = [False] * len(batch)

        def stream(step: int, row_tokens: list[int], done: list[bool]) -> None:
            for b, ticket in enumerate(batch):
                if finished[b]:
                    continue
                if not done[b]:
                    tokens[b].append(row_tokens[b])
                    ticket.events.put(self.decode(tokens[b]))
                finished[b] = done[b]

        try:
            answers = self.run([t.question for t in batch], batch[0].top_k, batch[0].max_new_tokens, stream)
        except Exception as err:  # noqa: BLE001 - handed to each waiting request, which re-raises it
            for ticket in batch:
                ticket.events.put(err)
            return
        for ticket, answer in zip(batch, answers):
            answer.timings_ms["queue"] = round((started - ticket.queued_at) * 1000, 1)
            ticket.events.put(answer)
