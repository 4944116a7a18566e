"""The one place where command-line flags and environment variables become settings."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from experts import BUNDLED_DIR

MAX_QUESTION_CHARS = 4000
MAX_TOP_K = 4  # experts mixed per row, as experts.mixing allows
MAX_NEW_TOKENS = 4096  # as experts.generation.SamplingConfig allows


@dataclass(frozen=True)
class AppConfig:
    base_model: str | None = field(default_factory=lambda: os.environ.get("EXPERTGATE_BASE_MODEL") or None)
    device: str | None = field(default_factory=lambda: os.environ.get("EXPERTGATE_DEVICE") or None)
    experts_dir: Path = field(default_factory=lambda: Path(os.environ.get("EXPERTGATE_EXPERTS_DIR") or BUNDLED_DIR))
    cache_dir: Path | None = field(default_factory=lambda: Path(os.environ["EXPERTGATE_CACHE"]) if os.environ.get("EXPERTGATE_CACHE") else None)
    top_k: int = 2
    max_new_tokens: int = 160
    # the base model's hidden states beside the gate's embedding (router.hidden_states); "0" routes without them
    gate_states: bool = field(default_factory=lambda: os.environ.get("EXPERTGATE_GATE_STATES", "1") != "0")

    @classmethod
    def from_args(cls, args) -> "AppConfig":
        """Flags given on the command line override the environment."""
        values = {k: getattr(args, k) for k in ("base_model", "device", "experts_dir", "top_k", "max_new_tokens")
                  if getattr(args, k, None) is not None}
        return cls(**values)
