"""Integer programs: brute force on small graphs, reference optima, warm starts, latency."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import InfeasibleError, PlanError
from onnxsplit.solve.greedy import solve_greedy
from onnxsplit.solve.ip import solve_ip
from onnxsplit.solve.latency import cut_pieces, latency_of, latency_plan, schedule, solve_latency_ip
from onnxsplit.solve.plan import check_plan, plan_from_devices

from cases import check_latency_ip_finds, hsettings

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference-graphs"
INF = math.inf


@st.composite
def small_problem(draw, *, max_nodes: int = 7, max_devices: int = 3, positive: bool = False):
    """A random DAG with acc/cpu costs, some unsupported nodes, memory, maybe a group."""
    total = draw(st.integers(1, max_devices))
    cpus = draw(st.integers(0, total - 1)) if total > 1 else 0
    cap = draw(st.sampled_from([4.0, 6.0, INF]))
    devices = Devices((DeviceKind("acc", total - cpus, memory=cap), DeviceKind("cpu", cpus, communicates=False)))
    n = draw(st.integers(2, max_nodes))
    low = 0.1 if positive else 0.0
    acc = []
    cpu = []
    for _ in range(n):
        a = draw(st.floats(low, 10.0, allow_nan=False).map(lambda x: round(x, 2)))
        # Some nodes only a CPU can run (rarely, so that most cases stay feasible).
        acc.append(INF if cpus and draw(st.integers(0, 7)) == 0 else a)
        cpu.append(round(a * draw(st.sampled_from([1.0, 2.0, 5.0])), 2))
    memory = [float(draw(st.integers(0, 3))) for _ in range(n)]
    tensors = []
    for u in range(n - 1):
        cons = sorted(draw(st.sets(st.integers(u + 1, n - 1), max_size=3)))
        if cons:
            cost = draw(st.floats(0.0, 4.0, allow_nan=False).map(lambda x: round(x, 2)))
            tensors.append(Tensor(f"t{u}", u, tuple(cons), cost=cost))
    groups = ()
    if n >= 3 and draw(st.booleans()):
        a, b = sorted(draw(st.sets(st.integers(0, n - 1), min_size=2, max_size=2)))
        groups = ((a, b),)
    graph = CostGraph(
        names=tuple(f"n{v}" for v in range(n)),
        compute={"acc": tuple(acc), "cpu": tuple(cpu)},
        memory=tuple(memory),
        tensors=tuple(tensors),
        groups=groups,
    )
    return graph, devices


def brute_force(graph: CostGraph, devices: Devices, *, contiguous: bool) -> float:
    best = INF
    for device_of in itertools.product(range(devices.count), repeat=graph.n):
        plan = plan_from_devices(graph, devices, list(device_of), solver="user")
        if contiguous and not plan.contiguous:
            continue
        try:
            check_plan(graph, devices, plan, contiguous=contiguous)
        except PlanError:
            continue
        best = min(best, plan.value)
    return best


@given(small_problem())
@hsettings(25)
def test_contiguous_ip_matches_brute_force(problem) -> None:
    graph, devices = problem
    best = brute_force(graph, devices, contiguous=True)
    if math.isinf(best):
        with pytest.raises(InfeasibleError):
            solve_ip(graph, devices, time_limit=20)
        return
    plan = solve_ip(graph, devices, time_limit=20)
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.solver == "ip" and plan.contiguous
    assert plan.value == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert plan.lower_bound == pytest.approx(best, rel=1e-6, abs=1e-9)


@given(small_problem(max_nodes=6))
@hsettings(15)
def test_noncontiguous_ip_matches_brute_force(problem) -> None:
    graph, devices = problem
    best = brute_force(graph, devices, contiguous=False)
    if math.isinf(best):
        with pytest.raises(InfeasibleError):
            solve_ip(graph, devices, contiguous=False, time_limit=20)
        return
    plan = solve_ip(graph, devices, contiguous=False, time_limit=20)
    check_plan(graph, devices, plan, contiguous=False)
    assert plan.solver == "ip-noncontiguous"
    assert plan.value == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert plan.lower_bound <= plan.value


def _reference(name: str):
    from onnxsplit.paperformat import load_paper

    expected = json.loads((REFERENCE / "expected.json").read_text())["graphs"][f"{name}_inference.json"]
    graph, devices = load_paper(REFERENCE / f"{name}_inference.json")
    return graph, devices, expected["dp_optimum"]


def test_ip_proves_optimum_on_layer_bert24() -> None:
    graph, devices, optimum = _reference("layer_bert24")
    plan = solve_ip(graph, devices, time_limit=120)
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.value == pytest.approx(optimum, rel=1e-6)
    assert plan.lower_bound == pytest.approx(optimum, rel=1e-6)


@pytest.mark.slow
def test_ip_proves_optimum_on_op_bert_l3() -> None:
    # About 15-20 s with CBC on one core; a greedy warm start gives it a cutoff early.
    graph, devices, optimum = _reference("op_bert_l-3")
    plan = solve_ip(graph, devices, time_limit=240, warm_start=solve_greedy(graph, devices))
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.value == pytest.approx(optimum, rel=1e-6)
    assert plan.lower_bound == pytest.approx(optimum, rel=1e-6)


@pytest.mark.parametrize("name", ["layer_resnet50", "op_bert_l-6"])
def test_ip_with_time_limit_brackets_the_optimum(name: str) -> None:
    graph, devices, optimum = _reference(name)
    plan = solve_ip(graph, devices, time_limit=4, warm_start=solve_greedy(graph, devices))
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.value >= optimum * (1 - 1e-9)
    assert plan.lower_bound <= optimum * (1 + 1e-9)


@pytest.mark.parametrize("name", ["layer_gnmt", "op_bert_l-3"])
def test_noncontiguous_ip_never_worse_than_its_warm_start(name: str) -> None:
    graph, devices, optimum = _reference(name)
    start = solve_greedy(graph, devices)
    plan = solve_ip(graph, devices, contiguous=False, time_limit=5, warm_start=start)
    check_plan(graph, devices, plan, contiguous=False)
    assert plan.value <= start.value * (1 + 1e-9)
    assert plan.lower_bound <= plan.value
    assert math.isfinite(plan.gap)
    # A bound on every placement is a bound on the best contiguous one too.
    assert plan.lower_bound <= optimum * (1 + 1e-9)


def _highs_available() -> bool:
    try:
        import mip.highs

        return bool(mip.highs.has_highs)
    except Exception:  # a missing or broken HiGHS library raises all sorts
        return False


@pytest.mark.skipif(not _highs_available(), reason="HiGHS (highspy/highsbox) is not installed")
@given(small_problem(max_nodes=6))
@hsettings(8)
def test_highs_agrees_with_cbc(problem) -> None:
    graph, devices = problem
    try:
        cbc = solve_ip(graph, devices, time_limit=20)
    except InfeasibleError:
        return
    highs = solve_ip(graph, devices, time_limit=20, solver_name="highs")
    check_plan(graph, devices, highs, contiguous=True)
    assert highs.value == pytest.approx(cbc.value, rel=1e-6, abs=1e-9)


def test_contiguous_ip_ignores_a_noncontiguous_start() -> None:
    # a -> b -> c; a start with a and c together (b elsewhere) is not a chain of ideals.
    graph = CostGraph(
        names=("a", "b", "c"),
        compute={"acc": (1.0, 1.0, 1.0)},
        memory=(0.0, 0.0, 0.0),
        tensors=(Tensor("ta", 0, (1,), cost=0.1), Tensor("tb", 1, (2,), cost=0.1)),
    )
    devices = Devices((DeviceKind("acc", 2),))
    bad = plan_from_devices(graph, devices, [0, 1, 0], solver="user")
    assert not bad.contiguous
    plan = solve_ip(graph, devices, time_limit=10, warm_start=bad)
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.value == pytest.approx(2.1)


def test_no_incumbent_is_a_clear_error() -> None:
    graph = CostGraph(names=("a",), compute={"acc": (INF,), "cpu": (1.0,)}, memory=(0.0,), tensors=())
    devices = Devices((DeviceKind("acc", 2),))
    with pytest.raises(InfeasibleError):
        solve_ip(graph, devices, time_limit=5)
    with pytest.raises(InfeasibleError):
        solve_ip(graph, devices, contiguous=False, time_limit=5)


# ---------------------------------------------------------------- latency


def test_latency_of_by_hand() -> None:
    # a -> b -> c, a -> c; a and c on acc 0, b on the CPU: acc 0 needs two pieces.
    graph = CostGraph(
        names=("a", "b", "c"),
        compute={"acc": (1.0, 1.0, 1.0), "cpu": (3.0, 3.0, 3.0)},
        memory=(0.0, 0.0, 0.0),
        tensors=(Tensor("ta", 0, (1, 2), cost=0.5), Tensor("tb", 1, (2,), cost=0.25)),
    )
    devices = Devices((DeviceKind("acc", 1), DeviceKind("cpu", 1, communicates=False)))
    pieces = cut_pieces(graph, devices, [0, 1, 0])
    assert sorted(nodes for _, nodes in pieces) == [[0], [1], [2]]
    # Piece {a}: 1 + send 0.5 -> 1.5; b on CPU 1.5..4.5; piece {c}: receives ta and tb: 1 + 0.75, from 4.5.
    plan = latency_plan(graph, devices, [0, 1, 0], solver="user")
    assert latency_of(graph, devices, plan) == pytest.approx(6.25)
    assert plan.value == pytest.approx(6.25) and plan.objective == "latency"
    # Everything on the accelerator: one piece, no transfers.
    assert schedule(graph, devices, [0, 0, 0]).latency == pytest.approx(3.0)


def latency_brute_force(graph: CostGraph, devices: Devices) -> float:
    """Best latency over plans whose communicating devices each run one piece."""
    kinds = devices.expanded()
    best = INF
    for device_of in itertools.product(range(devices.count), repeat=graph.n):
        plan = plan_from_devices(graph, devices, list(device_of), solver="user")
        try:
            check_plan(graph, devices, plan, contiguous=False)
        except PlanError:
            continue
        pieces = cut_pieces(graph, devices, list(device_of))
        per_device = [d for d, _ in pieces if kinds[d].communicates]
        if len(per_device) != len(set(per_device)):
            continue
        best = min(best, latency_of(graph, devices, plan))
    return best


@given(small_problem(max_nodes=5, positive=True))
@hsettings(15)
def test_latency_ip_matches_brute_force(problem) -> None:
    graph, devices = problem
    plan = check_latency_ip_finds(graph, devices, latency_brute_force(graph, devices))
    if plan is not None:
        assert plan.objective == "latency" and plan.solver == "ip-latency"


@given(small_problem(max_nodes=5, positive=True))
@hsettings(8)
def test_latency_ip_more_pieces_never_hurts(problem) -> None:
    graph, devices = problem
    try:
        one = solve_latency_ip(graph, devices, q=1, time_limit=20)
    except InfeasibleError:
        return
    two = solve_latency_ip(graph, devices, q=2, time_limit=20, warm_start=one)
    check_plan(graph, devices, two, contiguous=False)
    assert two.value <= one.value * (1 + 1e-9) + 1e-9
    assert two.lower_bound <= two.value
