"""Talking to the running app as its users do: gradio_client for the named endpoints, the page's own calls for
the Experts tab, and raw HTTP for bodies gradio_client cannot send (lone surrogates, Infinity, invalid bytes)."""
from __future__ import annotations

import html
import json
import re

import httpx
from gradio_client import Client
from gradio_client.client import Endpoint
from gradio_client.exceptions import AppError

GOOD_QUESTION = ("What are the symptoms of anaemia?", "medical")


def assert_serves(client: Client) -> None:
    """The server still answers a good question with the right expert."""
    text, info = client.predict(GOOD_QUESTION[0], 2, 4, api_name="/ask")
    assert info["answer"] == text and info["experts"][0]["name"] == GOOD_QUESTION[1], info


def call_page_event(client: Client, fn_name: str, *args, timeout: float = 120) -> list[tuple]:
    """Runs one of the page's private events (Experts tab) and returns every update the client received.

    gradio_client refuses private events, yet the page calls them by index over the same HTTP queue; this
    marks the one event callable for this client only, so the request takes the page's path through the server.
    """
    dependencies = client.config["dependencies"]
    index, dependency = next((d.get("id", i), d) for i, d in enumerate(dependencies) if d.get("api_name") == fn_name)
    if not client.endpoints[index].is_valid:
        client.endpoints[index] = Endpoint(client, index, {**dependency, "api_visibility": "undocumented"},
                                           client.protocol)
    job = client.submit(*args, fn_index=index)
    job.result(timeout=timeout)
    return job.outputs()


def page_error(client: Client, fn_name: str, *args) -> str:
    """The error a page event shows: Gradio's own refusal of a bad field, else the red box among its outputs."""
    try:
        updates = call_page_event(client, fn_name, *args)
    except AppError as err:
        return str(err)
    last = " ".join(str(value) for value in updates[-1])
    shown = re.search(r'class="eg-error"[^>]*>(.*?)</div>', last, re.S)
    assert shown, f"no error shown; last update: {last[:300]}"
    return html.unescape(shown[1])


def raw_call_error(url: str, api_name: str, body: bytes) -> str:
    """POSTs `body` as the request JSON to /gradio_api/call/<api_name>; returns the error the caller receives."""
    with httpx.Client(base_url=url, timeout=60) as http:
        posted = http.post(f"/gradio_api/call/{api_name}", content=body, headers={"content-type": "application/json"})
        if posted.status_code != 200:
            return f"HTTP {posted.status_code}: {posted.text}"
        stream = http.get(f"/gradio_api/call/{api_name}/{posted.json()['event_id']}").text
    events = stream.split("event: ")
    errors = [e.partition("data: ")[2].strip() for e in events if e.startswith("error")]
    assert errors, f"no error event in {stream[:300]!r}"
    return json.loads(errors[0])["error"] or "(an error without a message)"
