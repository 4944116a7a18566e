"""Reading question/answer training files, with errors that name the offending line numbers.

Accepted JSONL records, one per line:
  {"question": ..., "answer": ...}
  {"prompt": ..., "completion": ...}
  {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}
For chat records system messages are ignored and the last user message followed by an assistant
message is used. Blank lines are skipped.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataError", "Example", "MAX_FILE_BYTES", "MIN_TRAIN_EXAMPLES", "data_sha256", "load_eval_file",
           "load_training_file"]

MAX_FILE_BYTES = 20 * 1024 * 1024
MIN_TRAIN_EXAMPLES = 20
_SHOWN_LINES = 10


class DataError(ValueError):
    """A data file cannot be used; the message names the file and the bad line numbers."""


@dataclass(frozen=True)
class Example:
    question: str
    answer: str


def _text_field(record: dict, key: str) -> str:
    value = record.get(key)
    if value is None:
        raise ValueError(f"missing {key!r}")
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"empty {key!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{key!r} is not valid Unicode (a lone surrogate escape such as \\ud800)") from None
    return value.strip()


def _from_messages(messages) -> Example:
    if not isinstance(messages, list):
        raise ValueError(f"'messages' must be a list, got {type(messages).__name__}")
    turns = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError("each message must be an object with a 'role'")
        if message["role"] != "system":
            turns.append(message)
    for user, assistant in reversed(list(zip(turns, turns[1:]))):
        if user["role"] == "user" and assistant["role"] == "assistant":
            return Example(_text_field(user, "content"), _text_field(assistant, "content"))
    raise ValueError("'messages' has no user message followed by an assistant message")


def parse_record(record) -> Example:
    """One decoded JSON value -> Example; ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _from_messages(record["messages"])
    if "prompt" in record or "completion" in record:
        return Example(_text_field(record, "prompt"), _text_field(record, "completion"))
    return Example(_text_field(record, "question"), _text_field(record, "answer"))


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size / 2**20:.1f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: not valid UTF-8 text (line {line}, byte {err.start})") from None


def _summary(path: Path, problems: list[tuple[int, str]]) -> str:
    shown = "; ".join(f"line {n}: {why}" for n, why in problems[:_SHOWN_LINES])
    more = f"; and {len(problems) - _SHOWN_LINES} more" if len(problems) > _SHOWN_LINES else ""
    return f"{path}: {len(problems)} bad line(s): {shown}{more}"


def load_examples(path: str | Path, *, min_examples: int = 1) -> list[Example]:
    """Every record of `path`, or DataError listing all bad lines (the first few shown) and a count."""
    path = Path(path)
    examples, problems = [], []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            examples.append(parse_record(json.loads(line)))
        except json.JSONDecodeError as err:
            problems.append((number, f"malformed JSON ({err.msg})"))
        except ValueError as err:
            problems.append((number, str(err)))
    if problems:
        raise DataError(_summary(path, problems))
    if len(examples) < min_examples:
        raise DataError(f"{path}: {len(examples)} usable example(s); at least {min_examples} are needed")
    return examples


def load_training_file(path: str | Path) -> list[Example]:
    return load_examples(path, min_examples=MIN_TRAIN_EXAMPLES)


def load_eval_file(path: str | Path) -> list[Example]:
    return load_examples(path, min_examples=1)


def data_sha256(path: str | Path) -> str:
    """Recorded in the manifest so an expert can be traced to the exact file it learned from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
