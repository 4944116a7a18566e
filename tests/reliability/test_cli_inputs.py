"""Bad command lines: exit code 2, one line on stderr, no traceback, nothing loaded, and the experts folder untouched.

Most rows call `app.cli.main(argv)` in this process; a few run `python -m app.cli` to show the same holds for a real
process, including argv bytes that are not UTF-8.
"""
import subprocess

import pytest

from app.cli import main
from tests.reliability.bad_inputs import BAD_FILES, BAD_NAMES, NEW_NAME, write_bad_file, write_good_file
from tests.reliability.snapshot import unchanged
from tests.test_cli import assert_one_line_error, run

ROWS = [
    pytest.param(["ask", ""], "the question is empty", id="ask-empty"),
    pytest.param(["ask", " \t\n  "], "the question is empty", id="ask-whitespace"),
    pytest.param(["ask", "\x00\x07\x1b\x7f"], "the question is empty", id="ask-control-chars"),
    pytest.param(["ask", "\udcff\udcfe"], "the question is empty", id="ask-undecodable-argv"),
    pytest.param(["ask", "x" * 100_000], "the limit is 4000", id="ask-huge"),
    pytest.param(["ask", "Hi?", "--top-k", "0"], "must be at least 1, got 0", id="ask-top-k-0"),
    pytest.param(["ask", "Hi?", "--top-k", "-2"], "must be at least 1, got -2", id="ask-top-k-negative"),
    pytest.param(["ask", "Hi?", "--top-k", "2.5"], "expected a whole number, got '2.5'", id="ask-top-k-fraction"),
    pytest.param(["ask", "Hi?", "--top-k", "9"], "must be at most 4, got 9", id="ask-top-k-9"),
    pytest.param(["ask", "Hi?", "--max-new-tokens", "0"], "must be at least 1", id="ask-tokens-0"),
    pytest.param(["ask", "Hi?", "--max-new-tokens", "-5"], "must be at least 1", id="ask-tokens-negative"),
    pytest.param(["ask", "Hi?", "--max-new-tokens", "100000"], "must be at most 4096", id="ask-tokens-huge"),
    pytest.param(["ask", "Hi?", "--max-new-tokens", "1e3"], "expected a whole number", id="ask-tokens-float"),
    pytest.param(["route", "   "], "the question is empty", id="route-whitespace"),
    pytest.param(["route", "Hi?", "--top-k", "99"], "top_k must be a whole number from 1 to 4, got 99",
                 id="route-top-k-99"),
    pytest.param(["route"], "give either a QUESTION or --file", id="route-nothing"),
    pytest.param(["experts", "remove", "nope"], "no expert named 'nope'", id="remove-unknown"),
    pytest.param(["experts", "remove", "../medical"], "no expert named '../medical'", id="remove-dot-dot"),
    pytest.param(["serve", "--port", "0"], "must be at least 1", id="serve-port-0"),
    pytest.param(["serve", "--port", "70000"], "port must be from 1 to 65535", id="serve-port-huge"),
    pytest.param(["serve", "--host", "0.0.0.0"], "give --auth USER:PASS", id="serve-open-without-auth"),
    pytest.param(["serve", "--auth", "admin"], "--auth must look like USER:PASS", id="serve-auth-without-password"),
    pytest.param(["serve", "--top-k", "5"], "must be at most 4", id="serve-top-k-5"),
]


@pytest.fixture(autouse=True)
def nothing_loads(monkeypatch):
    """Bad input must be refused before any model, gate or server starts; getting that far fails the test."""
    def reached(*args, **kwargs):
        raise AssertionError("the bad input got as far as loading a model or starting a server")
    for target in ("experts.base_model.locate", "app.route_commands._gate", "app.server.launch"):
        monkeypatch.setattr(target, reached)


def refused(argv, capsys, fragment) -> None:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    assert_one_line_error(subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err), fragment)


@pytest.mark.parametrize("argv, fragment", ROWS)
def test_bad_command_line(capsys, experts_dir, argv, fragment):
    with unchanged(experts_dir):
        refused([*argv, "--experts-dir", str(experts_dir)], capsys, fragment)


@pytest.mark.parametrize("name, fragment", BAD_NAMES)
def test_bad_expert_name(capsys, experts_dir, tmp_path, name, fragment):
    with unchanged(experts_dir):
        refused(["experts", "train", name, "--data", str(write_good_file(tmp_path)), "--experts-dir", str(experts_dir)],
                capsys, fragment)


@pytest.mark.parametrize("kind, fragment", BAD_FILES)
def test_bad_training_file(capsys, experts_dir, tmp_path, kind, fragment):
    data = write_bad_file(kind, tmp_path)
    with unchanged(experts_dir):
        refused(["experts", "train", NEW_NAME, "--data", str(data), "--experts-dir", str(experts_dir)], capsys,
                fragment)


@pytest.mark.parametrize("content, fragment", [
    pytest.param(b"What is a tort?\n\xff\xfe\n", "cannot read questions from", id="invalid-utf8"),
    pytest.param(b"What is a tort?\n\x07\x1b\n", "1 bad questions (line 2: the question is empty)", id="control-line"),
    pytest.param(b"\n  \n", "holds no questions", id="no-questions"),
])
def test_bad_question_file(capsys, experts_dir, tmp_path, content, fragment):
    questions = tmp_path / "questions.txt"
    questions.write_bytes(content)
    with unchanged(experts_dir):
        refused(["route", "--file", str(questions), "--experts-dir", str(experts_dir)], capsys, fragment)


@pytest.mark.parametrize("argv, fragment", [
    pytest.param(["ask", b"\xff\xfe\x07"], "the question is empty", id="ask-invalid-utf8-argv"),
    pytest.param(["experts", "train", "../evil", "--data", "{good}"], "invalid expert name", id="train-dot-dot"),
    pytest.param(["experts", "train", NEW_NAME, "--data", "{invalid-utf8}"], "not valid UTF-8 text",
                 id="train-bad-bytes"),
])
def test_bad_command_line_in_a_real_process(experts_dir, tmp_path, argv, fragment):
    files = {"{good}": write_good_file(tmp_path), "{invalid-utf8}": write_bad_file("invalid-utf8", tmp_path)}
    argv = [str(files.get(a, a)) if isinstance(a, str) else a for a in argv]
    with unchanged(experts_dir):
        assert_one_line_error(run(*argv, "--experts-dir", str(experts_dir), timeout=120), fragment)
