"""Adding an expert from the server: check the request at once, then train in a child process and follow it.

The child (`app.train_job`) writes the registry itself, atomically, so a crash or a kill of the child
leaves the experts folder as it was and cannot take the server down with it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from app.config import AppConfig
from experts.data import DataError, load_training_file
from experts.registry import Registry, RegistryError

__all__ = ["Progress", "TrainRequest", "TrainingError", "TrainingRunner"]

_STDERR_TAIL = 1500


class TrainingError(ValueError):
    """The expert cannot be trained; the message is meant for the user."""


@dataclass(frozen=True)
class TrainRequest:
    name: str
    description: str
    data: Path
    shown_as: str  # the file name the user knows, used in messages instead of a temporary path
    rank: int | None = None
    epochs: int | None = None
    max_steps: int | None = None


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float


class TrainingRunner:
    """Runs at most one training child at a time for the experts folder of `config`."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.registry = Registry(config.experts_dir)
        self._busy = threading.Lock()

    def check(self, request: TrainRequest) -> int:
        """Name and data problems as TrainingError before any process starts; returns the example count."""
        try:
            self.registry.check_new(request.name)
        except RegistryError as err:
            raise TrainingError(str(err)) from None
        try:
            examples = load_training_file(request.data)
        except DataError as err:
            raise TrainingError(str(err).replace(str(request.data), request.shown_as)) from None
        for value, what in ((request.rank, "rank"), (request.epochs, "epochs"), (request.max_steps, "max steps")):
            if value is not None and not 1 <= value <= 10_000:
                raise TrainingError(f"{what} must be a whole number from 1 to 10000, got {value}")
        return len(examples)

    def command(self, request: TrainRequest) -> list[str]:
        config = self.config
        argv = [sys.executable, "-m", "app.train_job", request.name, "--data", str(request.data),
                "--experts-dir", str(config.experts_dir), "--description", request.description]
        options = {"--base-model": config.base_model, "--device": config.device, "--rank": request.rank,
                   "--epochs": request.epochs, "--max-steps": request.max_steps}
        return argv + [str(v) for flag, value in options.items() if value is not None for v in (flag, value)]

    def run(self, request: TrainRequest) -> Iterator[Progress | dict]:
        """Checks, trains and yields Progress per step, then the new expert's manifest; TrainingError on failure."""
        self.check(request)
        if not self._busy.acquire(blocking=False):
            raise TrainingError("another expert is being trained; wait for it to finish")
        try:
            yield from self._follow(request)
        finally:
            self._busy.release()

    def _follow(self, request: TrainRequest) -> Iterator[Progress | dict]:
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        if self.config.cache_dir is not None:
            env["EXPERTGATE_CACHE"] = str(self.config.cache_dir)
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
            child = subprocess.Popen(self.command(request), stdout=subprocess.PIPE, stderr=stderr, text=True,
                                     env=env, encoding="utf-8", errors="replace")
            try:
                result = yield from self._read(child)
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait()
            if result is not None and "manifest" in result:
                yield result["manifest"]
                return
            if result is not None:
                raise TrainingError(result["message"].replace(str(request.data), request.shown_as))
            stderr.seek(0)
            tail = stderr.read()[-_STDERR_TAIL:].strip()
            raise TrainingError(f"training stopped (exit code {child.returncode}) without a result: {tail}")

    @staticmethod
    def _read(child: subprocess.Popen) -> Iterator[Progress]:
        """Yields Progress lines; returns the final done/error record, or None if the child died first."""
        for line in child.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printed to stdout
            if not isinstance(record, dict):
                continue
            if record.get("event") == "progress":
                yield Progress(record["step"], record["total"], record["loss"])
            elif record.get("event") in ("done", "error"):
                return record
        return None
