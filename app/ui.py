"""The web app: Ask (streamed answers with the gate's explanation), Experts (add, remove) and Load tabs.

Every question goes through one MicroBatcher, so concurrent users share batched generate calls.
The named API endpoints live in `app.api`; `app.server` launches the page with THEME and CSS.
"""
from __future__ import annotations

import gradio as gr
import pandas as pd

from app import views
from app.api import Api, queue_question
from app.batcher import BusyError, MicroBatcher
from app.config import AppConfig
from app.experts_tab import experts_tab
from app.service import ExpertGate, InputError

__all__ = ["CSS", "THEME", "build_ui", "default_batcher"]

THEME = gr.themes.Default(font=[gr.themes.LocalFont("Source Sans Pro", weights=(400, 700)),
                                "ui-sans-serif", "system-ui", "sans-serif"])
CSS = """
.eg-error {border: 1px solid #dc2626; background: #fef2f2; color: #991b1b; padding: 8px 12px; border-radius: 6px;}
.eg-warning {border: 1px solid #d97706; background: #fffbeb; color: #92400e; padding: 8px 12px; border-radius: 6px;}
.eg-warning ul {margin: 4px 0 0 18px;}
.eg-note {color: #374151; padding: 4px 0;}
.eg-fallback {border-left: 4px solid #d97706; background: #fffbeb; padding: 8px 12px; border-radius: 4px;}
.eg-reason {color: #4b5563; font-size: 0.9em;}
.eg-expert {display: flex; align-items: center; gap: 8px; margin: 4px 0;}
.eg-chip {background: #e0e7ff; color: #3730a3; border-radius: 12px; padding: 2px 10px; min-width: 80px;
          text-align: center; font-weight: 700;}
.eg-base {background: #f3f4f6; color: #374151;}
.eg-bar {flex: 1; height: 10px; background: #f3f4f6; border-radius: 5px; overflow: hidden;}
.eg-bar span {display: block; height: 100%; background: #6366f1;}
.eg-weight {font-variant-numeric: tabular-nums; width: 3em; text-align: right;}
.eg-progress {display: flex; align-items: center; gap: 12px;}
.eg-progress progress {flex: 1; height: 14px;}
"""


def default_batcher(service: ExpertGate, *, max_batch: int = 16, max_waiting: int = 64) -> MicroBatcher:
    """Batches run through `service.ask`; streamed tokens are decoded with the base model's tokenizer."""
    def run(questions, top_k, max_new_tokens, callback):
        return service.ask(questions, top_k=top_k, max_new_tokens=max_new_tokens, callback=callback)

    def decode(tokens: list[int]) -> str:
        return service.base.tokenizer.decode(tokens, skip_special_tokens=True)

    return MicroBatcher(run, decode, max_batch=max_batch, max_waiting=max_waiting)


def _ask_tab(config: AppConfig, batcher: MicroBatcher, concurrency: int) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            question = gr.Textbox(label="Question", lines=3, placeholder="Ask a medical, legal, finance or "
                                  "programming question, or anything else", elem_id="question")
            with gr.Row():
                top_k = gr.Slider(1, 4, value=config.top_k, step=1, label="Experts to mix (top-k)", elem_id="top-k")
                max_new = gr.Slider(8, 512, value=config.max_new_tokens, step=8, label="Max new tokens",
                                    elem_id="max-new-tokens")
            ask = gr.Button("Ask", variant="primary", elem_id="ask-button")
            status = gr.HTML(elem_id="ask-status")
            answer = gr.Textbox(label="Answer", lines=8, interactive=False, elem_id="answer")
            timings = gr.Markdown(elem_id="timings")
        with gr.Column(scale=2):
            gr.Markdown("**Experts that answered**")
            used = gr.HTML(elem_id="experts-used")
            fallback = gr.HTML(elem_id="fallback")
            probs = gr.BarPlot(views.probability_frame({}), x="class", y="probability", y_lim=[0, 1],
                               label="Gate probabilities", height=240, elem_id="gate-probabilities")
    history = gr.Dataframe(pd.DataFrame(columns=views.HISTORY_COLUMNS), label="Recent questions",
                           interactive=False, elem_id="history")
    rows = gr.State([])
    outputs = [status, answer, used, fallback, probs, timings, history, rows]

    def on_ask(text, k, max_new_tokens, past):
        try:
            ticket = queue_question(batcher, text, k, max_new_tokens)
        except InputError as err:
            yield {status: views.error_box(str(err))}
            return
        except BusyError as err:
            raise gr.Error(str(err), print_exception=False) from None
        yield {status: "", answer: "", used: "", fallback: views.note_box("Answering...")}
        try:
            for event in ticket:
                if isinstance(event, str):
                    yield {answer: event}
                    continue
                past = [views.history_row(event)] + past[: views.HISTORY_ROWS - 1]
                yield {answer: event.answer, used: views.experts_used(event), fallback: views.fallback_notice(event),
                       probs: views.probability_frame(event.probabilities),
                       timings: views.timings(event, ticket.batch_size),
                       history: pd.DataFrame(past, columns=views.HISTORY_COLUMNS), rows: past}
        except Exception as err:  # noqa: BLE001 - shown to the user; the batcher keeps serving others
            raise gr.Error(f"generation failed: {err}", print_exception=False) from None

    gr.on([ask.click, question.submit], on_ask, [question, top_k, max_new, rows], outputs,
          concurrency_limit=concurrency, concurrency_id="ask", api_visibility="private")


def _load_tab(service: ExpertGate) -> gr.Tab:
    with gr.Tab("Load", id="load") as tab:
        warnings = gr.HTML(elem_id="load-warnings")
        summary = gr.Markdown(elem_id="load-summary")
        with gr.Row():
            share = gr.BarPlot(x="class", y="traffic share", y_lim=[0, 1], label="Share of recent traffic",
                               height=260, elem_id="load-share")
            mean_p = gr.BarPlot(x="class", y="mean gate probability", y_lim=[0, 1], label="Mean gate probability",
                                height=260, elem_id="load-probability")
        table = gr.Dataframe(label="Per class", interactive=False, elem_id="load-table")
        refresh = gr.Button("Refresh", size="sm")

    def show():
        snapshot = service.stats.snapshot()
        frame = views.load_frame(snapshot)
        return views.warnings_box(snapshot["warnings"]), views.load_summary(snapshot), frame, frame, frame

    gr.on([tab.select, refresh.click], show, None, [warnings, summary, share, mean_p, table],
          api_visibility="private")
    return tab


def build_ui(service: ExpertGate, config: AppConfig, *, batcher: MicroBatcher | None = None,
             read_only: bool = False, queue_size: int = 256) -> gr.Blocks:
    """The whole app; `read_only` hides and refuses adding and removing experts."""
    batcher = batcher or default_batcher(service)
    concurrency = batcher.max_waiting + 2 * batcher.max_batch  # above what the batcher holds, so it can say "busy"
    api = Api(service, batcher)
    with gr.Blocks(title="expertgate", analytics_enabled=False) as demo:
        gr.Markdown("## expertgate\nA learned gate picks which LoRA experts answer each question; "
                    "off-domain questions fall back to the base model.")
        warnings = gr.HTML(views.warnings_box(service.warnings), elem_id="expert-warnings")
        with gr.Tabs():
            with gr.Tab("Ask", id="ask"):
                _ask_tab(config, batcher, concurrency)
            with gr.Tab("Experts", id="experts") as tab:
                experts_tab(service, config, tab, warnings, read_only=read_only)
            _load_tab(service)
        gr.api(api.ask, api_name="ask", concurrency_limit=concurrency, concurrency_id="ask")
        gr.api(api.route, api_name="route", concurrency_limit=4)
        gr.api(api.experts, api_name="experts", concurrency_limit=4)
    demo.queue(max_size=queue_size, default_concurrency_limit=2)
    return demo
