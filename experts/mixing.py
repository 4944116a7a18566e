"""Per-row sparse LoRA mixing inside one batched forward pass.

Every adapted linear stacks all experts' A matrices under the base weight, so the base projection
and every expert's rank-space projection are one GEMM; the per-row gate then zeroes or weights the
rank columns, and one `addmm` with the stacked B matrices adds the mix. A weighted top-k mix is a
single LoRA of rank sum(r_e) per row, so top-2 costs what top-1 costs. We measured the alternatives
(gathering each row's adapters, sorting rows into per-expert segments): at 4-8 experts of rank 16 on
this model their index and copy work costs more than the FLOPs they save (see bench/mixing.py).

Routing is explicit data: `LoraMixer.routing(rows)` takes one list of (expert, weight) pairs per batch
row for the duration of one generate call.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from experts.adapters import Adapter

MAX_TOP_K = 4
RowRoute = Sequence[tuple[str, float]]
"""One batch row's experts and weights; empty means the plain base model."""


class RoutingError(ValueError):
    """A batch names unknown experts, too many experts per row, or bad weights."""


@dataclass
class MixState:
    """What every mixing layer reads during one forward pass: the rank-space gate per column layout."""

    gates: dict[tuple, torch.Tensor] = field(default_factory=dict)  # layout -> (B, R)
    active: bool = False


class MixedLoraLinear(nn.Module):
    """A linear layer whose rows each add their own weighted mix of LoRA experts.

    Semantics: y[b] = W x[b] + sum_k g[b,k] * s_e * B_e A_e x[b], with e = idx[b,k], k <= 4.
    Shapes: fused (d_out + R, d_in) = [W; A_1; ...; A_E], B_cat (d_out, R), gate (B, R), R = sum_e r_e.
    A row whose gate is all zero gets W x; a batch with no expert at all takes the plain F.linear path.
    """

    def __init__(self, base: nn.Linear, state: MixState):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.state = state
        self.bias = base.bias
        self.fused = base.weight.detach()
        self.B_cat = base.weight.new_zeros(self.out_features, 0)
        self.layout: tuple[tuple[str, int, float], ...] = ()  # (expert, rank, scale) per stacked block

    @property
    def weight(self) -> torch.Tensor:
        return self.fused[: self.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d_in) -> (B, T, d_out)"""
        if not self.layout or not self.state.active:
            return F.linear(x, self.weight, self.bias)
        gate = self.state.gates[self.layout]
        h = F.linear(x, self.fused)  # (B, T, d_out + R)
        y, z = h.split([self.out_features, h.shape[-1] - self.out_features], dim=-1)
        z = z * gate[:, None, :]
        out = torch.addmm(y.reshape(-1, self.out_features), z.reshape(-1, z.shape[-1]), self.B_cat.t())
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def set_blocks(self, blocks: list[tuple[str, float, torch.Tensor, torch.Tensor]]) -> None:
        """Rebuilds the stacks from (expert, scale, A, B) blocks; the base weight is copied, never duplicated."""
        A = [a for _, _, a, _ in blocks]
        self.fused = torch.cat([self.weight, *A], dim=0) if A else self.weight.clone()
        self.B_cat = torch.cat([b for *_, b in blocks], dim=1) if blocks else self.B_cat[:, :0]
        self.layout = tuple((name, a.shape[0], scale) for name, scale, a, _ in blocks)

    def blocks(self) -> list[tuple[str, float, torch.Tensor, torch.Tensor]]:
        out, start = [], self.out_features
        col = 0
        for name, rank, scale in self.layout:
            out.append((name, scale, self.fused[start:start + rank], self.B_cat[:, col:col + rank]))
            start, col = start + rank, col + rank
        return out


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The linears LoRA may adapt: every nn.Linear or mixing layer except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, MixedLoraLinear)) and m is not head}


class LoraMixer:
    """Owns the mixing layers of one base model and the set of experts stacked in them."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.state = MixState()
        self.layers: dict[str, MixedLoraLinear] = {}
        self.experts: dict[str, int] = {}  # name -> parameter count
        self._forward_lock = threading.Lock()  # one batch at a time; edits wait for the batch in flight
        self._edit_lock = threading.Lock()
        for name, module in linear_modules(model).items():
            if isinstance(module, nn.Linear):
                parent_name, _, child = name.rpartition(".")
                layer = MixedLoraLinear(module, self.state)
                setattr(model.get_submodule(parent_name), child, layer)
                self.layers[name] = layer

    def add(self, adapter: Adapter) -> None:
        """Stacks `adapter` into its layers; a request already running finishes with the old stacks."""
        with self._edit_lock:
            if adapter.name in self.experts:
                raise RoutingError(f"expert {adapter.name!r} is already loaded")
            unknown = sorted(set(adapter.layers) - set(self.layers))
            if unknown:
                raise RoutingError(f"expert {adapter.name!r} targets layers this model lacks: {unknown[:3]}")
            with self._forward_lock:
                for module, pair in adapter.layers.items():
                    layer = self.layers[module]
                    layer.set_blocks(layer.blocks() + [(adapter.name, pair.scale, pair.A, pair.B)])
                self.experts[adapter.name] = adapter.num_parameters

    def remove(self, name: str) -> None:
        with self._edit_lock:
            if name not in self.experts:
                raise RoutingError(f"unknown expert {name!r}; loaded: {sorted(self.experts)}")
            with self._forward_lock:
                for layer in self.layers.values():
                    if any(block[0] == name for block in layer.layout):
                        layer.set_blocks([b for b in layer.blocks() if b[0] != name])
                del self.experts[name]

    def check(self, rows: Sequence[RowRoute]) -> None:
        """Rejects a batch naming unknown experts, more than MAX_TOP_K per row, or bad weights."""
        unknown = sorted({name for row in rows for name, _ in row} - set(self.experts))
        if unknown:
            raise RoutingError(f"unknown experts {unknown}; loaded: {sorted(self.experts)}")
        for i, row in enumerate(rows):
            names = [name for name, _ in row]
            if len(row) > MAX_TOP_K or len(set(names)) != len(names):
                raise RoutingError(f"row {i}: at most {MAX_TOP_K} distinct experts, got {names}")
            if any(not math.isfinite(w) or w < 0 for _, w in row):
                raise RoutingError(f"row {i}: weights must be finite and >= 0, got {[w for _, w in row]}")

    @contextmanager
    def routing(self, rows: Sequence[RowRoute]) -> Iterator[None]:
        """Every forward pass inside uses row b's experts and weights for batch row b."""
        self.check(rows)
        with self._forward_lock:
            self.state.gates = self._gates(rows)
            self.state.active = any(w for row in rows for _, w in row)
            try:
                yield
            finally:
                self.state.gates, self.state.active = {}, False

    def _gates(self, rows: Sequence[RowRoute]) -> dict[tuple, torch.Tensor]:
        names = sorted(self.experts)
        index = {name: i for i, name in enumerate(names)}
        weights = torch.zeros(len(rows), len(names))
        for b, row in enumerate(rows):
            for name, w in row:
                weights[b, index[name]] = w
        gates = {}
        for layer in self.layers.values():
            if layer.layout and layer.layout not in gates:
                cols = torch.tensor([index[n] for n, r, _ in layer.layout for _ in range(r)], dtype=torch.long)
                scale = torch.tensor([s for _, r, s in layer.layout for _ in range(r)])
                gates[layer.layout] = (weights[:, cols] * scale).to(layer.fused.device, layer.fused.dtype)
        return gates
