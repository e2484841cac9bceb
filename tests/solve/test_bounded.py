"""Bounds the DP's fallbacks carry: the min-cut bound on a node's device, what DPTooLarge hands on, and their use."""

from __future__ import annotations

import itertools
import math
import time

import pytest
from hypothesis import given

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve import select
from onnxsplit.solve.bounded import search_below
from onnxsplit.solve.coarsen import coarsen
from onnxsplit.solve.cutbound import node_bound
from onnxsplit.solve.dp import DPTooLarge, solve_dp
from onnxsplit.solve.lattice import Problem
from onnxsplit.solve.plan import check_plan, make_plan

from bruteforce import placement_load
from cases import hsettings, two_kind_problems

INF = math.inf


def graphs(*, max_nodes: int = 7, kinds: bool = True):
    """A random DAG with costs, memory and unsupported nodes on one or two device kinds."""
    return two_kind_problems(max_nodes=max_nodes, edge_odds=3, cpu_times=(0.5, 2.0, 4.0, 10.0), second_kind=kinds)


def _least_device_brute(prob: Problem) -> float:
    """max over v of min over kinds and node sets D holding v of D's load (memory and contiguity ignored)."""
    members = [{int(p)} for p in prob.prod]
    for which, reader in prob.readers:
        for t, c in zip(which.tolist(), reader.tolist()):
            members[t].add(c)
    best = 0.0
    for v in range(prob.n):
        least = INF
        for kind in prob.kinds:
            if kind.banned[v] or prob.memory[v] > kind.memory:
                continue
            others = [w for w in range(prob.n) if w != v]
            for r in range(len(others) + 1):
                for extra in itertools.combinations(others, r):
                    d = {v, *extra}
                    if any(kind.banned[w] for w in d):
                        continue
                    load = sum(kind.compute[w] for w in d)
                    if kind.communicates:
                        load += sum(prob.cost[t] for t, m in enumerate(members) if m & d and m - d)
                    least = min(least, load)
        if math.isfinite(least):
            best = max(best, least)
    return best


def _best_any_placement(graph: CostGraph, devices: Devices) -> float:
    """The least max load over every placement, contiguous or not (brute force)."""
    best = INF
    for device_of in itertools.product(range(devices.count), repeat=graph.n):
        used = sorted(set(device_of))
        best = min(best, placement_load(graph, devices, [used.index(d) for d in device_of], used))
    return best


@given(graphs(max_nodes=6))
@hsettings(150)
def test_node_bound_is_the_least_device_and_below_every_placement(case) -> None:
    graph, devices = case
    prob = Problem(graph, devices)
    exact = _least_device_brute(prob)
    # Every node in every flow: the minimum cut is the brute-force minimum.
    assert node_bound(prob, near=prob.n, max_flows=10**6, max_seconds=60) == pytest.approx(exact, rel=1e-9, abs=1e-12)
    # A small neighbourhood or no flows at all only weakens it.
    assert node_bound(prob, near=2) <= exact * (1 + 1e-12)
    assert node_bound(prob, max_flows=0) <= exact * (1 + 1e-12)
    if devices.count <= 3 and graph.n <= 5:
        assert exact <= _best_any_placement(graph, devices) * (1 + 1e-9)


def test_node_bound_prices_the_hand_offs_of_a_heavy_node() -> None:
    """a -> h -> b with h heavy: h's device either holds a neighbour (its compute) or pays the hand-off."""
    graph = CostGraph(names=("a", "h", "b"), compute={"acc": (3.0, 10.0, 0.5)}, memory=(0.0,) * 3,
                      tensors=(Tensor("x", 0, (1,), cost=1.0), Tensor("y", 1, (2,), cost=2.0)))
    prob = Problem(graph, Devices((DeviceKind("acc", 3),)))
    # Best for h: receive x (1 < 3), keep b (0.5 < 2): 10 + 1 + 0.5.
    assert node_bound(prob) == pytest.approx(11.5, rel=1e-9)
    assert solve_dp(graph, Devices((DeviceKind("acc", 3),))).value == pytest.approx(11.5)


def _optimum(graph: CostGraph, devices: Devices) -> float:
    try:
        return solve_dp(graph, devices).value
    except InfeasibleError:
        return INF


@given(graphs(max_nodes=9))
@hsettings(150)
def test_too_large_carries_a_proven_bound_and_a_valid_plan(case) -> None:
    """When neither the lattice nor any bounded one fits, the exception hands on a proof and the first plan."""
    graph, devices = case
    best = _optimum(graph, devices)
    if math.isinf(best):
        return
    try:
        plan = solve_dp(graph, devices, max_ideals=1)
    except DPTooLarge as exc:
        assert exc.lower_bound <= best * (1 + 1e-9)
        if exc.plan is not None:
            check_plan(graph, devices, exc.plan, contiguous=True)
            assert exc.plan.value >= best * (1 - 1e-9)
            assert exc.plan.lower_bound <= best * (1 + 1e-9)
    else:  # settled by a bound alone: then it is optimal
        check_plan(graph, devices, plan)
        assert plan.value == pytest.approx(best, rel=1e-9)


@given(graphs(max_nodes=9))
@hsettings(100)
def test_an_unsettled_search_still_proves_its_bound(case) -> None:
    graph, devices = case
    best = _optimum(graph, devices)
    if math.isinf(best) or best == 0:
        return
    prob = Problem(coarsen(graph, devices).graph, devices)
    got = search_below(prob, best * 1.5, reached=True, max_ideals=1, max_pairs=10**6,
                       deadline=time.monotonic() + 60, time_limit=60)
    assert got.lower_bound <= best * (1 + 1e-9)
    if not got.settled:
        assert math.isinf(got.found.value)


def _chain_graph() -> tuple[CostGraph, Devices]:
    graph = CostGraph(names=tuple("abcd"), compute={"acc": (4.0, 1.0, 1.0, 4.0)}, memory=(0.0,) * 4,
                      tensors=tuple(Tensor(f"t{v}", v, (v + 1,), cost=0.5) for v in range(3)))
    return graph, Devices((DeviceKind("acc", 2),))


def test_auto_returns_a_plan_that_meets_the_bound_it_was_handed(monkeypatch) -> None:
    graph, devices = _chain_graph()
    optimal = solve_dp(graph, devices)

    def too_large(*args, **kwargs):
        raise DPTooLarge("too many ideals", lower_bound=optimal.value * (1 - 1e-10),
                         plan=make_plan(graph, devices, optimal.stage_of, optimal.stage_device, solver="dp"))

    monkeypatch.setattr("onnxsplit.solve.dp.solve_dp", too_large)
    got = select.solve(graph, devices)
    check_plan(graph, devices, got)
    assert got.value == pytest.approx(optimal.value) and got.gap <= 1e-9
    assert any("meets a proven lower bound" in note for note in got.notes)


def test_auto_falls_back_from_the_best_plan_with_the_bound(monkeypatch) -> None:
    """A weak bound: the integer program starts from the handed plan and never reports less than the bound."""
    graph, devices = _chain_graph()
    optimal = solve_dp(graph, devices)

    def too_large(*args, **kwargs):
        raise DPTooLarge("too many ideals", lower_bound=0.75 * optimal.value,
                         plan=make_plan(graph, devices, optimal.stage_of, optimal.stage_device, solver="dp"))

    monkeypatch.setattr("onnxsplit.solve.dp.solve_dp", too_large)
    got = select.solve(graph, devices, time_limit=20)
    check_plan(graph, devices, got)
    assert got.value == pytest.approx(optimal.value)
    assert 0.75 * optimal.value <= got.lower_bound <= optimal.value * (1 + 1e-9)


def test_the_integer_program_starts_at_a_proven_bound() -> None:
    from onnxsplit.solve.ip import solve_ip

    graph, devices = _chain_graph()
    optimal = solve_dp(graph, devices)
    plan = solve_ip(graph, devices, lower_bound=optimal.value, time_limit=20)
    assert plan.value == pytest.approx(optimal.value)
    assert plan.lower_bound == pytest.approx(optimal.value)
