"""Per-row sparse LoRA mixing inside one batched forward pass.

Semantics, for every adapted linear and batch row b:
    y[b] = W x[b] + sum_k g[b,k] * s_e * B_e A_e x[b],   e = idx[b,k],  k <= 4
A row with no expert gets exactly W x[b].

How: sibling projections that read the same input (q/k/v; gate/up) form one `FusedProjections`
group. Its weight stacks the members' base weights and every expert's A matrices,
    fused = [W_q; W_k; W_v; A_(q,e1); A_(k,e1); ...]      (D + R, d_in)
so the base projections and all experts' rank-space projections are a single GEMM. The per-row gate
then weights the rank columns, z = (A x) * gate, and one `addmm` per member adds B z. A weighted
top-k mix is one LoRA of rank sum(r_e) per row, so top-2 costs what top-1 costs. Gathering each row's
own adapters or sorting rows into per-expert segments cost more than they save at this model size
(see bench/mixing.py and PLATFORM.md's figures).

Routing is explicit data: `LoraMixer.routing(rows)` takes one list of (expert, weight) pairs per batch
row, for the duration of one generate call.
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
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
RowRoute = Sequence[tuple[str, float]]
"""One batch row's experts and weights; empty means the plain base model."""


class RoutingError(ValueError):
    """A batch names unknown experts, too many experts per row, or bad weights."""


@dataclass
class MixState:
    """What every group reads during one forward pass: the rank-space gate per column layout."""

    gates: dict[tuple, torch.Tensor] = field(default_factory=dict)  # layout -> (B, R)
    active: bool = False
    fuse_base: bool = True  # one GEMM for [W; A]; False runs W x and A x as two GEMMs on views of the stack


@dataclass(frozen=True)
class Block:
    """One expert's LoRA on one member of a group."""

    member: int
    expert: str
    scale: float
    A: torch.Tensor  # (r, d_in)
    B: torch.Tensor  # (d_out, r)


class FusedProjections(nn.Module):
    """Linears that read the same input, computed together with every expert's A projection.

    Shapes: fused (D + R, d_in), D = sum of members' d_out, R = sum of block ranks; B[i] (d_out_i, R_i);
    the layout lists (member, expert, rank, scale) per block, ordered by member.
    """

    def __init__(self, linears: list[nn.Linear], state: MixState):
        super().__init__()
        self.state = state
        self.sizes = [m.out_features for m in linears]
        self.biases = [m.bias for m in linears]
        self.fused = torch.cat([m.weight.detach() for m in linears], dim=0)
        self.layout: tuple[tuple[int, str, int, float], ...] = ()
        self._set_b([])
        self._input = self._outputs = None
        self._pending: set[int] = set()

    def output(self, x: torch.Tensor, member: int) -> torch.Tensor:
        """Member `member`'s output; the first member called with `x` computes all of them."""
        if self._input is not x:
            self._input, self._outputs, self._pending = x, self._compute(x), set(range(len(self.sizes)))
        out = self._outputs[member]
        self._pending.discard(member)
        if not self._pending:
            self._input = self._outputs = None
        return out

    def _compute(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, T, d_in) -> one (B, T, d_out_i) per member"""
        total = sum(self.sizes)
        if not self.layout or not self.state.active:
            outs = list(F.linear(x, self.fused[:total]).split(self.sizes, dim=-1))
        else:
            if self.state.fuse_base:
                h = F.linear(x, self.fused)  # (B, T, D + R)
                y, z = h.split([total, h.shape[-1] - total], dim=-1)
            else:
                y, z = F.linear(x, self.fused[:total]), F.linear(x, self.fused[total:])
            z = (z * self.state.gates[self.layout][:, None, :]).reshape(-1, z.shape[-1])
            outs = list(y.reshape(-1, total).split(self.sizes, dim=-1))
            for i, (start, stop) in enumerate(self._columns):
                if stop > start:
                    outs[i] = torch.addmm(outs[i], z[:, start:stop], self.B[i].t())
            outs = [o.view(*x.shape[:-1], o.shape[-1]) for o in outs]
        return [o if b is None else o + b for o, b in zip(outs, self.biases)]

    def blocks(self) -> list[Block]:
        total, out = sum(self.sizes), []
        row, cols = total, [0] * len(self.sizes)
        for member, expert, rank, scale in self.layout:
            c = cols[member]
            out.append(Block(member, expert, scale, self.fused[row:row + rank], self.B[member][:, c:c + rank]))
            row, cols[member] = row + rank, c + rank
        return out

    def set_blocks(self, blocks: list[Block]) -> None:
        """Rebuilds the stacks; the base weights are moved into the new stack, never kept twice."""
        blocks = sorted(blocks, key=lambda b: b.member)  # stable: experts keep their order per member
        base = self.fused[: sum(self.sizes)]
        self.fused = torch.cat([base, *(b.A for b in blocks)], dim=0) if blocks else base.clone()
        self.layout = tuple((b.member, b.expert, b.A.shape[0], b.scale) for b in blocks)
        self._set_b(blocks)

    def _set_b(self, blocks: list[Block]) -> None:
        self.B, self._columns, start = [], [], 0
        for i, size in enumerate(self.sizes):
            mine = [b.B for b in blocks if b.member == i]
            self.B.append(torch.cat(mine, dim=1) if mine else self.fused.new_zeros(size, 0))
            self._columns.append((start, start + self.B[-1].shape[1]))
            start = self._columns[-1][1]


class Projection(nn.Module):
    """Stands in for one nn.Linear of the base model and returns its member's slice of the group."""

    def __init__(self, group: FusedProjections, member: int, in_features: int, out_features: int):
        super().__init__()
        object.__setattr__(self, "group", group)  # not a child: the group is owned by the mixer
        self.member, self.in_features, self.out_features = member, in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(x, self.member)


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The linears LoRA may adapt: every nn.Linear (or its stand-in) except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, Projection)) and m is not head}


def _groups(linears: dict[str, nn.Linear]) -> list[list[str]]:
    """Module names grouped by shared input: SHARED_INPUT_GROUPS siblings, every other linear alone."""
    groups, taken = [], set()
    for name in linears:
        parent, _, child = name.rpartition(".")
        for pattern in SHARED_INPUT_GROUPS:
            siblings = [f"{parent}.{c}" if parent else c for c in pattern]
            if child == pattern[0] and all(s in linears for s in siblings) \
                    and len({linears[s].in_features for s in siblings}) == 1:
                groups.append(siblings)
                taken.update(siblings)
    return groups + [[name] for name in linears if name not in taken]


class LoraMixer:
    """Owns the fused projection groups of one base model and the set of experts stacked in them."""

    def __init__(self, model: nn.Module):
        self.state = MixState()
        self.layers: dict[str, Projection] = {}
        self.groups: list[FusedProjections] = []
        self.experts: dict[str, int] = {}  # name -> parameter count
        self._forward_lock = threading.Lock()  # one batch at a time; edits wait for the batch in flight
        self._edit_lock = threading.Lock()
        linears = linear_modules(model)
        if any(isinstance(m, Projection) for m in linears.values()):
            raise RoutingError("this model already has a LoraMixer")
        for names in _groups(linears):
            group = FusedProjections([linears[n] for n in names], self.state)
            self.groups.append(group)
            for member, name in enumerate(names):
                parent, _, child = name.rpartition(".")
                layer = Projection(group, member, linears[name].in_features, linears[name].out_features)
                setattr(model.get_submodule(parent), child, layer)
                self.layers[name] = layer

    def add(self, adapter: Adapter) -> None:
        """Stacks `adapter` into its layers; a request already running finishes with the old stacks."""
        with self._edit_lock:
            if adapter.name in self.experts:
                raise RoutingError(f"expert {adapter.name!r} is already loaded")
            unknown = sorted(set(adapter.layers) - set(self.layers))
            if unknown:
                raise RoutingError(f"expert {adapter.name!r} targets layers this model lacks: {unknown[:3]}")
            new: dict[int, list[Block]] = {}
            for module, pair in adapter.layers.items():
                layer = self.layers[module]
                new.setdefault(id(layer.group), []).append(Block(layer.member, adapter.name, pair.scale,
                                                                 pair.A, pair.B))
            with self._forward_lock:
                for group in self.groups:
                    if id(group) in new:
                        group.set_blocks(group.blocks() + new[id(group)])
                self.experts[adapter.name] = adapter.num_parameters

    def remove(self, name: str) -> None:
        with self._edit_lock:
            if name not in self.experts:
                raise RoutingError(f"unknown expert {name!r}; loaded: {sorted(self.experts)}")
            with self._forward_lock:
                for group in self.groups:
                    if any(entry[1] == name for entry in group.layout):
                        group.set_blocks([b for b in group.blocks() if b.expert != name])
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
        """(B, R) gate per distinct layout: column c carries weight(row, expert of c) * scale of c."""
        names = sorted(self.experts)
        index = {name: i for i, name in enumerate(names)}
        weights = torch.zeros(len(rows), len(names))
        for b, row in enumerate(rows):
            for name, w in row:
                weights[b, index[name]] = w
        gates = {}
        for group in self.groups:
            if group.layout and group.layout not in gates:
                cols = torch.tensor([index[e] for _, e, r, _ in group.layout for _ in range(r)], dtype=torch.long)
                scale = torch.tensor([s for _, _, r, s in group.layout for _ in range(r)])
                gates[group.layout] = (weights[:, cols] * scale).to(group.fused.device, group.fused.dtype)
        return gates
