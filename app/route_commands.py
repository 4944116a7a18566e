"""`expertgate route` and `expertgate eval router`: the gate alone, reading only the base model's first layers."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from app.config import AppConfig
from app.gating import gate_encoder, gate_states, general_questions, load_or_fit_gate
from app.service import InputError, check_top_k, clean_question


def _gate(config: AppConfig):
    from experts.registry import Registry

    registry = Registry(config.experts_dir)
    encoder, warning = gate_encoder(config.experts_dir)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    gate = load_or_fit_gate(registry, registry.names(), encoder, config.cache_dir, _states(config))
    if gate is None:
        raise InputError(f"no experts are registered in {config.experts_dir}: nothing to route to")
    return gate


def _states(config: AppConfig):
    if not config.gate_states:
        return None
    states, warning = gate_states(base_model=config.base_model, cache_dir=config.cache_dir, device=config.device)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return states


def _read_questions(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read questions from {path}: {err}") from None
    questions, bad = [], []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                questions.append(clean_question(line))
            except InputError as err:
                bad.append(f"line {number}: {err}")
    if bad:
        raise InputError(f"{path}: {len(bad)} bad questions ({'; '.join(bad[:5])})")
    if not questions:
        raise InputError(f"{path} holds no questions (one per line)")
    return questions


def route(args) -> int:
    if (args.question is None) == (args.file is None):
        raise InputError("give either a QUESTION or --file FILE")
    top_k = check_top_k(args.top_k or 2)
    questions = [clean_question(args.question)] if args.question is not None else _read_questions(args.file)
    decisions = _gate(AppConfig.from_args(args)).route_batch(questions, top_k)
    for question, decision in zip(questions, decisions):
        if args.json:
            print(json.dumps({"question": question, **decision.to_json()}, ensure_ascii=False))
        else:
            who = ", ".join(f"{e.name} {e.weight:.2f}" for e in decision.experts) or "base model"
            print(f"{who}\t{decision.reason}")
    return 0


def eval_router(args) -> int:
    from router import evaluate, load_labelled

    try:
        questions, domains = load_labelled(args.data)
    except (OSError, ValueError) as err:
        raise InputError(str(err)) from None
    report = evaluate(_gate(AppConfig.from_args(args)), questions, domains, top_k=check_top_k(args.top_k or 2))
    json.dump(report, sys.stdout, indent=None if args.json else 2)
    print()
    return 0


def _progress(step: int, steps: int, loss: float) -> None:
    if step % 25 == 0 or step == steps:
        print(f"tuning the gate's encoder: step {step}/{steps}, loss {loss:.3f}", file=sys.stderr, flush=True)


def tune_router(args) -> int:
    """LoRA-tune the gate's encoder on the registered experts' questions, then refit and save the gate with it."""
    from dataclasses import asdict

    from experts.registry import Registry
    from router.tuning import TuneConfig, load_encoder, tune_encoder

    config = AppConfig.from_args(args)
    registry = Registry(config.experts_dir)
    names = registry.names()
    if not names:
        raise InputError(f"no experts are registered in {config.experts_dir}: nothing to tune the gate for")
    given = {k: getattr(args, k) for k in ("epochs", "lr", "seed", "held_out")}
    settings = TuneConfig(**{k: v for k, v in given.items() if v is not None})
    try:
        report = tune_encoder({n: registry.questions(n) for n in names}, general_questions(registry.root),
                              registry.root, config=settings, on_step=_progress)
    except ValueError as err:
        raise InputError(str(err)) from None
    gate = load_or_fit_gate(registry, names, load_encoder(registry.root), config.cache_dir, _states(config))
    print(json.dumps({"tuning": asdict(report), "gate": gate.report.to_json()}, indent=None if args.json else 2))
    return 0
