"""The `expertgate` command line as a user runs it: JSON output, and one-line errors with exit code 2."""
import json
import subprocess
import sys

import pytest


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("expertgate: error:"), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_help_lists_subcommands():
    result = run("--help")
    assert result.returncode == 0
    assert "ask" in result.stdout


@pytest.mark.parametrize("question, fragment", [
    ("", "the question is empty"),
    ("   \n\t ", "the question is empty"),
    ("\x07\x1b\x7f", "the question is empty"),
    ("x" * 4001, "limit is 4000"),
])
def test_bad_questions(question, fragment):
    assert_one_line_error(run("ask", question), fragment)


def test_bad_base_models(tmp_path):
    assert_one_line_error(run("ask", "hi", "--base-model", str(tmp_path / "missing")), "does not exist")
    assert_one_line_error(run("ask", "hi", "--base-model", str(tmp_path)), "not a model")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    assert_one_line_error(run("ask", "hi", "--base-model", str(fake)), "cannot read GGUF")


def test_bad_numbers():
    assert_one_line_error(run("ask", "hi", "--max-new-tokens", "0"), "at least 1")
    assert_one_line_error(run("ask", "hi", "--max-new-tokens", "many"), "whole number")


def test_ask_json_on_tiny_model(tiny_model_dir, tmp_path):
    result = run("ask", "What is compound interest?", "--json", "--max-new-tokens", "5",
                 "--base-model", str(tiny_model_dir), "--experts-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["experts"] == [] and answer["fallback"] is True
    assert set(answer["timings_ms"]) >= {"load", "route", "generate"}
    assert 1 <= answer["new_tokens"] <= 5


@pytest.mark.real_model
def test_ask_json_on_real_model():
    result = run("ask", "What is compound interest?", "--json", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert {"answer", "experts", "fallback", "probabilities", "reason", "timings_ms", "new_tokens"} <= set(answer)
    assert "interest" in answer["answer"].lower()
