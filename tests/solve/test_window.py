"""Stage cores: every contiguous plan within the bound keeps each core on its stage, checked by enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.solve.plan import stage_loads
from onnxsplit.solve.window import ancestor_descendant_compute, stage_cores

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def graphs(draw, *, max_nodes: int = 8):
    """A random DAG on one device kind: compute, tensors with costs, and a device count."""
    n = draw(st.integers(1, max_nodes))
    edges = [(u, v) for u in range(n) for v in range(u + 1, n) if draw(st.booleans()) and draw(st.booleans())]
    compute = tuple(draw(st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0])) for _ in range(n))
    tensors = []
    for u in range(n):
        outs = tuple(v for a, v in edges if a == u)
        if outs:
            tensors.append(Tensor(f"t{u}", u, outs, cost=draw(st.sampled_from([0.0, 0.5, 1.0, 2.5]))))
    graph = CostGraph(names=tuple(f"n{v}" for v in range(n)), compute={"gpu": compute}, memory=(0.0,) * n,
                      tensors=tuple(tensors))
    count = draw(st.integers(1, 3))
    return graph, Devices((DeviceKind("gpu", count),))


def ideals(graph: CostGraph) -> list[frozenset[int]]:
    preds = graph.predecessors()
    out = []
    for mask in range(1 << graph.n):
        members = frozenset(v for v in range(graph.n) if mask >> v & 1)
        if all(u in members for v in members for u in preds[v]):
            out.append(members)
    return out


def chains(graph: CostGraph, count: int):
    """Every chain {} <= I_1 <= ... <= I_{count-1} <= V of ideals, as node -> position."""
    every = ideals(graph)
    for middle in itertools.product(every, repeat=count - 1):
        bounds = [frozenset(), *middle, frozenset(range(graph.n))]
        if all(a <= b for a, b in itertools.pairwise(bounds)):
            position = [0] * graph.n
            for p in range(1, count + 1):
                for v in bounds[p] - bounds[p - 1]:
                    position[v] = p - 1
            yield position


def closure(graph: CostGraph, v: int, forward: bool) -> set[int]:
    step = graph.successors() if forward else graph.predecessors()
    seen, stack = {v}, [v]
    while stack:
        for w in step[stack.pop()]:
            if w not in seen:
                seen.add(w)
                stack.append(w)
    return seen


@SETTINGS
@given(graphs(max_nodes=10))
def test_ancestor_and_descendant_compute(problem) -> None:
    graph, _ = problem
    compute = np.asarray(graph.compute["gpu"])
    anc, desc = ancestor_descendant_compute(graph, compute)
    for v in range(graph.n):
        assert anc[v] == pytest.approx(sum(compute[u] for u in closure(graph, v, False)))
        assert desc[v] == pytest.approx(sum(compute[u] for u in closure(graph, v, True)))


@SETTINGS
@given(graphs(), st.floats(0.0, 1.0))
def test_every_plan_within_the_bound_keeps_the_cores(problem, slack) -> None:
    graph, devices = problem
    count = devices.count
    plans = []
    for position in chains(graph, count):
        loads = stage_loads(graph, devices, position, list(range(count)))
        plans.append((max(sl.load for sl in loads), position))
    best = min(value for value, _ in plans)
    # Bounds from the optimum up to well above it: the cores shrink as the bound grows, never wrong.
    bound = best + slack * (best + 1.0)
    cores = stage_cores(graph, np.asarray(graph.compute["gpu"]), count, bound)
    assert len(cores) == count
    for value, position in plans:
        if value <= bound:
            for p, core in enumerate(cores):
                assert all(position[v] == p for v in core), (value, bound, p, core, position)


def test_chain_cores_at_the_optimum() -> None:
    # A chain of 6 unit nodes on 3 devices with free hand-offs: at the optimum 2 every node is fixed.
    n = 6
    graph = CostGraph(names=tuple(f"n{v}" for v in range(n)), compute={"gpu": (1.0,) * n}, memory=(0.0,) * n,
                      tensors=tuple(Tensor(f"t{v}", v, (v + 1,)) for v in range(n - 1)))
    assert stage_cores(graph, np.ones(n), 3, 2.0) == [[0, 1], [2, 3], [4, 5]]
    # With room to spare fewer nodes are fixed; at 3 a device may stay empty, so none is.
    assert stage_cores(graph, np.ones(n), 3, 2.5) == [[0], [2, 3], [5]]
    assert stage_cores(graph, np.ones(n), 3, 3.0) == [[], [], []]
    assert stage_cores(graph, np.ones(n), 3, math.inf) == []
