"""The linear-order DP (PipeDream-style): contiguous ranges of one topological order.

Exact over splits that cut the node order into consecutive ranges, which is
a subset of the contiguous splits the ideal DP searches; a fast baseline and
a fallback for graphs too large for the ideal lattice. Stage k runs on
device k of ``devices.expanded()``.

A training graph is cut along the units of :mod:`onnxsplit.solve.training`
(colour classes, forward and backward members together) in their order, a
topological order of the forward precedence: every range is then a
difference of two ideals of the forward graph, each backward node rides with
its class, and a tensor is paid by a range that holds some but not all of its
ends, as the plan scorer counts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve.plan import SIMPLE_BOUND_NOTE, Plan, Solver, make_plan, simple_lower_bound
from onnxsplit.solve.training import training_units, unit_graph


@dataclass(frozen=True)
class _Arrays:
    """The graph as arrays over the node order: who makes each tensor, who reads it last, what it costs."""

    n: int
    prod: np.ndarray  # per tensor, its producer
    last: np.ndarray  # per tensor, its last reader
    cost: np.ndarray  # per tensor, its transfer cost
    pair_t: np.ndarray  # (tensor, reader) pairs: the tensor ...
    pair_c: np.ndarray  # ... and the reader
    mem_prefix: np.ndarray  # memory of nodes [0, j)

    @classmethod
    def of(cls, graph: CostGraph) -> _Arrays:
        return cls(
            n=graph.n,
            prod=np.array([t.producer for t in graph.tensors], dtype=np.int64),
            last=np.array([max(t.consumers) for t in graph.tensors], dtype=np.int64),
            cost=np.array([t.cost for t in graph.tensors], dtype=np.float64),
            pair_t=np.array([k for k, t in enumerate(graph.tensors) for _ in t.consumers], dtype=np.int64),
            pair_c=np.array([c for t in graph.tensors for c in t.consumers], dtype=np.int64),
            mem_prefix=np.concatenate([[0.0], np.cumsum(graph.memory)]),
        )


def _range_loads(g: _Arrays, i: int, compute_prefix: np.ndarray, kind: DeviceKind) -> np.ndarray:
    """Load of ranges [i, j) on ``kind`` for every j in i+1..n, as an array indexed by j (entries < i+1 unused)."""
    n, prod, last, cost, pair_t, pair_c = g.n, g.prod, g.last, g.cost, g.pair_t, g.pair_c
    load = compute_prefix - compute_prefix[i]
    if kind.communicates:
        # Receive: tensors made before i, first read at or after i, count from their first such reader on.
        sel = (prod[pair_t] < i) & (pair_c >= i)
        if sel.any():
            first = np.full(len(prod), n, dtype=np.int64)
            np.minimum.at(first, pair_t[sel], pair_c[sel])
            ok = first < n
            recv = np.zeros(n + 2)
            np.add.at(recv, first[ok] + 1, cost[ok])
            load = load + np.cumsum(recv)[: n + 1]
        # Send: tensors made in [i, j) that some node at or after j reads.
        mine = prod >= i
        if mine.any():
            send = np.zeros(n + 2)
            np.add.at(send, prod[mine] + 1, cost[mine])
            np.add.at(send, last[mine] + 1, -cost[mine])
            load = load + np.cumsum(send)[: n + 1]
    mem = g.mem_prefix - g.mem_prefix[i]
    load = np.where(mem > kind.memory, np.inf, load)
    load[: i + 1] = np.inf
    return load


def solve_linear(graph: CostGraph, devices: Devices, *, order: list[int] | None = None) -> Plan:
    """Min max-load split of the topological order into at most ``devices.count`` ranges.

    For a training graph the order is that of its units (see the module
    docstring); the plan is contiguous in the forward precedence.
    """
    if order is not None and list(order) != list(range(graph.n)):
        raise ValueError("the linear DP uses the graph's own node order")
    if graph.training:
        units = training_units(graph)
        # Units are numbered in a topological order of the forward precedence and unit_graph writes
        # every tensor from its first end in that order, so the range arithmetic below prices each
        # one by membership, which is how backward tensors are paid.
        unit_stage, k = _best_ranges(unit_graph(graph, units), devices, blocked_by_groups=False)
        stage_of = [unit_stage[units.unit_of[v]] for v in range(graph.n)]
    else:
        stage_of, k = _best_ranges(graph, devices, blocked_by_groups=True)
    return make_plan(graph, devices, stage_of, list(range(k)), solver=Solver.LINEAR,
                     lower_bound=simple_lower_bound(graph, devices), notes=(SIMPLE_BOUND_NOTE,))


def _best_ranges(graph: CostGraph, devices: Devices, *, blocked_by_groups: bool) -> tuple[list[int], int]:
    """Node -> stage of the best split of ``range(graph.n)`` into consecutive ranges, and the stage count.

    Before: node ids are a topological order of every tensor. With
    ``blocked_by_groups`` no range boundary falls inside a co-location group's span.
    Raises InfeasibleError when no split fits memory and supported kinds.
    """
    n = graph.n
    kinds = devices.expanded()
    ndev = len(kinds)
    arrays = _Arrays.of(graph)
    prefixes = {k.name: np.concatenate([[0.0], np.cumsum(graph.compute[k.name])]) for k in devices.kinds}
    # best[k][j]: min max-load of nodes [0, j) on devices 0..k-1, argbest its last cut.
    best = np.full((ndev + 1, n + 1), np.inf)
    cut = np.zeros((ndev + 1, n + 1), dtype=np.int64)
    best[:, 0] = 0.0
    # A cut inside a co-location group's span would split it.
    blocked = np.zeros(n + 1, dtype=bool)
    if blocked_by_groups:
        for group in graph.groups:
            blocked[min(group) + 1 : max(group) + 1] = True
    for i in range(n):
        if blocked[i]:
            continue
        finite = [k for k in range(ndev) if math.isfinite(best[k, i])]
        if not finite:
            continue
        cache: dict[str, np.ndarray] = {}
        for k in finite:
            kind = kinds[k]
            key = kind.name
            if key not in cache:
                cache[key] = _range_loads(arrays, i, prefixes[key], kind)
            cand = np.maximum(cache[key], best[k, i])
            cand[blocked] = np.inf
            better = cand < best[k + 1]
            best[k + 1] = np.where(better, cand, best[k + 1])
            cut[k + 1] = np.where(better, i, cut[k + 1])
    ks = [k for k in range(1, ndev + 1) if math.isfinite(best[k, n])]
    if not ks:
        raise InfeasibleError("no split into consecutive ranges fits the devices (memory or unsupported nodes)")
    k = min(ks, key=lambda k: (best[k, n], k))
    stage_of = [0] * n
    j = n
    for stage in range(k, 0, -1):
        i = int(cut[stage, j])
        for v in range(i, j):
            stage_of[v] = stage - 1
        j = i
    return stage_of, k
