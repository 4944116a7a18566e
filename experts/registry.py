"""The experts folder: one subfolder per expert plus `registry.json`, the ordered list of registered experts.

Every change is all-or-nothing: an expert is written into a staging folder inside the experts folder
and moved in with one `os.replace`, and `registry.json` is rewritten through a temporary file and
`os.replace`, so a crash leaves either the old state or the new one. A staging folder is named after
the process and machine writing it, so one left by a killed process is never registered and
`remove_orphans` can delete it without touching another process's write in progress, on this machine or
on another one sharing the folder. Adds and removes hold an exclusive `flock` on `.registry.lock`, so two
processes (a server and a CLI training run) never lose each other's update of `registry.json`.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from experts.adapters import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, read_manifest

__all__ = ["ExpertInfo", "QUESTIONS_FILE", "REGISTRY_FILE", "RESERVED_NAMES", "Registry", "RegistryError",
           "check_name"]

REGISTRY_FILE = "registry.json"
QUESTIONS_FILE = "questions.jsonl"
RESERVED_NAMES = frozenset({"general", "base", "__base__", "gate"})  # the app saves its gate in <root>/gate
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_STAGING_PREFIX = ".staging-"
LOCK_FILE = ".registry.lock"


def _make_readable(path: Path) -> None:
    """mkstemp/mkdtemp create owner-only (0600/0700) entries; registered experts are readable by all, like a checkout."""
    for entry in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(entry, 0o755 if entry.is_dir() else 0o644)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


class RegistryError(ValueError):
    """A registry change was refused; nothing was modified."""


@dataclass(frozen=True)
class ExpertInfo:
    name: str
    description: str
    rank: int | None
    size_bytes: int
    examples: int | None
    eval_perplexity: float | None
    base_perplexity: float | None
    folder: Path


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"invalid expert name {name!r}: use 1-40 lowercase letters, digits, '-' or '_', "
                            "starting with a letter")
    if name in RESERVED_NAMES:
        raise RegistryError(f"the name {name!r} is reserved; choose another")
    return name


class Registry:
    """The registered experts in `root`, in registration order."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _entries(self) -> list[dict]:
        path = self.root / REGISTRY_FILE
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"{path} is not valid JSON ({err})") from None
        entries = data.get("experts") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("folder"), str)
                for e in entries):
            raise RegistryError(f"{path} must hold {{\"version\": 1, \"experts\": [{{\"name\", \"folder\"}}, ...]}}")
        outside = [e["folder"] for e in entries if not _NAME.fullmatch(e["folder"])]
        if outside:
            raise RegistryError(f"{path}: expert folders must be plain names inside {self.root}, got {outside}")
        return entries

    def _write(self, entries: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".registry-", suffix=".json", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"version": 1, "experts": entries}, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            _make_readable(Path(temp))
            os.replace(temp, self.root / REGISTRY_FILE)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises read-modify-write of the registry across processes; the lock dies with its holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def names(self) -> list[str]:
        return [e["name"] for e in self._entries()]

    def folder(self, name: str) -> Path:
        for entry in self._entries():
            if entry["name"] == name:
                return self.root / entry["folder"]
        raise RegistryError(f"no expert named {name!r}; registered: {', '.join(self.names()) or 'none'}")

    def info(self, name: str) -> ExpertInfo:
        folder = self.folder(name)
        manifest = read_manifest(folder)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        return ExpertInfo(name=name, description=manifest.get("description", ""), rank=manifest.get("rank"),
                          size_bytes=size, examples=manifest.get("examples"),
                          eval_perplexity=manifest.get("eval_perplexity"),
                          base_perplexity=manifest.get("base_perplexity"), folder=folder)

    def list(self) -> list[ExpertInfo]:
        return [self.info(name) for name in self.names()]

    def questions(self, name: str) -> list[str]:
        """The expert's training questions: the gate is refit from them."""
        path = self.folder(name) / QUESTIONS_FILE
        if not path.is_file():
            return []
        return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def staging_folder(self) -> Path:
        """An empty folder on the same filesystem as the experts, so `add` can move it in atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}@{socket.gethostname()}-", dir=self.root))

    def remove_orphans(self) -> list[Path]:
        """Deletes staging folders whose writer, a process on this machine, has died; returns them."""
        removed = []
        for path in sorted(self.root.glob(f"{_STAGING_PREFIX}*")):
            pid, _, host = path.name[len(_STAGING_PREFIX):].rpartition("-")[0].partition("@")
            if pid.isdigit() and host == socket.gethostname() and not _process_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    def check_new(self, name: str) -> None:
        """Refuses a bad or taken name before any expensive work starts."""
        check_name(name)
        if name in self.names():
            raise RegistryError(f"an expert named {name!r} is already registered; remove it first")
        if (self.root / name).exists():
            raise RegistryError(f"{self.root / name} already exists but is not registered; move it away first")

    def add(self, name: str, staged: str | Path) -> ExpertInfo:
        """Moves the fully written `staged` folder to `<root>/<name>` and registers it last."""
        self.check_new(name)
        staged = Path(staged)
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE) if not (staged / f).is_file()]
        if missing:
            raise RegistryError(f"staged expert {staged} lacks {', '.join(missing)}")
        with self._locked():
            self.check_new(name)  # again: another process may have taken the name since
            entries = self._entries()
            target = self.root / name
            _make_readable(staged)
            os.replace(staged, target)
            try:
                self._write(entries + [{"name": name, "folder": name}])
            except BaseException:
                os.replace(target, staged)
                raise
        return self.info(name)

    def remove(self, name: str) -> None:
        """Moves the folder aside, unregisters, then deletes it: a failure before the delete restores it."""
        self.folder(name)  # an unknown name is refused before the lock file is created
        with self._locked():
            folder = self.folder(name)
            entries = [e for e in self._entries() if e["name"] != name]
            trash = self.staging_folder() / name
            os.replace(folder, trash)
            try:
                self._write(entries)
            except BaseException:
                os.replace(trash, folder)
                shutil.rmtree(trash.parent)
                raise
        shutil.rmtree(trash.parent)
