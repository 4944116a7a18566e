import pytest

from router import Gate, evaluate, load_labelled
from tests.router.fakes import EXAMPLES, GENERAL, HashingEncoder


def test_evaluate_counts_fallback_as_general():
    gate = Gate.fit(EXAMPLES, GENERAL, HashingEncoder())
    questions = ["Can my landlord sue me in court over the lease contract?", "How do I invest my savings in bonds?",
                 "Tell me a funny joke about a cat.", "Write a short poem about autumn."]
    domains = ["legal", "finance", "general", "medical"]
    r = evaluate(gate, questions, domains)
    assert r["n"] == 4
    assert r["confusion"]["legal"]["legal"] == 1 and r["confusion"]["general"]["general"] == 1
    assert r["confusion"]["medical"]["general"] == 1
    assert r["accuracy"] == 0.75 and r["domain_accuracy"] == pytest.approx(2 / 3)
    assert r["recall"] == {"finance": 1.0, "general": 1.0, "legal": 1.0, "medical": 0.0}
    assert r["fallback_rate"] == 0.5
    assert 0.0 <= r["ece"] <= 1.0 and 0.0 <= r["macro_f1"] <= 1.0


def test_evaluate_rejects_mismatched_lengths():
    gate = Gate.fit(EXAMPLES, GENERAL, HashingEncoder())
    with pytest.raises(ValueError, match="2 questions but 1 domains"):
        evaluate(gate, ["a", "b"], ["legal"])


def test_load_labelled_jsonl_and_csv(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question": "Q1?", "domain": "legal"}\n\n'
                                      '{"question": "Q2?", "domain": "general"}\n')
    assert load_labelled(tmp_path / "a.jsonl") == (["Q1?", "Q2?"], ["legal", "general"])
    (tmp_path / "a.csv").write_text('question,domain\n"Is it, really?",finance\n')
    assert load_labelled(tmp_path / "a.csv") == (["Is it, really?"], ["finance"])


@pytest.mark.parametrize("name, text, message", [
    ("bad.jsonl", '{"question": "ok", "domain": "legal"}\n{"question": oops}\n', r"bad.jsonl:2: not valid JSON"),
    ("bad.jsonl", '{"question": "ok", "domain": "legal"}\n{"question": "no domain"}\n', r"bad.jsonl:2: .*'domain'"),
    ("bad.jsonl", '["a list"]\n', r"bad.jsonl:1: expected a JSON object"),
    ("bad.csv", "question,label\nq,legal\n", r"bad.csv:1: header lacks column\(s\) domain"),
    ("bad.csv", "question,domain\nq,legal\n,legal\n", r"bad.csv:3: missing or empty 'question'"),
    ("bad.txt", "", r"expected a .jsonl or .csv file"),
])
def test_load_labelled_errors_name_the_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        load_labelled(tmp_path / name)
