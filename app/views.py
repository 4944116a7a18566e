"""Pure functions from the service's data to what the web page shows: HTML snippets, tables and chart frames.

Kept apart from the Gradio wiring so each display can be read and tested on its own.
"""
from __future__ import annotations

import html

import pandas as pd

from app.service import Answer
from experts.registry import ExpertInfo
from router.decision import GENERAL

EXPERT_COLUMNS = ["name", "status", "description", "rank", "size", "training examples", "perplexity gain",
                  "traffic share"]
HISTORY_COLUMNS = ["question", "experts", "fallback", "tokens/s"]
LOAD_COLUMNS = ["class", "traffic share", "mean gate probability"]
HISTORY_ROWS = 20


def error_box(message: str) -> str:
    return f'<div class="eg-error" role="alert">{html.escape(message)}</div>'


def note_box(message: str) -> str:
    return f'<div class="eg-note">{html.escape(message)}</div>'


def warnings_box(warnings: list[str]) -> str:
    """Empty when all is well, so the page stays quiet."""
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f'<div class="eg-warning" role="alert"><b>Warnings</b><ul>{items}</ul></div>'


def experts_used(answer: Answer) -> str:
    """One bar per mixed expert, its width the expert's weight; the base model when none was used."""
    if not answer.experts:
        return '<div class="eg-experts"><span class="eg-chip eg-base">base model</span></div>'
    rows = "".join(
        f'<div class="eg-expert" data-expert="{html.escape(e["name"])}">'
        f'<span class="eg-chip">{html.escape(e["name"])}</span>'
        f'<span class="eg-bar"><span style="width:{100 * e["weight"]:.0f}%"></span></span>'
        f'<span class="eg-weight">{e["weight"]:.2f}</span></div>' for e in answer.experts)
    return f'<div class="eg-experts">{rows}</div>'


def fallback_notice(answer: Answer) -> str:
    """Says plainly when no expert answered, and always why the gate decided as it did."""
    if answer.fallback:
        return f'<div class="eg-fallback"><b>Fallback: the base model answered.</b> {html.escape(answer.reason)}</div>'
    return f'<div class="eg-reason">{html.escape(answer.reason)}</div>'


def probability_frame(probabilities: dict[str, float]) -> pd.DataFrame:
    """Gate probability of every class including "general"; typed even when empty, see `loss_frame`."""
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])
    return pd.DataFrame({"class": pd.Series([k for k, _ in ranked], dtype=str),
                         "probability": pd.Series([round(v, 4) for _, v in ranked], dtype=float)})


def tokens_per_second(answer: Answer) -> float:
    """This answer's tokens over its batch's generation time: the rate one user saw."""
    seconds = answer.timings_ms.get("generate", 0.0) / 1000
    return round(answer.new_tokens / seconds, 1) if seconds > 0 else 0.0


def timings(answer: Answer, batch_size: int) -> str:
    t = answer.timings_ms
    return (f"routing **{t.get('route', 0):.0f} ms** · generation **{t.get('generate', 0):.0f} ms** · "
            f"**{answer.new_tokens}** tokens at **{tokens_per_second(answer):.1f} tokens/s** · "
            f"queued {t.get('queue', 0):.0f} ms · batch of {batch_size}")


def history_row(answer: Answer) -> list:
    who = ", ".join(f"{e['name']} {e['weight']:.2f}" for e in answer.experts) or "base model"
    question = answer.question if len(answer.question) <= 80 else answer.question[:77] + "..."
    return [question, who, "yes" if answer.fallback else "no", tokens_per_second(answer)]


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 2**20:.1f} MB" if size_bytes >= 2**20 else f"{size_bytes / 2**10:.0f} KB"


def _gain(info: ExpertInfo) -> str:
    """1 - eval_ppl / base_ppl on the expert's held-out set: the share of perplexity the expert removes."""
    if not info.eval_perplexity or not info.base_perplexity:
        return "n/a"
    return f"{1 - info.eval_perplexity / info.base_perplexity:+.1%}"


def experts_table(infos: list[ExpertInfo], loaded: list[str], snapshot: dict) -> pd.DataFrame:
    """One row per registered expert; one that failed to load is marked disabled."""
    shares = snapshot.get("experts", {})
    rows = [[i.name, "serving" if i.name in loaded else "disabled", i.description,
             i.rank if i.rank is not None else "n/a", _size(i.size_bytes),
             i.examples if i.examples is not None else "n/a", _gain(i),
             f"{shares.get(i.name, {}).get('share', 0.0):.0%}"] for i in infos]
    return pd.DataFrame(rows, columns=EXPERT_COLUMNS)


def load_frame(snapshot: dict) -> pd.DataFrame:
    """Every expert and "general" with its traffic share and mean gate probability over recent requests."""
    classes = {**snapshot.get("experts", {}), GENERAL: snapshot.get(GENERAL, {"share": 0.0, "mean_probability": 0.0})}
    return pd.DataFrame([[name, round(v["share"], 4), round(v["mean_probability"], 4)] for name, v in classes.items()],
                        columns=LOAD_COLUMNS)


def load_summary(snapshot: dict) -> str:
    experts = len(snapshot.get("experts", {}))
    return (f"**{snapshot['recent_requests']}** recent requests (of {snapshot['total_requests']} since start) · "
            f"balance **{snapshot['balance']:.2f}** (1.0 is even over {experts} experts, {experts} is one expert "
            f"taking all) · traffic entropy **{abs(snapshot['entropy_bits']):.2f} bits**")


def progress_bar(step: int, total: int, loss: float | None) -> str:
    shown = f" · loss {loss:.4f}" if loss is not None else ""
    return (f'<div class="eg-progress"><progress value="{step}" max="{max(total, 1)}"></progress>'
            f'<span>step {step} of {total}{shown}</span></div>')


def loss_frame(points: list[tuple[int, float]]) -> pd.DataFrame:
    """Typed even when empty: the chart fixes its axis types from the first frame it gets."""
    return pd.DataFrame(points, columns=["step", "loss"]).astype({"step": int, "loss": float})
