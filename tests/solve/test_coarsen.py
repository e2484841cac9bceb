"""Reductions that keep the contiguous optimum: ideals enumerated within a bound, and the search below a plan's value."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve.bounded import IdealBudget, enumerate_bounded_ideals, search_below, simple_bound
from onnxsplit.solve.chain import solve_lattice
from onnxsplit.solve.coarsen import coarsen
from onnxsplit.solve.dp import DPTooLarge, solve_dp, solve_dp_with_stats
from onnxsplit.solve.lattice import Problem, enumerate_ideals, unpack_bits
from onnxsplit.solve.plan import check_plan

from cases import hsettings, two_kind_problems

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference-graphs"
INF = math.inf
FAR = {"max_ideals": 10**6, "max_pairs": 10**8, "time_limit": 60.0}


def problems(*, max_nodes: int = 10):
    """A random DAG with costs, memory and unsupported nodes on one or two device kinds."""
    return two_kind_problems(max_nodes=max_nodes, edge_odds=4, cpu_times=(0.0, 2.0, 4.0, 10.0))


def _rows(bits: np.ndarray, n: int) -> set[tuple[int, ...]]:
    return {tuple(np.flatnonzero(r).tolist()) for r in unpack_bits(bits, n)}


def _prob(graph: CostGraph, devices: Devices) -> Problem:
    return Problem(coarsen(graph, devices).graph, devices)


def _optimum(graph: CostGraph, devices: Devices) -> float:
    try:
        return solve_dp(graph, devices).value
    except InfeasibleError:
        return INF


@given(problems())
@hsettings(150)
def test_unbounded_enumeration_is_every_ideal(case) -> None:
    prob = _prob(*case)
    deadline = time.monotonic() + 60
    every = enumerate_ideals(prob, max_ideals=10**6, deadline=deadline, time_limit=60, progress=None)
    bounded = enumerate_bounded_ideals(prob, INF, max_ideals=10**6, deadline=deadline, time_limit=60)
    assert _rows(bounded, prob.n) == _rows(every, prob.n)
    assert len(bounded) == len(every)


@given(problems(), st.sampled_from([0.5, 0.9, 1.0, 1.0 + 1e-12, 1.2, 2.0]))
@hsettings(300)
def test_dp_within_a_bound_finds_the_optimum_or_proves_none(case, scale) -> None:
    """The DP over the ideals kept for a bound equals the DP over every ideal under that bound."""
    graph, devices = case
    prob = _prob(graph, devices)
    best = _optimum(graph, devices)
    if math.isinf(best):
        return
    limit = best * scale
    deadline = time.monotonic() + 60
    every = enumerate_ideals(prob, max_ideals=10**6, deadline=deadline, time_limit=60, progress=None)
    kept = enumerate_bounded_ideals(prob, limit, max_ideals=10**6, deadline=deadline, time_limit=60)
    assert _rows(kept, prob.n) <= _rows(every, prob.n)
    whole = solve_lattice(prob, every, limit, max_pairs=10**8, deadline=deadline, time_limit=60, progress=None)
    ends = _rows(kept, prob.n) >= {(), tuple(range(prob.n))}
    part = (solve_lattice(prob, kept, limit, max_pairs=10**8, deadline=deadline, time_limit=60, progress=None).value
            if ends else INF)
    if math.isinf(whole.value):
        assert math.isinf(part)
    else:
        assert part == pytest.approx(whole.value, rel=1e-9)
        assert part == pytest.approx(best, rel=1e-9)


@given(problems(), st.sampled_from([0.6, 0.95, 1.0, 1.3]))
@hsettings(200)
def test_search_below_is_exact_and_its_bound_a_proof(case, scale) -> None:
    graph, devices = case
    best = _optimum(graph, devices)
    if math.isinf(best) or best == 0:
        return
    prob = _prob(graph, devices)
    known = best * scale
    got = search_below(prob, known, reached=known >= best, deadline=time.monotonic() + 60, **FAR)
    assert got.settled  # tiny lattices always fit
    assert got.lower_bound <= best * (1 + 1e-9)
    assert simple_bound(prob) <= best * (1 + 1e-9)
    if math.isfinite(got.found.value):
        assert got.found.value == pytest.approx(best, rel=1e-9)
    else:
        assert known < best or got.lower_bound >= best * (1 - 2e-8)


@given(problems(), st.integers(0, 2))
@hsettings(150)
def test_the_dp_through_the_bounded_search_keeps_the_optimum(case, spare) -> None:
    """With too few ideals allowed for the whole lattice, the bounded search still proves the optimum."""
    graph, devices = case
    best = _optimum(graph, devices)
    if math.isinf(best):
        return
    whole = solve_dp_with_stats(graph, devices)[1].ideals
    try:
        plan, _ = solve_dp_with_stats(graph, devices, max_ideals=max(2, whole - 1 - spare))
    except DPTooLarge:
        return  # the bounded lattice did not fit either: nothing claimed
    check_plan(graph, devices, plan)
    assert plan.value == pytest.approx(best, rel=1e-9)
    assert plan.lower_bound <= best * (1 + 1e-9)
    assert plan.gap <= 2e-8


def test_a_row_is_dropped_once_no_window_can_hold_it() -> None:
    """A chain 0 -> 1 -> 2 of costs 4, 4, 4 on two devices within 8: {0, 1} fits, {0} cannot be an end."""
    graph = CostGraph(names=("a", "b", "c"), compute={"acc": (4.0, 4.0, 4.0)}, memory=(0.0, 0.0, 0.0),
                      tensors=(Tensor("x", 0, (1,)), Tensor("y", 1, (2,))))
    devices = Devices((DeviceKind("acc", 2),))
    prob = Problem(graph, devices)
    kept = _rows(enumerate_bounded_ideals(prob, 8.0, max_ideals=100, deadline=time.monotonic() + 10, time_limit=10),
                 3)
    # {0} leaves 8 for one device: fine; {0, 1} leaves 4: fine; {} and everything are the ends.
    assert kept == {(), (0,), (0, 1), (0, 1, 2)}
    assert _rows(enumerate_bounded_ideals(prob, 5.0, max_ideals=100, deadline=time.monotonic() + 10,
                                          time_limit=10), 3) == set()


def test_frontier_cost_prunes_ideals_that_cut_many_tensors() -> None:
    """A fork of four free branches: a cut through the branches sends four tensors, too many for the bound."""
    n = 6
    tensors = [Tensor("s", 0, (1, 2, 3, 4), cost=1.0)] + [Tensor(f"b{v}", v, (5,), cost=1.0) for v in (1, 2, 3, 4)]
    graph = CostGraph(names=tuple(f"n{v}" for v in range(n)), compute={"acc": (5.0, 0.1, 0.1, 0.1, 0.1, 5.0)},
                      memory=(0.0,) * n, tensors=tuple(tensors))
    prob = Problem(graph, Devices((DeviceKind("acc", 2),)))
    budget = IdealBudget(prob, 7.0)
    # {0}: 5 compute + 1 tensor sent; the rest 5.4 + 1 received: fits two devices of 7.
    assert budget.admits(np.array([5.0]), np.array([5.0]), np.array([1.0]))[0]
    # {0, 1, 2}: 5.2 + 3 sent > 7.
    assert not budget.admits(np.array([5.2]), np.array([5.2]), np.array([3.0]))[0]
    kept = _rows(enumerate_bounded_ideals(prob, 7.0, max_ideals=100, deadline=time.monotonic() + 10, time_limit=10),
                 n)
    every = _rows(enumerate_ideals(prob, max_ideals=100, deadline=time.monotonic() + 10, time_limit=10,
                                   progress=None), n)
    # Only the cut right after the fork fits; after the branches it sends four tensors (5.4 + 4 > 7).
    assert len(every) == 18 and kept == {(), (0,), tuple(range(n))}


@pytest.mark.parametrize("name", ["layer_gnmt_inference.json", "layer_resnet50_inference.json",
                                  "op_bert_l-6_inference.json"])
def test_reference_optima_survive_the_bounded_search(name: str) -> None:
    """Forced onto the bounded search (the whole lattice refused), the reference optima come out unchanged."""
    from onnxsplit.paperformat import load_paper

    expected = json.loads((REFERENCE / "expected.json").read_text())["graphs"][name]["dp_optimum"]
    graph, devices = load_paper(REFERENCE / name)
    whole = solve_dp_with_stats(graph, devices)[1]
    plan, stats = solve_dp_with_stats(graph, devices, max_ideals=whole.ideals - 1)
    check_plan(graph, devices, plan)
    assert stats.ideals < whole.ideals
    assert plan.value == pytest.approx(expected, rel=1e-9)
    assert plan.lower_bound <= expected * (1 + 1e-9) and plan.gap <= 2e-8


def test_a_plan_meeting_the_simple_bound_needs_no_lattice() -> None:
    """Ten independent unit nodes on two devices: 1024 ideals, but a 5 + 5 split meets total / devices."""
    graph = CostGraph(names=tuple("abcdefghij"), compute={"acc": (1.0,) * 10}, memory=(0.0,) * 10, tensors=())
    plan = solve_dp(graph, Devices((DeviceKind("acc", 2),)), max_ideals=100)
    assert plan.value == 5.0 and plan.lower_bound == 5.0
