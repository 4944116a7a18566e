"""Trains one expert in its own process and reports on stdout as JSON lines, for the web app to follow.

    python -m app.train_job NAME --data FILE --experts-dir DIR [--base-model M] [--device D]
                            [--description T] [--rank R] [--epochs N] [--max-steps N] [--threads N]

Lines: {"event": "progress", "step", "total", "loss"} per optimizer step, then one
{"event": "done", "manifest": {...}} (exit 0) or {"event": "error", "message": ...} (exit 2).
Running apart means a crash or a kill cannot hurt the server; `train_expert` registers atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _emit(**record) -> None:
    print(json.dumps(record, ensure_ascii=False), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.train_job")
    parser.add_argument("name")
    parser.add_argument("--data", required=True)
    parser.add_argument("--experts-dir", required=True, type=Path)
    parser.add_argument("--base-model")
    parser.add_argument("--device")
    parser.add_argument("--description", default="")
    for flag in ("--rank", "--epochs", "--max-steps", "--threads"):
        parser.add_argument(flag, type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parser().parse_args(argv)
    from app.config import AppConfig
    from experts.adapters import AdapterError
    from experts.base_model import BaseModelError, load_base_model
    from experts.data import DataError
    from experts.registry import Registry, RegistryError
    from experts.train import TrainConfig, train_expert

    config = AppConfig(base_model=args.base_model, device=args.device, experts_dir=args.experts_dir)
    given = {k: getattr(args, k) for k in ("rank", "epochs", "max_steps", "threads") if getattr(args, k) is not None}
    try:
        base = load_base_model(config.base_model, device=config.device, cache_dir=config.cache_dir)
        result = train_expert(args.name, args.data, base, Registry(config.experts_dir), description=args.description,
                              config=TrainConfig(**given),
                              progress=lambda step, total, loss: _emit(event="progress", step=step, total=total,
                                                                       loss=round(loss, 5)))
    except (DataError, RegistryError, BaseModelError, AdapterError, ValueError) as err:
        _emit(event="error", message=str(err))
        return 2
    _emit(event="done", manifest=result.manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
