"""The gate's life cycle in an experts folder: reuse the saved gate while its training questions are unchanged."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from experts import BUNDLED_DIR
from experts.base_model import default_cache_dir, model_folder, resolve_device
from experts.rebuild import GENERAL_FILE
from experts.registry import Registry
from router import Encoder, Gate, SentenceEncoder, training_hash
from router.hidden_states import HiddenStates
from router.tuning import load_encoder, tuned_classes

log = logging.getLogger("expertgate")
GATE_DIR = "gate"


def general_questions(experts_dir: Path) -> list[str]:
    """The experts folder's own off-domain questions, else the bundled ones."""
    path = experts_dir / GENERAL_FILE
    path = path if path.is_file() else BUNDLED_DIR / GENERAL_FILE
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gate_encoder(experts_dir: Path) -> tuple[SentenceEncoder, str | None]:
    """The encoder tuned for this experts folder, else plain MiniLM; a broken tuned one gives plain MiniLM and
    a warning, so the app still routes."""
    try:
        return load_encoder(experts_dir), None
    except ValueError as err:
        message = f"the gate's tuned encoder is not used: {err}"
        log.warning(message)
        return SentenceEncoder(), message


def gate_states(base_folder: Path | None = None, *, base_model: str | None = None, cache_dir: Path | None = None,
                device: str | None = None) -> tuple[HiddenStates | None, str | None]:
    """The base LM's first layers, the gate's second view of a question (router.hidden_states), from the loaded
    base model's folder or else the configured base model; a base model that cannot be read gives None and a
    warning, so the gate still routes on the embedding alone."""
    try:
        folder = base_folder or model_folder(base_model, cache_dir=cache_dir)
        return HiddenStates(folder, device=resolve_device(device)), None
    except ValueError as err:
        message = f"the gate routes without the base model's hidden states: {err}"
        log.warning(message)
        return None, message


def load_or_fit_gate(registry: Registry, names: list[str], encoder: Encoder, cache_dir: Path | None = None,
                     states: HiddenStates | None = None) -> Gate | None:
    """A gate over `names` (registered experts); None when there are none. A refit is saved for the next start."""
    if not names:
        return None
    experts = {name: registry.questions(name) for name in names}
    general = general_questions(registry.root)
    folder = registry.root / GATE_DIR
    try:
        gate = Gate.load(folder, encoder, states)
        if gate.training_hash == training_hash(experts, general):
            return gate
    except (ValueError, OSError, KeyError):
        pass  # absent, stale or unreadable: refit below
    untuned = sorted(set(names) - set(tuned_classes(registry.root) or names))
    if untuned:
        log.info("the gate's encoder was tuned before %s joined; `expertgate tune-router` tunes it on all experts",
                 ", ".join(untuned))
    gate = Gate.fit(experts, general, encoder, cache_dir=(cache_dir or default_cache_dir()) / "router", states=states)
    try:
        gate.save(folder)
    except OSError as err:
        log.warning("could not save the refit gate to %s: %s", folder, err)
    return gate
