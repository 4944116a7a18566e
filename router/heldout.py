"""Which training questions the encoder's tuning leaves out, so the gate can calibrate on questions it never saw.

The choice is a hash of the question's text: the same on every machine and run, independent of file order, and
a question keeps its side when other questions are added or removed.
"""
from __future__ import annotations

import hashlib

import numpy as np


def held_out(texts: list[str], share: float) -> np.ndarray:
    """(N,) bool: True for the about `share` of `texts` that tuning leaves out."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the held-out share must be in [0, 1), got {share}")
    cut = share * 2**32
    return np.array([int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:4], "big") < cut for t in texts],
                    dtype=bool)
