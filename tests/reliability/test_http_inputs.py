"""Bad requests to the running app: the caller gets an error naming the fault, the experts folder is untouched, and
the server still answers a good question afterwards."""
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tests.reliability.bad_inputs import (BAD_FILES, BAD_NAMES, GOOD_JSONL, NEW_NAME, write_bad_file,
                                          write_good_file)
from tests.reliability.snapshot import unchanged
from tests.reliability.web_client import assert_serves, page_error, raw_call_error

Q = "Is a verbal contract binding?"
TOP_K_RANGE = "top_k must be a whole number from 1 to 4"
TOKENS_RANGE = "max_new_tokens must be a whole number from 1 to 4096"

ENDPOINT_ROWS = [
    pytest.param("/ask", ("", 2, 4), "the question is empty", id="ask-empty"),
    pytest.param("/ask", (" \n\t  ", 2, 4), "the question is empty", id="ask-whitespace"),
    pytest.param("/ask", ("\x00\x07\x1b\x7f\u200b", 2, 4), "the question is empty", id="ask-control-chars"),
    pytest.param("/ask", ("x" * 100_000, 2, 4), "100000 characters; the limit is 4000", id="ask-huge"),
    pytest.param("/ask", (None, 2, 4), "the question must be text, got NoneType", id="ask-null"),
    pytest.param("/ask", (123, 2, 4), "the question must be text, got int", id="ask-number"),
    pytest.param("/ask", (["a", "b"], 2, 4), "the question must be text, got list", id="ask-list"),
    pytest.param("/ask", (Q, 0, 4), f"{TOP_K_RANGE}, got 0", id="ask-top-k-0"),
    pytest.param("/ask", (Q, -1, 4), f"{TOP_K_RANGE}, got -1", id="ask-top-k-negative"),
    pytest.param("/ask", (Q, 9, 4), f"{TOP_K_RANGE}, got 9", id="ask-top-k-9"),
    pytest.param("/ask", (Q, 2.5, 4), f"{TOP_K_RANGE}, got 2.5", id="ask-top-k-fraction"),
    pytest.param("/ask", (Q, "two", 4), f"{TOP_K_RANGE}, got 'two'", id="ask-top-k-text"),
    pytest.param("/ask", (Q, True, 4), f"{TOP_K_RANGE}, got True", id="ask-top-k-bool"),
    pytest.param("/ask", (Q, None, 4), f"{TOP_K_RANGE}, got None", id="ask-top-k-null"),
    pytest.param("/ask", (Q, 2, 0), f"{TOKENS_RANGE}, got 0", id="ask-tokens-0"),
    pytest.param("/ask", (Q, 2, -5), f"{TOKENS_RANGE}, got -5", id="ask-tokens-negative"),
    pytest.param("/ask", (Q, 2, 100_000), f"{TOKENS_RANGE}, got 100000", id="ask-tokens-huge"),
    pytest.param("/ask", (Q, 2, 10**30), f"{TOKENS_RANGE}, got {10**30}", id="ask-tokens-bignum"),
    pytest.param("/ask", (Q, 2, 2.5), f"{TOKENS_RANGE}, got 2.5", id="ask-tokens-fraction"),
    pytest.param("/route", ("", 2), "the question is empty", id="route-empty"),
    pytest.param("/route", (None, 2), "the question must be text", id="route-null"),
    pytest.param("/route", (Q, 0), f"{TOP_K_RANGE}, got 0", id="route-top-k-0"),
    pytest.param("/route", (Q, 7), f"{TOP_K_RANGE}, got 7", id="route-top-k-7"),
    pytest.param("/route", (Q, 1.5), f"{TOP_K_RANGE}, got 1.5", id="route-top-k-fraction"),
]

RAW_ROWS = [  # request bodies gradio_client cannot produce
    pytest.param("ask", b'{"data": ["\\ud800", 2, 4]}', "the question is empty", id="lone-surrogate"),
    pytest.param("ask", b'{"data": ["\\udfff\\ud800\\u0007", 2, 4]}', "the question is empty", id="reversed-pair"),
    pytest.param("ask", b'{"data": ["Why?", Infinity, 4]}', f"{TOP_K_RANGE}, got inf", id="top-k-infinity"),
    pytest.param("ask", b'{"data": ["Why?", 2, NaN]}', f"{TOKENS_RANGE}, got nan", id="tokens-nan"),
    pytest.param("route", b'{"data": ["Why?", -Infinity]}', f"{TOP_K_RANGE}, got -inf", id="route-top-k-infinity"),
    pytest.param("ask", b'{"data": ["\xff\xfe", 2, 4]}', "HTTP 400", id="invalid-utf8-body"),
    pytest.param("ask", b'{"data": "Why?"}', "Input should be a valid list", id="data-not-a-list"),
    pytest.param("ask", b"Why?", "JSON decode error", id="body-not-json"),
]


@pytest.fixture
def client(server):
    """The server's client; after each test the server must still answer a good question."""
    client, _ = server
    yield client
    assert_serves(client)


@pytest.mark.parametrize("api_name, args, fragment", ENDPOINT_ROWS)
def test_bad_request_is_refused(client, experts_dir, api_name, args, fragment):
    with unchanged(experts_dir), pytest.raises(AppError) as err:
        client.predict(*args, api_name=api_name)
    assert fragment in str(err.value)


@pytest.mark.parametrize("api_name, body, fragment", RAW_ROWS)
def test_bad_raw_body_is_refused(server, client, experts_dir, api_name, body, fragment):
    with unchanged(experts_dir):
        error = raw_call_error(server[1], api_name, body)
    assert fragment in error


def train_error(client, name=NEW_NAME, upload=None, pasted="", rank=8, epochs=2, max_steps=0) -> str:
    file = handle_file(str(upload)) if upload else None
    return page_error(client, "on_train", name, "", file, pasted, rank, epochs, max_steps)


@pytest.mark.parametrize("name, fragment", [p for p in BAD_NAMES if p.values[0] == p.values[0].strip()])
def test_bad_expert_name_is_refused(client, experts_dir, tmp_path, name, fragment):
    """Names the page strips of surrounding space (" abc\\n" becomes "abc") are not bad names here."""
    good = write_good_file(tmp_path)
    with unchanged(experts_dir):
        assert fragment in train_error(client, name, upload=good)


@pytest.mark.parametrize("kind, fragment", BAD_FILES)
def test_bad_upload_is_refused(client, experts_dir, tmp_path, kind, fragment):
    """The message names the file as the user knows it, never the server's temporary path."""
    upload = write_bad_file(kind, tmp_path)
    with unchanged(experts_dir):
        error = train_error(client, upload=upload)
    assert error.startswith(f"{kind}.jsonl: ") and fragment in error


@pytest.mark.parametrize("fields, fragment", [
    pytest.param({}, "upload a JSONL file or paste examples", id="no-data"),
    pytest.param({"pasted": " \n \n"}, "upload a JSONL file or paste examples", id="pasted-whitespace"),
    pytest.param({"pasted": "{not json\n"}, "pasted examples: 1 bad line(s): line 1: malformed JSON",
                 id="pasted-bad-json"),
    pytest.param({"pasted": GOOD_JSONL, "upload": True}, "give either a file or pasted examples, not both",
                 id="file-and-pasted"),
    pytest.param({"pasted": GOOD_JSONL, "rank": 0}, "less than minimum value 1", id="rank-0"),
    pytest.param({"pasted": GOOD_JSONL, "rank": -3}, "less than minimum value 1", id="rank-negative"),
    pytest.param({"pasted": GOOD_JSONL, "rank": 20_000}, "rank must be a whole number from 1 to 10000, got 20000",
                 id="rank-huge"),
    pytest.param({"pasted": GOOD_JSONL, "epochs": 10_001}, "epochs must be a whole number from 1 to 10000",
                 id="epochs-huge"),
    pytest.param({"pasted": GOOD_JSONL, "max_steps": -1}, "less than minimum value 0", id="max-steps-negative"),
])
def test_bad_training_form_is_refused(client, experts_dir, tmp_path, fields, fragment):
    fields = {**fields, "upload": write_good_file(tmp_path) if fields.get("upload") else None}
    with unchanged(experts_dir):
        assert fragment in train_error(client, **fields)


@pytest.mark.parametrize("name, fragment", [
    pytest.param("nope", "Value: nope is not in the list of choices", id="unknown"),
    pytest.param("../medical", "Value: ../medical is not in the list of choices", id="dot-dot"),
    pytest.param(None, "no expert named None", id="none-chosen"),
])
def test_bad_removal_is_refused(client, experts_dir, name, fragment):
    with unchanged(experts_dir):
        assert fragment in page_error(client, "on_confirm", name)
