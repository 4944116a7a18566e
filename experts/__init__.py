"""Base model, adapters, the per-row LoRA mixing engine, training and the experts registry."""
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
"""The shipped experts, and the default experts folder."""
