"""Per-row sparse LoRA mixing inside one batched forward pass.

Semantics, for every adapted linear and batch row b:
    y[b] = W x[b] + sum_k g[b,k] * s_e * B_e A_e x[b],   e = idx[b,k],  k <= 4
A row with no expert gets exactly W x[b].

How: the routing is cut into runs, consecutive batch rows whose k-th expert is the same. A run is a
contiguous slice of the batch, so its LoRA term is z = A_e x[run], then one in-place `addmm_` into that
slice of the base output. There are no gathers or scatters, and each row pays the FLOPs of its own experts
only. Sibling projections that read the same input (q/k/v; gate/up) form a `LoraGroup`, which stacks each
expert's A over the siblings, so one GEMM per run gives all of their z. The base linears are untouched and
run as before, so a batch without experts is the base model, op for op.

Callers sort rows by their experts (`TorchBackend` does) so that runs are long; any order is correct.
bench/mixing.py measures this against the base model and PEFT. Alternatives measured on this CPU: stacking
every expert and gating in rank space (one LoRA of rank sum(r_e) per row) costs every row the FLOPs of all
loaded experts; a per-expert bmm on gathered rows pays as much for `index_add_` as it saves; fusing the
siblings' base weights into one GEMM makes the gate/up outputs strided, and the elementwise ops after them
slower.

Routing is explicit data: `LoraMixer.routing(rows)` takes one list of (expert, weight) pairs per batch
row, for the duration of one generate call.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from experts.adapters import Adapter, LoraPair

MAX_TOP_K = 4
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
RowRoute = Sequence[tuple[str, float]]
"""One batch row's experts and weights; empty means the plain base model."""


class RoutingError(ValueError):
    """A batch names unknown experts, too many experts per row, or bad weights."""


@dataclass(frozen=True)
class Run:
    """Batch rows [start, stop) that have the same expert in one routing slot."""

    expert: str
    start: int
    stop: int
    weight: float | torch.Tensor  # one weight for the whole run, or (n, 1, 1) per row


@dataclass
class MixState:
    """What every group reads during one forward pass."""

    runs: tuple[Run, ...] = ()


@dataclass(frozen=True)
class MemberLora:
    """One expert's B on one member of a group; its rank-space inputs are columns [start, stop) of z."""

    start: int
    stop: int
    Bt: torch.Tensor  # (r, d_out), a transposed view of PEFT's B (d_out, r)
    scale: float


@dataclass(frozen=True)
class GroupLora:
    """One expert's LoRA on one group: the A of every member it adapts, stacked so one GEMM serves them all."""

    A: torch.Tensor  # (R, d_in), R = sum of the members' ranks
    members: dict[int, MemberLora]

    @classmethod
    def stack(cls, pairs: dict[int, LoraPair]) -> GroupLora:
        """Copies every A, then every B, into one buffer, so the adapter's loaded tensors are freed whole."""
        order = sorted(pairs)
        buffer = torch.cat([pairs[m].A.reshape(-1) for m in order] + [pairs[m].B.reshape(-1) for m in order])
        rows = sum(pairs[m].rank for m in order)
        A = buffer[:rows * pairs[order[0]].A.shape[1]].view(rows, -1)
        members, offset, start = {}, A.numel(), 0
        for m in order:
            pair = pairs[m]
            Bt = buffer[offset:offset + pair.B.numel()].view(pair.B.shape).t()
            members[m] = MemberLora(start, start + pair.rank, Bt, pair.scale)
            offset, start = offset + pair.B.numel(), start + pair.rank
        return cls(A, members)

    @property
    def num_parameters(self) -> int:
        return self.A.numel() + sum(m.Bt.numel() for m in self.members.values())


class LoraGroup:
    """Linears that read the same input: per run, one GEMM gives every member's rank-space values z = A x."""

    def __init__(self, state: MixState, size: int):
        self.state = state
        self.size = size
        self.experts: dict[str, GroupLora] = {}
        self._input, self._z, self._pending = None, {}, 0

    def add(self, x: torch.Tensor, member: int, y: torch.Tensor) -> None:
        """y[rows] += weight * scale * B (A x[rows]) for every run whose expert adapts `member`, in place."""
        if self._input is not x:
            self._input, self._z, self._pending = x, {}, self.size
        experts = self.experts
        for i, run in enumerate(self.state.runs):
            lora = experts.get(run.expert)
            part = lora.members.get(member) if lora is not None else None
            if part is None:
                continue
            z = self._z.get(i)
            if z is None:
                z = self._z[i] = _rank_space(x[run.start:run.stop], lora.A, run.weight)
            target = y[run.start:run.stop]
            alpha = part.scale if isinstance(run.weight, torch.Tensor) else part.scale * run.weight
            target.view(-1, target.shape[-1]).addmm_(z[:, part.start:part.stop], part.Bt, alpha=alpha)
        self._pending -= 1
        if self._pending == 0:
            self._input, self._z = None, {}


def _rank_space(rows: torch.Tensor, A: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """rows: (n, T, d_in) -> (n*T, R); per-row weights are applied here, a run-wide one later as alpha"""
    z = rows.reshape(-1, rows.shape[-1]) @ A.t()
    if isinstance(weight, torch.Tensor):
        z = (z.view(rows.shape[0], -1, z.shape[-1]) * weight).view(z.shape)
    return z


class Projection(nn.Module):
    """Stands in for one nn.Linear of the base model: the same weights, plus its group's LoRA runs."""

    def __init__(self, linear: nn.Linear, group: LoraGroup, member: int):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        object.__setattr__(self, "group", group)  # not a child: the group is owned by the mixer
        self.member = member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.group.state.runs:
            self.group.add(x, self.member, y)
        return y


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


def cut_runs(rows: Sequence[RowRoute], device: torch.device | str = "cpu",
         dtype: torch.dtype = torch.float32) -> tuple[Run, ...]:
    """Cuts a batch's routing into runs: maximal ranges of consecutive rows whose k-th expert is the same."""
    out = []
    for slot in range(max((len(row) for row in rows), default=0)):
        picks = [row[slot] if slot < len(row) and row[slot][1] > 0 else None for row in rows]
        start = 0
        while start < len(picks):
            if picks[start] is None:
                start += 1
                continue
            stop = start + 1
            while stop < len(picks) and picks[stop] is not None and picks[stop][0] == picks[start][0]:
                stop += 1
            weights = [w for _, w in picks[start:stop]]
            weight = weights[0] if len(set(weights)) == 1 else \
                torch.tensor(weights, dtype=dtype, device=device).view(-1, 1, 1)
            out.append(Run(picks[start][0], start, stop, weight))
            start = stop
    return tuple(out)


class LoraMixer:
    """Owns the fused projection groups of one base model and the experts loaded into them."""

    def __init__(self, model: nn.Module):
        self.state = MixState()
        self.layers: dict[str, Projection] = {}
        self.groups: list[LoraGroup] = []
        self.experts: dict[str, int] = {}  # name -> parameter count
        self._forward_lock = threading.Lock()  # one batch at a time; edits wait for the batch in flight
        self._edit_lock = threading.Lock()
        linears = linear_modules(model)
        if any(isinstance(m, Projection) for m in linears.values()):
            raise RoutingError("this model already has a LoraMixer")
        for names in _groups(linears):
            group = LoraGroup(self.state, len(names))
            self.groups.append(group)
            for member, name in enumerate(names):
                parent, _, child = name.rpartition(".")
                layer = Projection(linears[name], group, member)
                setattr(model.get_submodule(parent), child, layer)
                self.layers[name] = layer
        weight = next(iter(self.layers.values())).weight
        self._device, self._dtype = weight.device, weight.dtype

    def add(self, adapter: Adapter) -> None:
        """Loads `adapter` into its layers; a request already running finishes first."""
        with self._edit_lock:
            if adapter.name in self.experts:
                raise RoutingError(f"expert {adapter.name!r} is already loaded")
            unknown = sorted(set(adapter.layers) - set(self.layers))
            if unknown:
                raise RoutingError(f"expert {adapter.name!r} targets layers this model lacks: {unknown[:3]}")
            per_group: dict[int, tuple[LoraGroup, dict[int, LoraPair]]] = {}
            for module, pair in adapter.layers.items():
                layer = self.layers[module]
                per_group.setdefault(id(layer.group), (layer.group, {}))[1][layer.member] = pair
            loras = [(group, GroupLora.stack(pairs)) for group, pairs in per_group.values()]
            with self._forward_lock:
                for group, lora in loras:
                    group.experts = {**group.experts, adapter.name: lora}
                self.experts[adapter.name] = adapter.num_parameters

    def remove(self, name: str) -> None:
        with self._edit_lock:
            if name not in self.experts:
                raise RoutingError(f"unknown expert {name!r}; loaded: {sorted(self.experts)}")
            with self._forward_lock:
                for group in self.groups:
                    if name in group.experts:
                        group.experts = {k: v for k, v in group.experts.items() if k != name}
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
            self.state.runs = cut_runs(rows, self._device, self._dtype)
            try:
                yield
            finally:
                self.state.runs = ()
