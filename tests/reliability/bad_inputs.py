"""The bad expert names and bad training files that every way of adding an expert must refuse, with the words it
refuses them in. Shared by the CLI, Python and HTTP suites so the three are held to the same table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from experts.data import MAX_FILE_BYTES

GOOD_PAIRS = [{"question": f"What is test case {i}?", "answer": f"It is the answer to case {i}."} for i in range(24)]
NEW_NAME = "astronomy"  # free in every experts folder of this suite

BAD_NAMES = [
    pytest.param("../evil", "invalid expert name", id="dot-dot"),
    pytest.param("a/b", "invalid expert name", id="slash"),
    pytest.param("a\\b", "invalid expert name", id="backslash"),
    pytest.param("/tmp/evil", "invalid expert name", id="absolute-path"),
    pytest.param("", "invalid expert name", id="empty"),
    pytest.param("Medical", "invalid expert name", id="uppercase"),
    pytest.param("médical", "invalid expert name", id="unicode"),
    pytest.param("a" * 41, "use 1-40 lowercase letters", id="41-chars"),
    pytest.param("abc\n", "invalid expert name", id="trailing-newline"),
    pytest.param("general", "is reserved", id="reserved-general"),
    pytest.param("base", "is reserved", id="reserved-base"),
    pytest.param("__base__", "invalid expert name", id="reserved-__base__"),
    pytest.param("gate", "is reserved", id="reserved-gate"),
    pytest.param("medical", "is already registered", id="duplicate"),
]


def _jsonl(*records) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode("utf-8")


_CONTENT = {
    "bad-json": _jsonl(*GOOD_PAIRS, "{not json"),
    "missing-answer": _jsonl(*GOOD_PAIRS, {"question": "Q?"}),
    "empty-answer": _jsonl(*GOOD_PAIRS, {"question": "Q?", "answer": "   "}),
    "wrong-type": _jsonl(*GOOD_PAIRS, {"question": 7, "answer": "A."}),
    "not-an-object": _jsonl(*GOOD_PAIRS, ["Q?", "A."]),
    "chat-without-answer": _jsonl(*GOOD_PAIRS, {"messages": [{"role": "user", "content": "Q?"}]}),
    "lone-surrogate": _jsonl(*GOOD_PAIRS, '{"question": "Q \\ud800?", "answer": "A."}'),
    "invalid-utf8": _jsonl(*GOOD_PAIRS) + b'{"question": "Q \xff\xfe?", "answer": "A."}\n',
    "zero-examples": b"",
    "blank-lines-only": b"\n   \n\t\n",
    "too-few": _jsonl(*GOOD_PAIRS[:19]),
}

BAD_FILES = [
    pytest.param("bad-json", "line 25: malformed JSON", id="bad-json"),
    pytest.param("missing-answer", "line 25: missing 'answer'", id="missing-field"),
    pytest.param("empty-answer", "line 25: empty 'answer'", id="empty-answer"),
    pytest.param("wrong-type", "line 25: 'question' must be text, got int", id="wrong-type"),
    pytest.param("not-an-object", "line 25: expected a JSON object, got list", id="not-an-object"),
    pytest.param("chat-without-answer", "no user message followed by an assistant", id="chat-without-answer"),
    pytest.param("lone-surrogate", "line 25: 'question' is not valid Unicode", id="lone-surrogate"),
    pytest.param("invalid-utf8", "not valid UTF-8 text (line 25", id="invalid-utf8"),
    pytest.param("zero-examples", "0 usable example(s); at least 20", id="zero-examples"),
    pytest.param("blank-lines-only", "0 usable example(s)", id="blank-lines-only"),
    pytest.param("too-few", "19 usable example(s); at least 20", id="too-few"),
    pytest.param("over-size", f"over the {MAX_FILE_BYTES // 2**20} MB limit", id="over-size-limit"),
]


def write_bad_file(kind: str, folder: Path) -> Path:
    """`folder/<kind>.jsonl`; the over-size one is sparse, so it costs no disk."""
    path = folder / f"{kind}.jsonl"
    if kind == "over-size":
        with open(path, "wb") as handle:
            handle.truncate(MAX_FILE_BYTES + 1)
    else:
        path.write_bytes(_CONTENT[kind])
    return path


GOOD_JSONL = _jsonl(*GOOD_PAIRS).decode("utf-8")


def write_good_file(folder: Path) -> Path:
    path = folder / "good.jsonl"
    path.write_text(GOOD_JSONL, encoding="utf-8")
    return path
