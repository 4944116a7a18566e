"""Per-row sparse LoRA mixing inside one batched forward pass.

Semantics, for every adapted linear and batch row b:
    y[b] = W x[b] + sum_k g[b,k] * s_e * B_e A_e x[b],   e = idx[b,k],  k <= 4
A row with no expert gets exactly W x[b].

How, in prefill: the routing is cut into runs, consecutive batch rows whose k-th expert is the same. A
run is a contiguous slice of the batch, so its LoRA term is z = A_e x[run], then one in-place `addmm_`
into that slice of the base output. There are no gathers or scatters, and each row pays the FLOPs of its
own experts only. Sibling projections that read the same input (q/k/v; gate/up) form a `LoraGroup`, so
one GEMM per run gives all of their z. The base linears are untouched and run as before, so a batch
without experts is the base model, op for op.

In decode (one token per row) the weights are read once per step whichever way, and per-op overhead
dominates, so when a batch has at least as many runs as experts one GEMM covers every expert's stacked A
and the gate weights z per row and column, zero for experts a row does not use (one LoRA of rank sum(r_e)).
Both ways read the same buffers (`Stacks`), so every weight is held once.

Callers sort rows by their experts (`TorchBackend` does) so that runs are long; any order is correct.
bench/mixing.py measures this against the base model and PEFT. Alternatives measured on this CPU: the
stacked way in prefill costs every row the FLOPs of all loaded experts; a per-expert bmm on gathered rows
pays as much for `index_add_` as it saves; fusing the siblings' base weights into one GEMM makes the
gate/up outputs strided, and the elementwise ops after them slower.

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


Layout = tuple[tuple[str, int, float], ...]
"""Per block of rows of a group's stacked A, in order: (expert, rank, scale)."""


@dataclass
class MixState:
    """What every group reads during one forward pass: the runs, and for the decode path one gate per layout."""

    runs: tuple[Run, ...] = ()
    gates: dict[Layout, torch.Tensor] = field(default_factory=dict)  # layout -> (B, R)


@dataclass(frozen=True)
class MemberLora:
    """One expert's B on one member of a group; its rank-space inputs are columns [start, stop) of z."""

    start: int
    stop: int
    Bt: torch.Tensor  # (r, d_out), a transposed view of PEFT's B (d_out, r)
    scale: float


@dataclass(frozen=True)
class GroupLora:
    """One expert's LoRA on one group: the A of every member it adapts, in consecutive rows, so one GEMM serves
    them all. A and every Bt are views into the group's `Stacks`."""

    A: torch.Tensor  # (R_e, d_in), R_e = sum of the members' ranks
    members: dict[int, MemberLora]

    @property
    def num_parameters(self) -> int:
        return self.A.numel() + sum(m.Bt.numel() for m in self.members.values())

    def pairs(self) -> dict[int, LoraPair]:
        return {m: LoraPair(self.A[p.start:p.stop], p.Bt.t(), p.scale) for m, p in self.members.items()}


@dataclass(frozen=True)
class Stacks:
    """Every expert's LoRA on one group, held once: A stacked expert by expert (R, d_in), and per member its
    experts' B side by side (d_out, R_m), in the same expert order, or None when no expert adapts it.
    `columns[m]` says which columns of z = A x feed member m's B (None: all of them, in order)."""

    A: torch.Tensor
    B: tuple[torch.Tensor | None, ...]
    columns: tuple[torch.Tensor | None, ...]
    layout: Layout
    experts: dict[str, GroupLora]

    @classmethod
    def build(cls, pairs: dict[str, dict[int, LoraPair]], size: int, like: torch.Tensor) -> Stacks:
        """Copies the weights into fresh buffers, so the adapter's loaded tensors (or the old stacks) are freed;
        `like` is any (rows, d_in) tensor of the group, for the device, dtype and width of an empty stack."""
        blocks = [(name, m, pairs[name][m]) for name in pairs for m in sorted(pairs[name])]
        A = torch.cat([p.A for _, _, p in blocks]) if blocks else like.new_zeros(0, like.shape[1])
        B = tuple(torch.cat(mine, dim=1) if (mine := [p.B for _, m, p in blocks if m == member]) else None
                  for member in range(size))
        columns, offsets, row = [[] for _ in range(size)], [0] * size, 0
        experts: dict[str, dict[int, MemberLora]] = {}
        starts: dict[str, int] = {}
        for name, m, pair in blocks:
            starts.setdefault(name, row)
            local = row - starts[name]
            Bt = B[m][:, offsets[m]:offsets[m] + pair.rank].t()
            experts.setdefault(name, {})[m] = MemberLora(local, local + pair.rank, Bt, pair.scale)
            columns[m].extend(range(row, row + pair.rank))
            offsets[m] += pair.rank
            row += pair.rank
        views = {name: GroupLora(A[starts[name]:starts[name] + sum(p.stop - p.start for p in members.values())],
                                 members) for name, members in experts.items()}
        return cls(A, B, tuple(None if c == list(range(row)) else torch.tensor(c, device=A.device) for c in columns),
                   tuple((name, pair.rank, pair.scale) for name, _, pair in blocks), views)


class LoraGroup:
    """Linears that read the same input, and the LoRA of every loaded expert on them.

    Two ways to add the LoRA terms, chosen per forward pass. Runs (prefill): per run, one GEMM gives every
    member's z = A_e x[run], then one `addmm_` per member into that slice of its output; FLOPs are each row's
    own experts'. Stacked (decode, one token per row, when there are at least as many runs as experts): one GEMM
    over every expert's A for the whole batch, z weighted per row and column by the gate (zero for experts the row
    does not use), one `addmm_` per member. At one token per row the weights are read either way and the extra
    FLOPs are small, while the stacked way needs a handful of ops instead of a few per run.
    """

    def __init__(self, state: MixState, size: int, like: torch.Tensor):
        self.state = state
        self.size = size
        self.stacks = Stacks.build({}, size, like)
        self._input, self._z, self._pending = None, {}, 0

    @property
    def experts(self) -> dict[str, GroupLora]:
        return self.stacks.experts

    def rebuilt(self, add: dict[str, dict[int, LoraPair]] | None = None, remove: str | None = None) -> Stacks:
        """New stacks with `add` appended and `remove` left out; swapping them in is the caller's job."""
        pairs = {name: lora.pairs() for name, lora in self.stacks.experts.items() if name != remove}
        return Stacks.build({**pairs, **(add or {})}, self.size, self.stacks.A)

    def add(self, x: torch.Tensor, member: int, y: torch.Tensor) -> None:
        """y += the LoRA terms of `member` for every row, in place; the first member called with `x` computes z."""
        if self._input is not x:
            self._input, self._z, self._pending = x, {}, self.size
        stacks = self.stacks
        if x.dim() == 3 and x.shape[1] == 1 and len(self.state.runs) >= len(stacks.experts):
            self._add_stacked(x, member, y, stacks)
        else:
            self._add_runs(x, member, y, stacks)
        self._pending -= 1
        if self._pending == 0:
            self._input, self._z = None, {}

    def _add_runs(self, x: torch.Tensor, member: int, y: torch.Tensor, stacks: Stacks) -> None:
        for i, run in enumerate(self.state.runs):
            lora = stacks.experts.get(run.expert)
            part = lora.members.get(member) if lora is not None else None
            if part is None:
                continue
            z = self._z.get(i)
            if z is None:
                z = self._z[i] = _rank_space(x[run.start:run.stop], lora.A, run.weight)
            target = y[run.start:run.stop]
            alpha = part.scale if isinstance(run.weight, torch.Tensor) else part.scale * run.weight
            target.view(-1, target.shape[-1]).addmm_(z[:, part.start:part.stop], part.Bt, alpha=alpha)

    def _add_stacked(self, x: torch.Tensor, member: int, y: torch.Tensor, stacks: Stacks) -> None:
        if stacks.B[member] is None:
            return
        z = self._z.get("stacked")
        if z is None:
            z = self._z["stacked"] = (x.reshape(-1, x.shape[-1]) @ stacks.A.t()).mul_(self.state.gates[stacks.layout])
        columns = stacks.columns[member]
        y.view(-1, y.shape[-1]).addmm_(z if columns is None else z.index_select(1, columns), stacks.B[member].t())


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
    """Owns the LoRA groups of one base model and the experts loaded into them."""

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
            group = LoraGroup(self.state, len(names), linears[names[0]].weight)
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
            stacks = [(group, group.rebuilt(add={adapter.name: pairs})) for group, pairs in per_group.values()]
            with self._forward_lock:
                for group, new in stacks:
                    group.stacks = new
                self.experts[adapter.name] = adapter.num_parameters

    def remove(self, name: str) -> None:
        with self._edit_lock:
            if name not in self.experts:
                raise RoutingError(f"unknown expert {name!r}; loaded: {sorted(self.experts)}")
            stacks = [(group, group.rebuilt(remove=name)) for group in self.groups if name in group.experts]
            with self._forward_lock:
                for group, new in stacks:
                    group.stacks = new
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
            self.state.gates = self._gates(rows)
            try:
                yield
            finally:
                self.state.runs, self.state.gates = (), {}

    def _gates(self, rows: Sequence[RowRoute]) -> dict[Layout, torch.Tensor]:
        """(B, R) per distinct layout: column c carries weight(row, expert of c) * scale of c, 0 if unused."""
        index = {name: i for i, name in enumerate(sorted(self.experts))}
        weights = torch.zeros(len(rows), len(index))
        for b, row in enumerate(rows):
            for name, w in row:
                weights[b, index[name]] = w
        gates = {}
        for group in self.groups:
            layout = group.stacks.layout
            if layout and layout not in gates:
                cols = torch.tensor([index[e] for e, r, _ in layout for _ in range(r)], dtype=torch.long)
                scale = torch.tensor([s for _, r, s in layout for _ in range(r)])
                gates[layout] = (weights[:, cols] * scale).to(self._device, self._dtype)
        return gates
