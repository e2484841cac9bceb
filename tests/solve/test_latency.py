"""The latency objective: heuristic, bounds and the strengthened integer program against brute force."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.paperformat import load_paper
from onnxsplit.solve.latency import (
    critical_path,
    latency_heuristic,
    latency_lower_bound,
    latency_of,
    solve_latency_ip,
)
from onnxsplit.solve.plan import check_plan

from cases import check_latency_ip_finds, hsettings

LATENCY_GRAPHS = Path(__file__).resolve().parents[1] / "data" / "latency-graphs"
INF = math.inf


@st.composite
def small_dag(draw, *, max_nodes: int = 5, max_accs: int = 2, chain: bool = False):
    """A random DAG (or a chain with skip edges) with positive acc/cpu times, memory and identical accelerators."""
    accs = draw(st.integers(1, max_accs))
    cpus = draw(st.integers(0, 1))
    cap = draw(st.sampled_from([3.0, 5.0, INF]))
    devices = Devices((DeviceKind("acc", accs, memory=cap), DeviceKind("cpu", cpus, communicates=False)))
    n = draw(st.integers(2, max_nodes))
    acc = [draw(st.floats(0.1, 10.0).map(lambda x: round(x, 2))) for _ in range(n)]
    cpu = [round(a * draw(st.sampled_from([1.0, 3.0])), 2) for a in acc]
    memory = [float(draw(st.integers(0, 2))) for _ in range(n)]
    tensors = []
    for u in range(n - 1):
        cons = set(draw(st.sets(st.integers(u + 1, n - 1), max_size=2)))
        if chain:
            cons.add(u + 1)
        if cons:
            cost = draw(st.floats(0.0, 4.0).map(lambda x: round(x, 2)))
            tensors.append(Tensor(f"t{u}", u, tuple(sorted(cons)), cost=cost))
    graph = CostGraph(
        names=tuple(f"n{v}" for v in range(n)),
        compute={"acc": tuple(acc), "cpu": tuple(cpu)},
        memory=tuple(memory),
        tensors=tuple(tensors),
    )
    return graph, devices


def brute_force(graph: CostGraph, devices: Devices, q: int) -> float:
    """Best latency over every node -> (device, slot) map, slots of a device run in order.

    The model of the integer program spelled out: a slot is an atomic call
    lasting its compute plus every tensor crossing its boundary, starting when
    its inputs are ready and after the device's previous slot; a quiet
    device's node runs as soon as its inputs are ready. A map whose calls
    wait on each other is infeasible.
    """
    kinds = devices.expanded()
    units = [(d, j) for d, k in enumerate(kinds) if k.communicates for j in range(q)]
    units += [(d, 0) for d, k in enumerate(kinds) if not k.communicates]
    preds = graph.predecessors()
    best = INF
    for assign in itertools.product(range(len(units)), repeat=graph.n):
        d_of = [units[a][0] for a in assign]
        if any(math.isinf(graph.compute[kinds[d_of[v]].name][v]) for v in range(graph.n)):
            continue
        used = {}
        for v in range(graph.n):
            used[d_of[v]] = used.get(d_of[v], 0.0) + graph.memory[v]
        if any(m > kinds[d].memory for d, m in used.items()):
            continue
        # Calls: talker slots (a set of nodes) and quiet nodes (one each).
        calls: dict[tuple, list[int]] = {}
        for v, a in enumerate(assign):
            key = ("slot", a) if kinds[d_of[v]].communicates else ("node", v)
            calls.setdefault(key, []).append(v)
        call_of = {v: key for key, vs in calls.items() for v in vs}
        duration = {}
        for key, vs in calls.items():
            inside = set(vs)
            d = d_of[vs[0]]
            work = math.fsum(graph.compute[kinds[d].name][v] for v in vs)
            if kinds[d].communicates:
                for t in graph.tensors:
                    readers_inside = [c in inside for c in t.consumers]
                    sent = t.producer in inside and not all(readers_inside)
                    received = t.producer not in inside and any(readers_inside)
                    if sent or received:
                        work += t.cost
            duration[key] = work
        after: dict[tuple, set[tuple]] = {key: set() for key in calls}
        for v in range(graph.n):
            for u in preds[v]:
                if call_of[u] != call_of[v]:
                    after[call_of[v]].add(call_of[u])
        for key in calls:
            if key[0] == "slot":
                d, j = units[key[1]]
                earlier = [("slot", units.index((d, i))) for i in range(j)]
                after[key] |= {e for e in earlier if e in calls}
        finish: dict[tuple, float] = {}
        stuck = False
        while len(finish) < len(calls) and not stuck:
            stuck = True
            for key in calls:
                if key not in finish and all(p in finish for p in after[key]):
                    finish[key] = max((finish[p] for p in after[key]), default=0.0) + duration[key]
                    stuck = False
        if not stuck:
            best = min(best, max(finish.values()))
    return best


@given(small_dag())
@hsettings(25)
def test_ip_q1_is_proven_optimal_and_equals_brute_force(problem) -> None:
    graph, devices = problem
    plan = check_latency_ip_finds(graph, devices, brute_force(graph, devices, 1))
    if plan is not None:
        assert any(note.startswith(("bound from", "optimal: equals")) for note in plan.notes)


@given(small_dag(max_nodes=4))
@hsettings(15)
def test_ip_q2_bound_is_the_brute_force_optimum(problem) -> None:
    graph, devices = problem
    best = brute_force(graph, devices, 2)
    if math.isinf(best):
        with pytest.raises(InfeasibleError):
            solve_latency_ip(graph, devices, q=2, time_limit=20)
        return
    assert latency_lower_bound(graph, devices, q=2)[0] <= best * (1 + 1e-9) + 1e-9
    one = solve_latency_ip(graph, devices, q=1, time_limit=20)
    plan = solve_latency_ip(graph, devices, q=2, time_limit=20, warm_start=one)
    check_plan(graph, devices, plan, contiguous=False)
    # The program proves the optimum of calls as it models them (brute force here); a plan is a
    # node -> device map whose value the scorer computes, with pieces of its own choosing, so the
    # reported bound is the proven one capped by the value.
    assert plan.lower_bound == pytest.approx(min(best, plan.value), rel=1e-6, abs=1e-9)
    assert plan.value <= one.value * (1 + 1e-9) + 1e-9


@given(small_dag(max_nodes=6))
@hsettings(30)
def test_every_bound_source_is_below_the_optimum(problem) -> None:
    graph, devices = problem
    best = brute_force(graph, devices, 1)
    assert critical_path(graph, devices) <= best * (1 + 1e-9) + 1e-9
    bound, source = latency_lower_bound(graph, devices)
    assert source in ("critical path", "total work / devices") or source.startswith("hand-offs along the ")
    assert bound <= best * (1 + 1e-9) + 1e-9
    if math.isinf(best):
        with pytest.raises(InfeasibleError):
            latency_heuristic(graph, devices)
        return
    plan = latency_heuristic(graph, devices)
    check_plan(graph, devices, plan, contiguous=False)
    assert plan.value == pytest.approx(latency_of(graph, devices, plan))
    assert plan.value >= best * (1 - 1e-9) - 1e-9


@given(small_dag(max_nodes=6, max_accs=3, chain=True))
@hsettings(30)
def test_heuristic_is_exact_on_chains(problem) -> None:
    # Every call on a chain runs after the previous one, so cutting the one order into runs is exhaustive.
    graph, devices = problem
    best = brute_force(graph, devices, 1)
    if math.isinf(best):
        with pytest.raises(InfeasibleError):
            latency_heuristic(graph, devices)
        return
    assert latency_heuristic(graph, devices).value == pytest.approx(best, rel=1e-9)


def test_work_bound_only_without_quiet_devices() -> None:
    graph = CostGraph(
        names=("a", "b", "c", "d"),
        compute={"acc": (2.0, 2.0, 2.0, 2.0), "cpu": (2.0, 2.0, 2.0, 2.0)},
        memory=(0.0,) * 4,
        tensors=(),
    )
    # Four independent nodes on one accelerator run one after another; a CPU has unlimited cores.
    assert latency_lower_bound(graph, Devices((DeviceKind("acc", 1),))) == (8.0, "total work / devices")
    quiet = Devices((DeviceKind("acc", 1), DeviceKind("cpu", 1, communicates=False)))
    assert latency_lower_bound(graph, quiet) == (2.0, "critical path")


@pytest.mark.parametrize("name", ["bert24", "gnmt", "inceptionv3", "resnet50"])
def test_paper_latency_graphs_parse_and_the_heuristic_places_them(name: str) -> None:
    graph, devices = load_paper(LATENCY_GRAPHS / f"{name}_inference.json")
    assert {k.name: k.count for k in devices.kinds}["cpu"] == 8
    plan = latency_heuristic(graph, devices)
    check_plan(graph, devices, plan, contiguous=False)
    bound, _ = latency_lower_bound(graph, devices)
    assert bound <= plan.value


def test_bert24_never_worse_than_its_warm_start() -> None:
    graph, devices = load_paper(LATENCY_GRAPHS / "bert24_inference.json")
    warm = latency_heuristic(graph, devices)
    plan = solve_latency_ip(graph, devices, q=1, time_limit=20, warm_start=warm)
    check_plan(graph, devices, plan, contiguous=False)
    assert plan.value <= warm.value
    assert plan.value == pytest.approx(latency_of(graph, devices, plan))
    assert critical_path(graph, devices) <= plan.lower_bound <= plan.value
    # The hand-offs memory forces along the critical path already prove the run-cutting plan optimal.
    assert latency_lower_bound(graph, devices) == (pytest.approx(plan.value), "hand-offs along the critical path")
    assert plan.gap == pytest.approx(0.0, abs=1e-9)
