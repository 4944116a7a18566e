"""Ways an adapter folder can be broken, each applied to a copy of a good PEFT adapter, with the words the loader
must name it in. `register_broken` adds one registered expert per fault to an experts folder."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from experts.adapters import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE
from experts.registry import REGISTRY_FILE


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **changes}), encoding="utf-8")


def _edit_tensors(folder: Path, edit) -> None:
    path = folder / WEIGHTS_FILE
    tensors = load_file(str(path))
    save_file(edit(dict(sorted(tensors.items()))), str(path))


def _first(tensors: dict, part: str) -> str:
    return next(k for k in tensors if f".lora_{part}." in k)


def _pickle_only(folder: Path) -> None:
    (folder / WEIGHTS_FILE).unlink()
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"lora_A": [[0.0]]}))


def _wrong_shape(tensors: dict) -> dict:
    key = _first(tensors, "A")
    rank, d_in = tensors[key].shape
    return {**tensors, key: torch.zeros(rank, d_in + 3)}


def _nan(tensors: dict) -> dict:
    key = _first(tensors, "B")
    return {**tensors, key: torch.full_like(tensors[key], float("nan"))}


def _truncate(folder: Path) -> None:
    path = folder / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:100])


FAULTS = {  # name (also a valid expert name) -> (break the folder, what the loader says)
    "pickle-bin": (_pickle_only, "refusing pickle files ['adapter_model.bin']"),
    "extra-pickle": (lambda f: (f / "training_args.pt").write_bytes(pickle.dumps({})), "refusing pickle files"),
    "wrong-shapes": (lambda f: _edit_tensors(f, _wrong_shape), "but this base model needs"),
    "other-base": (lambda f: _edit_json(f / MANIFEST_FILE, base_model_sha256="f" * 64),
                   "was trained on another base model"),
    "no-config": (lambda f: (f / CONFIG_FILE).unlink(), f"{CONFIG_FILE} is missing"),
    "config-not-json": (lambda f: (f / CONFIG_FILE).write_text("{", encoding="utf-8"),
                        f"{CONFIG_FILE} is not valid JSON"),
    "truncated": (_truncate, "is unreadable or truncated"),
    "no-weights": (lambda f: (f / WEIGHTS_FILE).unlink(), f"{WEIGHTS_FILE} is missing"),
    "empty-weights": (lambda f: _edit_tensors(f, lambda t: {}), "holds no LoRA weights"),
    "nan-weights": (lambda f: _edit_tensors(f, _nan), "holds NaN or infinite weights"),
    "rank-mismatch": (lambda f: _edit_json(f / CONFIG_FILE, r=16), "adapter_config.json says r=16"),
    "foreign-tensor": (lambda f: _edit_tensors(f, lambda t: {**t, "model.embed_tokens.weight": torch.zeros(2, 2)}),
                       "unsupported tensor 'model.embed_tokens.weight'"),
    "half-pair": (lambda f: _edit_tensors(f, lambda t: {k: v for k, v in t.items() if ".lora_B." not in k}),
                  "but not both A and B"),
    "dora": (lambda f: _edit_json(f / CONFIG_FILE, use_dora=True), "DoRA adapters are not supported"),
    "manifest-not-json": (lambda f: (f / MANIFEST_FILE).write_text("[", encoding="utf-8"),
                          f"{MANIFEST_FILE} is not valid JSON"),
}
FAULT_PARAMS = [pytest.param(name, FAULTS[name][1], id=name) for name in FAULTS]


def broken_copy(good: Path, fault: str, target: Path) -> Path:
    shutil.copytree(good, target)
    FAULTS[fault][0](target)
    return target


def register_broken(experts_dir: Path, good: str = "medical") -> list[str]:
    """One expert per fault, named after it and copied from the good expert `good`; returns their names."""
    registry = json.loads((experts_dir / REGISTRY_FILE).read_text(encoding="utf-8"))
    for fault in FAULTS:
        broken_copy(experts_dir / good, fault, experts_dir / fault)
        registry["experts"].append({"name": fault, "folder": fault})
    (experts_dir / REGISTRY_FILE).write_text(json.dumps(registry), encoding="utf-8")
    return list(FAULTS)
