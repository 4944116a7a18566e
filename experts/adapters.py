"""Reading LoRA adapters in PEFT's standard format and checking that they fit the loaded base model.

PEFT format: `adapter_config.json` + `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_A.weight` (r, d_in) and `...lora_B.weight` (d_out, r). Pickle files
(`adapter_model.bin`, `.pt`) are refused, never opened.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "expert.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


class AdapterError(ValueError):
    """An adapter cannot be used with this base model; the message names the adapter and the misfit."""


@dataclass(frozen=True)
class LoraPair:
    """One adapted linear: delta W = scale * B @ A."""

    A: torch.Tensor  # (r, d_in)
    B: torch.Tensor  # (d_out, r)
    scale: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]


@dataclass(frozen=True)
class Adapter:
    name: str
    layers: dict[str, LoraPair]  # base-model module name -> weights
    config: dict

    @property
    def num_parameters(self) -> int:
        return sum(p.A.numel() + p.B.numel() for p in self.layers.values())


def _read_config(name: str, folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise AdapterError(f"adapter {name!r}: {CONFIG_FILE} is missing in {folder}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"adapter {name!r}: {CONFIG_FILE} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name!r}: only LoRA adapters are supported (peft_type LORA)")
    if config.get("use_dora"):
        raise AdapterError(f"adapter {name!r}: DoRA adapters are not supported by the mixing engine")
    if config.get("fan_in_fan_out"):
        raise AdapterError(f"adapter {name!r}: fan_in_fan_out adapters (Conv1D bases) are not supported")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise AdapterError(f"adapter {name!r}: needs a positive integer r and a positive lora_alpha, got r={rank!r} "
                           f"lora_alpha={alpha!r}")
    return config


def _read_tensors(name: str, folder: Path) -> dict[str, torch.Tensor]:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise AdapterError(f"adapter {name!r}: refusing pickle files {pickles}; store weights as {WEIGHTS_FILE}")
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} is missing in {folder}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} is unreadable or truncated ({err})") from None


def _scale(config: dict, module: str, rank: int) -> float:
    alpha = config["lora_alpha"]
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){re.escape(pattern)}$", module):
            alpha = value
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"adapter in {folder}: {MANIFEST_FILE} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise AdapterError(f"adapter in {folder}: {MANIFEST_FILE} must hold a JSON object")
    return manifest


def load_adapter(name: str, folder: str | Path, linears: dict[str, torch.nn.Module], *,
                 base_fingerprint: str | None = None, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> Adapter:
    """Reads and validates the adapter in `folder` against the base model's `linears` (module name -> layer).

    `base_fingerprint`, when given, must match the `base_model_sha256` that our manifest records.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"adapter {name!r}: folder {folder} does not exist")
    config = _read_config(name, folder)
    recorded = read_manifest(folder).get("base_model_sha256")
    if base_fingerprint and recorded and recorded != base_fingerprint:
        raise AdapterError(f"adapter {name!r} was trained on another base model (sha256 {recorded[:12]}..., "
                           f"this base is {base_fingerprint[:12]}...)")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(name, folder).items():
        match = _KEY.match(key)
        if not match:
            raise AdapterError(f"adapter {name!r}: unsupported tensor {key!r} (only lora_A/lora_B of linears)")
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if not parts:
        raise AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} holds no LoRA weights")
    layers = {}
    for module, ab in sorted(parts.items()):
        layers[module] = _check_pair(name, module, ab, linears, config, device, dtype)
    return Adapter(name=name, layers=layers, config=config)


def _check_pair(name: str, module: str, ab: dict[str, torch.Tensor], linears: dict, config: dict,
                device, dtype) -> LoraPair:
    if set(ab) != {"A", "B"}:
        raise AdapterError(f"adapter {name!r}: module {module} has lora_{''.join(ab)} but not both A and B")
    layer = linears.get(module)
    if layer is None:
        raise AdapterError(f"adapter {name!r}: targets {module}, which is not a linear layer of this base model")
    A, B = ab["A"], ab["B"]
    rank = A.shape[0]
    if A.ndim != 2 or B.ndim != 2 or A.shape != (rank, layer.in_features) or B.shape != (layer.out_features, rank):
        raise AdapterError(
            f"adapter {name!r}: {module} has A {tuple(A.shape)} and B {tuple(B.shape)}, but this base model needs "
            f"A (r, {layer.in_features}) and B ({layer.out_features}, r)")
    if not config.get("rank_pattern") and rank != config["r"]:
        raise AdapterError(f"adapter {name!r}: {module} has rank {rank} but adapter_config.json says r={config['r']}")
    if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
        raise AdapterError(f"adapter {name!r}: {module} holds NaN or infinite weights")
    return LoraPair(A=A.to(device=device, dtype=dtype), B=B.to(device=device, dtype=dtype),
                    scale=_scale(config, module, rank))
