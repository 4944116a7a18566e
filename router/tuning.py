"""Fine-tuning the gate's encoder on the experts' questions, kept as a PEFT LoRA adapter beside the experts.

Frozen MiniLM does not know which domain a lot of one-word jargon belongs to ("HELOC", "D-dimer"); a few
minutes of LoRA training on the training questions, with a cosine classifier over the gate's classes as the
loss, teaches it. The adapter is merged into the encoder at load time, so routing costs what it did.

On disk, in the folder given (the experts folder): `encoder-<sha>/` holds `adapter_config.json`,
`adapter_model.safetensors` and `tuning.json`; `encoder.json` names the folder in use. It is replaced in
one `os.replace`, so a crash while tuning leaves the previous encoder in use.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from router.atomic import atomic_write
from router.encoder import SentenceEncoder
from router.heldout import held_out
from router.training import training_hash, training_set

POINTER_FILE = "encoder.json"
REPORT_FILE = "tuning.json"
TARGET_MODULES = ["query", "key", "value", "dense"]
BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what other tools resolve, not this machine's path


@dataclass(frozen=True)
class TuneConfig:
    """Defaults chosen on a 75/25 split of the training questions, no eval file: the held-back quarter's domain
    accuracy was 0.897 with plain MiniLM, 0.907 after a full fine-tune, 0.915 / 0.918 / 0.922 with this LoRA at
    lr 2e-4 x 3 epochs / 5e-4 x 3 / 5e-4 x 5. `scale` is the cosine classifier's inverse temperature.
    `held_out` is the share of questions (router.heldout) left out of tuning for the gate to calibrate on: a
    tenth leaves about 75 per class of the shipped data to fit one temperature and one threshold. A fifth
    cost eval domain accuracy in one run (0.955, against 0.968 for an encoder tuned on every question)."""

    epochs: float = 5.0
    lr: float = 5e-4
    rank: int = 16
    batch_size: int = 32
    scale: float = 20.0
    seed: int = 0
    held_out: float = 0.1


@dataclass(frozen=True)
class TuneReport:
    """What a tuning run did; saved as tuning.json beside the adapter."""

    classes: list[str]
    questions: int
    held_out: int
    steps: int
    seconds: float
    final_loss: float
    training_hash: str
    base_encoder: str
    config: dict


def tune_encoder(examples: dict[str, list[str]], general: list[str], root: str | Path, *,
                 config: TuneConfig = TuneConfig(), device: str = "cpu",
                 on_step: Callable[[int, int, float], None] | None = None) -> TuneReport:
    """LoRA-tune a fresh MiniLM to tell the classes apart and make it the encoder used in `root`.

    Same input checks as `Gate.fit`. The encoder in use changes only once the new adapter is fully written.
    `on_step(step, steps, loss)` is called after every step, for progress.
    """
    from peft import LoraConfig, get_peft_model

    labels, texts, y = training_set(examples, general)
    kept = ~held_out(texts, config.held_out)
    if len(set(y[kept])) < len(labels):
        raise ValueError(f"holding out {config.held_out:.0%} of the questions leaves a class with none to tune on: "
                         "give every class more questions")
    texts, y = [t for t, k in zip(texts, kept) if k], y[kept]
    torch.manual_seed(config.seed)
    encoder = SentenceEncoder(device=device)
    model = encoder._model
    targets = torch.as_tensor(y, device=model.device)
    head = torch.nn.Parameter(_centroids(encoder, texts, targets, len(labels)))
    peft_model = get_peft_model(model[0].model, LoraConfig(
        r=config.rank, lora_alpha=2 * config.rank, lora_dropout=0.0, target_modules=TARGET_MODULES))
    start = time.perf_counter()
    steps, loss = _train(model, head, texts, targets, config, on_step)
    report = TuneReport(list(labels), len(texts), int((~kept).sum()), steps, round(time.perf_counter() - start, 1),
                        round(loss, 4), training_hash(examples, general), encoder.name, asdict(config))
    _install(peft_model, report, Path(root))
    return report


def _train(model, head: torch.nn.Parameter, texts: list[str], targets: torch.Tensor, config: TuneConfig,
           on_step: Callable[[int, int, float], None] | None) -> tuple[int, float]:
    """Cross-entropy of a cosine classifier over shuffled batches, warm-up then linear decay; (steps, last loss)."""
    from sentence_transformers.util import batch_to_device

    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr},
                                   {"params": [head], "lr": 1e-2}], weight_decay=0.01)
    steps = max(1, int(config.epochs * len(texts) / config.batch_size))
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, s / warmup) * (1 - s / steps))
    generator = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    model.train()
    for step in range(1, steps + 1):
        if len(order) < config.batch_size:
            order += torch.randperm(len(texts), generator=generator).tolist()
        batch, order = order[: config.batch_size], order[config.batch_size:]
        features = batch_to_device(model.preprocess([texts[i] for i in batch]), model.device)
        embedded = F.normalize(model(features)["sentence_embedding"], dim=-1)
        loss = F.cross_entropy(config.scale * embedded @ F.normalize(head, dim=-1).T, targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_step(step, steps, loss.item())
    model.eval()
    return steps, float(loss.item())


def _centroids(encoder: SentenceEncoder, texts: list[str], y: torch.Tensor, classes: int) -> torch.Tensor:
    """The classifier starts at each class's mean frozen embedding, so early steps do not scramble the encoder."""
    with torch.no_grad():
        x = torch.as_tensor(encoder.encode(texts), device=y.device)
        return torch.stack([F.normalize(x[y == k].mean(0), dim=0) for k in range(classes)])


def _install(peft_model, report: TuneReport, root: Path) -> None:
    """Write the adapter beside the one in use, then switch `encoder.json` to it; on any failure the old one stays."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        previous = _current_folder(root)
    except ValueError:
        previous = None  # a broken pointer is what this install replaces, as its error message advises
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".encoder-staging-"))
    try:
        peft_model.peft_config["default"].base_model_name_or_path = BASE_MODEL_ID
        peft_model.save_pretrained(staging, safe_serialization=True)
        (staging / "README.md").unlink(missing_ok=True)  # PEFT's blank model card
        (staging / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n")
        _readable(staging)
        digest = hashlib.sha256(b"".join((staging / f).read_bytes() for f in sorted(os.listdir(staging))))
        folder = root / f"encoder-{digest.hexdigest()[:12]}"
        if folder != previous:
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
            try:
                atomic_write(root / POINTER_FILE, lambda p: Path(p).write_text(json.dumps({"folder": folder.name})))
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if previous is not None and previous != folder:
        shutil.rmtree(previous, ignore_errors=True)


def _readable(folder: Path) -> None:
    """mkdtemp makes a private folder; the installed one gets the usual permissions under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _current_folder(root: Path) -> Path | None:
    """The adapter folder `encoder.json` names, or None when there is no tuned encoder; ValueError if broken."""
    pointer = root / POINTER_FILE
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["folder"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{pointer} is unreadable ({err}): tune the encoder again or delete the file") from None
    if not isinstance(name, str) or "/" in name or not name.startswith("encoder-"):
        raise ValueError(f"{pointer} names {name!r}, not an encoder-<sha> folder beside it")
    return root / name


def load_encoder(root: str | Path, *, device: str = "cpu") -> SentenceEncoder:
    """The encoder tuned for `root` if one was installed there, else plain MiniLM; ValueError if it is broken."""
    folder = _current_folder(Path(root))
    if folder is None:
        return SentenceEncoder(device=device)
    return SentenceEncoder(device=device, adapter=folder, held_out_share=_held_out_share(folder))


def _report(folder: Path) -> dict:
    """The tuning.json in `folder` as a dict; ValueError when it is missing or unreadable."""
    try:
        report = json.loads((folder / REPORT_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"encoder adapter {folder} has no readable {REPORT_FILE} ({err}): tune it again") from None
    if not isinstance(report, dict):
        raise ValueError(f"{folder / REPORT_FILE} is not a JSON object: tune it again")
    return report


def _held_out_share(folder: Path) -> float:
    """The share of questions the tuning in `folder` left out; 0, so every question counts as seen, for an
    adapter without a report or from before the held-out share."""
    if not (folder / REPORT_FILE).exists():
        return 0.0
    config = _report(folder).get("config")
    share = config.get("held_out", 0.0) if isinstance(config, dict) else None
    if not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
        raise ValueError(f"{folder / REPORT_FILE} gives a held-out share of {share!r}, not a number in [0, 1)")
    return float(share)


def tuned_classes(root: str | Path) -> list[str] | None:
    """The classes the encoder in `root` was tuned on, to tell when a re-tune would help; None if there is no
    readable tuned encoder (`load_encoder` is the one that reports a broken one)."""
    try:
        folder = _current_folder(Path(root))
        return None if folder is None else list(_report(folder)["classes"])
    except (ValueError, KeyError, TypeError):
        return None
