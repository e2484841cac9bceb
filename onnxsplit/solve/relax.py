"""Relaxing light nodes: a provable lower bound and a near-optimal plan when the lattice is too big.

Exported graphs carry shape computations (Shape, Gather, Unsqueeze, Concat
on a handful of int64s) beside the main chain. Each such side branch
multiplies the number of ideals, yet costs next to nothing. Setting the
compute, memory and hand-off cost of these light nodes to zero can only
lower every plan's load, so the exact DP on the relaxed graph gives a lower
bound on the true contiguous optimum; zero-cost nodes fold away, so the
relaxed lattice is small. The same plan, scored on the real graph, is a
feasible contiguous plan whose value is within the light nodes' total cost
of that bound, and the gap is reported.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.dag import UnionFind
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve.coarsen import coarsen
from onnxsplit.solve.plan import Plan, Solver, make_plan
from onnxsplit.solve.window import ancestor_descendant_compute, cores_within

# A tensor this small is a shape, an index or a scalar, not an activation.
LIGHT_BYTES = 256


def light_nodes(graph: CostGraph, *, max_bytes: int = LIGHT_BYTES) -> list[int]:
    """Nodes whose every output is at most ``max_bytes`` and that hold at most that much memory."""
    largest = [0] * graph.n
    for t in graph.tensors:
        largest[t.producer] = max(largest[t.producer], t.nbytes)
    has_output = {t.producer for t in graph.tensors}
    return [v for v in range(graph.n) if v in has_output and largest[v] <= max_bytes and graph.memory[v] <= max_bytes]


def relax(graph: CostGraph, nodes: list[int]) -> CostGraph:
    """The graph with the given nodes made free: no compute, no memory, their tensors cost nothing to move."""
    free = set(nodes)
    compute = {k: tuple(0.0 if v in free else t for v, t in enumerate(times)) for k, times in graph.compute.items()}
    memory = tuple(0.0 if v in free else m for v, m in enumerate(graph.memory))
    tensors = tuple(replace(t, cost=0.0) if t.producer in free else t for t in graph.tensors)
    return replace(graph, compute=compute, memory=memory, tensors=tensors)


def attach_light(graph: CostGraph, nodes: list[int]) -> CostGraph:
    """The graph with each light node tied to a neighbour by a co-location group.

    A light node with one successor goes with it, else one with one
    predecessor goes with that: either way no plan of the grouped graph
    breaks contiguity on the real one, and the side branches stop
    multiplying the ideals. Plans of this graph are plans of the real graph
    (a restriction, so its optimum is an upper bound).
    """
    succ = graph.successors()
    pred = graph.predecessors()
    sets = UnionFind(graph.n)
    for group in graph.groups:
        for v in group[1:]:
            sets.union(v, group[0])
    for v in nodes:
        partner = succ[v][0] if len(succ[v]) == 1 else pred[v][0] if len(pred[v]) == 1 else None
        if partner is not None:
            sets.union(v, partner)
    members: dict[int, list[int]] = {}
    for v in range(graph.n):
        members.setdefault(sets.find(v), []).append(v)
    groups = tuple(tuple(sorted(m)) for m in members.values() if len(m) > 1)
    return replace(graph, groups=tuple(sorted(groups)))


def one_kind(devices: Devices) -> DeviceKind | None:
    """The only device kind with devices, or None when there are several."""
    kinds = [k for k in devices.kinds if k.count > 0]
    return kinds[0] if len(kinds) == 1 else None


def prefix_plan(graph: CostGraph, devices: Devices, kind: DeviceKind) -> Plan:
    """The contiguous plan cutting the node order (a topological one) at equal shares of compute.

    Before: ``kind`` is the only kind with devices. A prefix of a
    topological order is an ideal, so the plan is contiguous; it is a
    first upper bound, not a good plan.
    """
    compute = np.asarray(graph.compute[kind.name], dtype=np.float64)
    share = max(float(compute.sum()) / kind.count, 1e-300)
    before = np.cumsum(compute) - compute
    stage = np.minimum((before / share).astype(np.int64), kind.count - 1)
    return make_plan(graph, devices, tuple(int(s) for s in stage), tuple(range(kind.count)), solver=Solver.LINEAR)


# Trial bounds for solve_cored, as relative excess over the average load: a low trial has big cores
# and a small lattice, and either proves the optimum or shows it is higher.
TRIALS = (0.001, 0.005, 0.02, 0.1)


def solve_cored(graph: CostGraph, devices: Devices, *, bound: float = math.inf, time_limit: float = 60.0) -> Plan:
    """The exact contiguous optimum of ``graph`` when it is at most ``bound``, found over stage cores.

    Before: one device kind has devices (:func:`one_kind`). ``bound``, when
    given, is the value of some contiguous plan of ``graph`` that fits the
    devices' memory; the coarse graph's :func:`prefix_plan` lowers it when
    it can. If no plan within the bound fits memory, the result is only
    some plan within it (or DPBoundTooLow).

    Coarsening first (it keeps the optimum) makes the closure small. For a
    trial bound T, every contiguous plan with max load at most T keeps each
    stage core on one device (:mod:`onnxsplit.solve.window`), so the DP
    over the graph with the cores as co-location groups finds the optimum
    if it is at most T, and finds no plan within T otherwise. Trials run
    from just above the average load (big cores, small lattices) up to the
    bound; the first that finds a plan has found the optimum.
    Raises what :func:`~onnxsplit.solve.dp.solve_dp` raises (DPTooLarge,
    InfeasibleError, DPBoundTooLow when no plan is within ``bound``).
    """
    import time

    from onnxsplit.solve.dp import DPTooLarge, solve_dp

    kind = one_kind(devices)
    if kind is None:
        raise ValueError("stage cores need devices of one kind")
    deadline = time.monotonic() + time_limit
    coarse = coarsen(graph, devices)
    cg = coarse.graph
    compute = np.asarray(cg.compute[kind.name], dtype=np.float64)
    top = min(bound, prefix_plan(cg, devices, kind).value)
    average = float(compute.sum()) / kind.count
    trials = [average * (1 + x) for x in TRIALS if average * (1 + x) < top] + [top]
    anc, desc = ancestor_descendant_compute(cg, compute)
    for trial in trials:
        cores = cores_within(anc, desc, kind.count, trial)
        grouped = replace(cg, groups=tuple(tuple(c) for c in cores if len(c) > 1))
        try:
            plan = solve_dp(grouped, devices, time_limit=max(1.0, deadline - time.monotonic()), upper_bound=trial)
        except (InfeasibleError, DPTooLarge) as exc:
            # Below the last trial: no plan within it (the cores cannot fit), or its lattice is too big
            # while a higher trial's cores are... never smaller, so a too-big lattice ends the search.
            if trial == top or isinstance(exc, DPTooLarge):
                raise
            continue
        free = cg.n - sum(len(c) for c in cores)
        notes = plan.notes + (f"stage cores: {free} of {cg.n} coarse nodes free for plans within {trial:g}",)
        return make_plan(graph, devices, coarse.expand(plan.stage_of), plan.stage_device, solver=Solver.DP,
                         lower_bound=math.inf, notes=notes)
    raise AssertionError("the last trial either returns or raises")  # pragma: no cover
