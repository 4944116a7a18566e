import json

import pytest

from experts.data import DataError, Example, MAX_FILE_BYTES, data_sha256, load_eval_file, load_training_file


def _pairs(n, start=0):
    return [{"question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(start, start + n)]


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_three_formats_and_blank_lines(tmp_path):
    records = _pairs(18) + [
        {"prompt": "P?", "completion": " C. "},
        {"messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": "old?"},
                      {"role": "assistant", "content": "old."}, {"role": "user", "content": "U?"},
                      {"role": "assistant", "content": "A."}]},
        "   ",
    ]
    examples = load_training_file(_write(tmp_path / "d.jsonl", records))
    assert len(examples) == 20
    assert examples[0] == Example("Question 0?", "Answer 0.")
    assert examples[18] == Example("P?", "C.")
    assert examples[19] == Example("U?", "A.")


@pytest.mark.parametrize("bad, why", [
    ("{not json", "malformed JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ({"question": "Q?"}, "missing 'answer'"),
    ({"question": "  ", "answer": "A."}, "empty 'question'"),
    ({"question": "Q?", "answer": 42}, "'answer' must be text, got int"),
    ({"question": "Q?", "answer": ["a"]}, "'answer' must be text, got list"),
    ({"prompt": "P?"}, "missing 'completion'"),
    ({"messages": "hi"}, "'messages' must be a list"),
    ({"messages": [{"role": "user", "content": "Q?"}]}, "no user message followed by an assistant"),
    ({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": 3}]}, "'content' must be text"),
])
def test_bad_line_is_named(tmp_path, bad, why):
    path = _write(tmp_path / "d.jsonl", _pairs(25)[:6] + [bad] + _pairs(25)[6:])
    with pytest.raises(DataError) as err:
        load_training_file(path)
    assert "line 7:" in str(err.value) and why in str(err.value)
    assert "1 bad line" in str(err.value)


def test_many_bad_lines_are_counted_and_the_first_ten_shown(tmp_path):
    records = []
    for i in range(30):
        records += [_pairs(1, i)[0], "oops"]
    with pytest.raises(DataError) as err:
        load_training_file(_write(tmp_path / "d.jsonl", records))
    message = str(err.value)
    assert "30 bad line(s)" in message and "and 20 more" in message
    assert "line 2:" in message and "line 20:" in message and "line 22:" not in message


def test_too_few_examples(tmp_path):
    with pytest.raises(DataError, match="19 usable example.*at least 20"):
        load_training_file(_write(tmp_path / "d.jsonl", _pairs(19)))
    assert len(load_eval_file(_write(tmp_path / "e.jsonl", _pairs(3)))) == 3


def test_invalid_utf8_missing_and_oversized(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "ok?", "answer": "ok."}\n{"question": "\xff\xfe", "answer": "x"}\n')
    with pytest.raises(DataError, match=r"not valid UTF-8 text \(line 2"):
        load_training_file(path)
    with pytest.raises(DataError, match="no such file"):
        load_training_file(tmp_path / "missing.jsonl")
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(DataError, match="over the 20 MB limit"):
        load_training_file(big)


def test_data_hash_is_of_the_bytes(tmp_path):
    a = _write(tmp_path / "a.jsonl", _pairs(2))
    b = _write(tmp_path / "b.jsonl", _pairs(2))
    assert data_sha256(a) == data_sha256(b) and len(data_sha256(a)) == 64
    assert data_sha256(a) != data_sha256(_write(tmp_path / "c.jsonl", _pairs(3)))
