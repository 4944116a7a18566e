"""The named API endpoints of the web app: `/ask`, `/route` and `/experts`, for programs rather than people.

Example with `gradio_client` (the server from `expertgate serve` on the default port):

    from gradio_client import Client

    client = Client("http://127.0.0.1:7860/")
    text, info = client.predict("What are the symptoms of anaemia?", 2, 160, api_name="/ask")
    print(text)
    print(info["experts"], info["fallback"], info["reason"], info["timings_ms"])
    print(client.predict("Can my landlord keep my deposit?", 2, api_name="/route"))
    print([e["name"] for e in client.predict(api_name="/experts")])

    jobs = [client.submit(q, 2, 64, api_name="/ask") for q in questions]   # concurrent: batched together
    answers = [job.result() for job in jobs]

Started with `--auth USER:PASS`, connect with `Client(url, auth=("USER", "PASS"))`. Errors (an empty
question, a busy server) arrive as `gradio_client.exceptions.AppError` carrying the message.
"""
from __future__ import annotations

from dataclasses import asdict

import gradio as gr

from app.batcher import BusyError, MicroBatcher, Ticket
from app.service import (NO_EXPERTS_DECISION, Answer, ExpertGate, InputError, check_max_new_tokens, check_top_k,
                         clean_question)
from app.views import tokens_per_second
from experts.adapters import AdapterError
from experts.registry import ExpertInfo, Registry, RegistryError


def answer_json(answer: Answer, ticket: Ticket) -> dict:
    """`Answer.to_json()` plus how it was served: its batch size and tokens per second."""
    return {**answer.to_json(), "batch_size": ticket.batch_size, "tokens_per_s": tokens_per_second(answer)}


def expert_infos(registry: Registry) -> list[ExpertInfo]:
    """Every registered expert; one whose folder cannot be read is listed by name alone (the service says why)."""
    infos = []
    for name in registry.names():
        try:
            infos.append(registry.info(name))
        except (AdapterError, RegistryError, OSError):
            infos.append(ExpertInfo(name=name, description="", rank=None, size_bytes=0, examples=None,
                                    eval_perplexity=None, base_perplexity=None, folder=registry.root / name))
    return infos


def queue_question(batcher: MicroBatcher, question, top_k, max_new_tokens) -> Ticket:
    """Checks the inputs and queues the question; InputError or BusyError with a message the user can act on."""
    return batcher.submit(clean_question(question), check_top_k(top_k), check_max_new_tokens(max_new_tokens))


class Api:
    """The endpoint functions; their type hints become the API's documented types."""

    def __init__(self, service: ExpertGate, batcher: MicroBatcher) -> None:
        self.service = service
        self.batcher = batcher

    def ask(self, question: str, top_k: int = 2, max_new_tokens: int = 160) -> tuple[str, dict]:
        """Answers one question; concurrent calls share batches. Returns the answer text and its explanation."""
        try:
            ticket = queue_question(self.batcher, question, top_k, max_new_tokens)
        except (InputError, BusyError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        try:
            answer = ticket.result()
        except Exception as err:  # noqa: BLE001 - any generation failure becomes the caller's error message
            raise gr.Error(f"generation failed: {err}", print_exception=False) from None
        return answer.answer, answer_json(answer, ticket)

    def route(self, question: str, top_k: int = 2) -> dict:
        """The gate's decision for a question, without generating: experts, weights, probabilities, reason."""
        try:
            decision = self.service.route([question], check_top_k(top_k))[0]
        except (InputError, TypeError, ValueError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        return decision.to_json() if decision else dict(NO_EXPERTS_DECISION)

    def experts(self) -> list[dict]:
        """The registered experts: manifest figures, share of recent traffic, and the warning if one is not loaded."""
        shares = self.service.stats.snapshot()["experts"]
        loaded = set(self.service.backend.experts())
        disabled = self.service.disabled
        return [{**asdict(info), "folder": str(info.folder), "loaded": info.name in loaded,
                 "warning": disabled.get(info.name), "traffic_share": shares.get(info.name, {}).get("share", 0.0)}
                for info in expert_infos(self.service.registry)]
