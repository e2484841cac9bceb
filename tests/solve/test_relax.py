"""Relaxed and cored solving: exact over stage cores, and every bound at most the brute-force optimum."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.solve import select
from onnxsplit.solve.dp import solve_dp
from onnxsplit.solve.plan import check_plan
from onnxsplit.solve.relax import one_kind, prefix_plan, solve_cored

from bruteforce import best_chain_load
from cases import hsettings

SETTINGS = hsettings(120)


@st.composite
def problems(draw, *, max_nodes: int = 7):
    """A random DAG on one device kind, with small (light) and big tensors, and memory that may bind."""
    n = draw(st.integers(1, max_nodes))
    edges = [(u, v) for u in range(n) for v in range(u + 1, n) if draw(st.booleans()) and draw(st.booleans())]
    compute = tuple(draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0])) for _ in range(n))
    memory = tuple(draw(st.sampled_from([0.0, 0.0, 1.0, 3.0])) for _ in range(n))
    tensors = []
    for u in range(n):
        outs = tuple(v for a, v in edges if a == u)
        if outs:
            nbytes = draw(st.sampled_from([8, 64, 4096]))
            tensors.append(Tensor(f"t{u}", u, outs, nbytes=nbytes, cost=draw(st.sampled_from([0.0, 0.25, 1.0, 2.5]))))
    graph = CostGraph(names=tuple(f"n{v}" for v in range(n)), compute={"gpu": compute}, memory=memory,
                      tensors=tuple(tensors))
    devices = Devices((DeviceKind("gpu", draw(st.integers(1, 3)), memory=draw(st.sampled_from([math.inf, 6.0]))),))
    return graph, devices


def brute_force(graph: CostGraph, devices: Devices) -> float:
    """Best max load over assignments to devices whose device graph is acyclic, within memory."""
    assignments = itertools.product(range(devices.count), repeat=graph.n)
    return best_chain_load(graph, devices, assignments, graph.edges())


@SETTINGS
@given(problems())
def test_cored_dp_equals_the_dp(problem) -> None:
    graph, devices = problem
    try:
        expected = solve_dp(graph, devices).value
    except Exception as exc:  # infeasible: the cored DP must refuse too
        with pytest.raises(type(exc)):
            solve_cored(graph, devices)
        return
    plan = solve_cored(graph, devices, bound=expected)
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_prefix_plan_is_contiguous_and_balanced() -> None:
    n = 8
    graph = CostGraph(names=tuple(f"n{v}" for v in range(n)), compute={"gpu": (1.0,) * n}, memory=(0.0,) * n,
                      tensors=tuple(Tensor(f"t{v}", v, (v + 1,), cost=0.1) for v in range(n - 1)))
    devices = Devices((DeviceKind("gpu", 4),))
    kind = one_kind(devices)
    plan = prefix_plan(graph, devices, kind)
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.stage_of == (0, 0, 1, 1, 2, 2, 3, 3)
    assert one_kind(Devices((DeviceKind("a", 1), DeviceKind("b", 2)))) is None
    assert one_kind(Devices((DeviceKind("a", 0), DeviceKind("b", 2)))).name == "b"


@SETTINGS
@given(problems())
def test_cored_relaxed_bound_is_a_proof(problem) -> None:
    graph, devices = problem
    optimum = brute_force(graph, devices)
    old = select.RELAXED_LATTICE_NODES
    select.RELAXED_LATTICE_NODES = -1  # every graph with a light node takes the cored path
    try:
        plan = select._relaxed_dp(graph, devices, time_limit=30.0)
    finally:
        select.RELAXED_LATTICE_NODES = old
    if plan is None:
        return
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.lower_bound <= optimum * (1 + 1e-9) + 1e-12, plan.notes
    assert optimum <= plan.value * (1 + 1e-9) + 1e-12
