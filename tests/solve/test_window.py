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
from onnxsplit.solve import select
from onnxsplit.solve.dp import DPTooLarge, solve_dp
from onnxsplit.solve.plan import simple_lower_bound, stage_loads
from onnxsplit.solve.window import (
    ancestor_descendant_compute,
    cores_within,
    load_closures,
    solve_over_cores,
    stage_cores,
)

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


def up_sets(graph: CostGraph) -> list[frozenset[int]]:
    everything = frozenset(range(graph.n))
    return [everything - i for i in ideals(graph)]


def sent(graph: CostGraph, inside: frozenset[int]) -> float:
    """Cost of the tensors made inside and read outside."""
    return sum(t.cost for t in graph.tensors if t.producer in inside and any(c not in inside for c in t.consumers))


def received(graph: CostGraph, inside: frozenset[int]) -> float:
    """Cost of the tensors read inside and made outside."""
    return sum(t.cost for t in graph.tensors if t.producer not in inside and any(c in inside for c in t.consumers))


@SETTINGS
@given(graphs(max_nodes=8))
def test_load_closures_are_the_minimum_cuts(problem) -> None:
    graph, _ = problem
    compute = np.asarray(graph.compute["gpu"])
    sums = load_closures(graph, compute)
    everything = frozenset(range(graph.n))
    single_sink = sum(1 for s in graph.successors() if not s) == 1
    single_source = sum(1 for p in graph.predecessors() if not p) == 1
    for v in range(graph.n):
        before = [sum(compute[u] for u in i) + sent(graph, i) for i in ideals(graph)
                  if v in i and not (single_sink and i == everything)]
        after = [sum(compute[u] for u in i) + received(graph, i) for i in up_sets(graph)
                 if v in i and not (single_source and i == everything)]
        assert sums.before[v] == pytest.approx(min(before, default=math.inf))
        assert sums.after[v] == pytest.approx(min(after, default=math.inf))


@SETTINGS
@given(graphs(), st.floats(0.0, 1.0))
def test_plans_using_every_device_keep_the_cores_with_hand_offs(problem, slack) -> None:
    graph, devices = problem
    count = devices.count
    sums = load_closures(graph, np.asarray(graph.compute["gpu"]))
    plans = []
    for position in chains(graph, count):
        if len(set(position)) < count:  # the hand-off sums bind plans that use every device
            continue
        loads = stage_loads(graph, devices, position, list(range(count)))
        plans.append((max(sl.load for sl in loads), position))
    if not plans:
        return
    best = min(value for value, _ in plans)
    bound = best + slack * (best + 1.0)
    cores = cores_within(sums.before, sums.after, count, bound, receive=sums.receive, send=sums.send)
    for value, position in plans:
        if value <= bound:
            for p, core in enumerate(cores):
                assert all(position[v] == p for v in core), (value, bound, p, core, position)


def test_hand_offs_fix_more_nodes_than_compute() -> None:
    # A chain of 6 unit nodes on 3 devices, each hand-off costing 0.5: the optimum 3 has two nodes on each
    # device. At that bound compute alone fixes no node; with the hand-offs counted, four are fixed.
    n = 6
    graph = CostGraph(names=tuple(f"n{v}" for v in range(n)), compute={"gpu": (1.0,) * n}, memory=(0.0,) * n,
                      tensors=tuple(Tensor(f"t{v}", v, (v + 1,), cost=0.5) for v in range(n - 1)))
    devices = Devices((DeviceKind("gpu", 3),))
    assert solve_dp(graph, devices).value == pytest.approx(3.0)
    sums = load_closures(graph, np.ones(n))
    assert (sums.receive, sums.send) == (0.5, 0.5)
    assert cores_within(sums.before, sums.after, 3, 3.0, receive=0.5, send=0.5) == [[0], [2, 3], [5]]
    assert stage_cores(graph, np.ones(n), 3, 3.0) == [[], [], []]


@SETTINGS
@given(graphs(), st.floats(0.0, 1.0))
def test_solve_over_cores_finds_the_optimum_or_a_true_bound(problem, slack) -> None:
    graph, devices = problem
    optimum = solve_dp(graph, devices).value
    upper = optimum + slack * (optimum + 1.0)
    result = solve_over_cores(graph, devices, lower_bound=simple_lower_bound(graph, devices), upper_bound=upper)
    assert result.lower_bound <= optimum * (1 + 1e-9) + 1e-12
    if result.plan is not None:
        assert result.plan.value == pytest.approx(optimum)
        assert result.plan.lower_bound == result.plan.value


@SETTINGS
@given(graphs())
def test_auto_solver_over_cores_when_the_lattice_is_too_big(problem) -> None:
    graph, devices = problem
    optimum = solve_dp(graph, devices).value
    calls = []

    def first_too_large(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the first, plain DP: as if its lattice were too big, with no plan seen
            raise DPTooLarge("too many ideals (test)", lower_bound=simple_lower_bound(graph, devices))
        return solve_dp(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("onnxsplit.solve.dp.solve_dp", first_too_large)
        plan = select._auto_throughput(graph, devices, time_limit=30.0)
    assert plan.lower_bound <= optimum * (1 + 1e-9) + 1e-12
    assert plan.value >= optimum * (1 - 1e-9) - 1e-12
    if plan.gap == 0:
        assert plan.value == pytest.approx(optimum)
