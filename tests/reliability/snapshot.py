"""What a refused input must leave alone: every file under the experts folder, by path and the sha256 of its bytes."""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STAGING_PREFIX = ".staging-"  # how the registry names a half-written expert


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of the bytes ("dir" for a folder); equal digests mean nothing changed."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in sorted(root.rglob("*"))}


def without_staging(digest: dict[str, str]) -> dict[str, str]:
    return {path: value for path, value in digest.items() if not path.startswith(STAGING_PREFIX)}


def describe_change(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    rewritten = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return f"the experts folder changed: added {added}, removed {removed}, rewritten {rewritten}"


@contextmanager
def unchanged(root: Path) -> Iterator[None]:
    """Fails if anything under `root` is added, removed or rewritten inside the block."""
    before = tree_digest(root)
    yield
    after = tree_digest(root)
    assert after == before, describe_change(before, after)
