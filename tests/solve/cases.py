"""Hypothesis settings, random problem parts and solver checks shared by the solver tests."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices, Link
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve.dp import solve_dp, solve_dp_with_stats
from onnxsplit.solve.latency import latency_of, solve_latency_ip
from onnxsplit.solve.plan import Plan, check_plan

INF = math.inf


def hsettings(examples: int) -> settings:
    """Reproducible runs of ``examples`` cases with no deadline (brute forces are slow by design)."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def two_kind_problems(draw, *, max_nodes: int, edge_odds: int, cpu_times: tuple[float, ...], second_kind: bool = True):
    """A random DAG with costs, memory and unsupported nodes on one or two device kinds.

    Each forward pair of nodes is an edge with chance 1 / ``edge_odds``; the
    accelerator cannot run some nodes, the CPU runs every node in one of
    ``cpu_times``; with ``second_kind`` a CPU kind (talking or quiet) may join.
    """
    n = draw(st.integers(1, max_nodes))
    edges = [(u, v) for u in range(n) for v in range(u + 1, n) if draw(st.integers(0, edge_odds - 1)) == 0]
    acc = tuple(draw(st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, INF])) for _ in range(n))
    cpu = tuple(draw(st.sampled_from(cpu_times)) for _ in range(n))
    memory = tuple(draw(st.sampled_from([0.0, 1.0, 2.0])) for _ in range(n))
    tensors = []
    for u in range(n):
        outs = [v for a, v in edges if a == u]
        if outs:
            tensors.append(Tensor(f"t{u}", u, tuple(outs), cost=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]))))
    graph = CostGraph(names=tuple(f"n{v}" for v in range(n)), compute={"acc": acc, "cpu": cpu}, memory=memory,
                      tensors=tuple(tensors))
    kinds = [DeviceKind("acc", draw(st.integers(1, 3)), memory=draw(st.sampled_from([INF, 4.0])))]
    if second_kind and draw(st.booleans()):
        kinds.append(DeviceKind("cpu", draw(st.integers(1, 2)), communicates=draw(st.booleans())))
    return graph, Devices(tuple(kinds))


def draw_link(draw) -> Link:
    """The default link of a linked problem: slow enough that hand-offs weigh against compute."""
    return Link(draw(st.sampled_from([1e3, 1e4])), draw(st.sampled_from([0.0, 1e-3])))


def draw_priced_tensor(draw, link: Link, name: str, producer: int, consumers: tuple[int, ...]) -> Tensor:
    """A tensor with a random size, priced on ``link`` (or, one time in six, free like a copied constant)."""
    nbytes = draw(st.sampled_from([0, 1000, 5000, 20000]))
    cost = 0.0 if draw(st.integers(0, 5)) == 0 else link.ms(nbytes)
    return Tensor(name, producer, consumers, nbytes=nbytes, cost=cost)


def draw_pair_links(draw, ndev: int) -> tuple[tuple[tuple[int, int], Link], ...]:
    """Random ``[[pair]]`` links between some of ``ndev`` devices; at least one pair where there are two devices."""
    pairs = [((a, b), Link(draw(st.sampled_from([2e2, 1e3, 5e3, 1e5])), draw(st.sampled_from([0.0, 5e-4, 2e-3]))))
             for a, b in itertools.combinations(range(ndev), 2) if draw(st.booleans())]
    if not pairs and ndev >= 2:
        pairs.append(((0, 1), Link(1e5, 0.0)))
    return tuple(pairs)


# ---------------------------------------------------------------- checks that several problem families share


def check_dp_finds(graph: CostGraph, devices: Devices, expected: float) -> Plan | None:
    """The DP refuses where ``expected`` (an independent optimum) is inf, else returns a valid plan worth it."""
    if math.isinf(expected):
        with pytest.raises(InfeasibleError):
            solve_dp(graph, devices)
        return None
    plan = solve_dp(graph, devices)
    check_plan(graph, devices, plan)
    assert plan.value == pytest.approx(expected, rel=1e-9, abs=1e-9)
    return plan


def check_folding_keeps_the_optimum(graph: CostGraph, devices: Devices) -> None:
    """The DP with free units folded (its default) finds the unfolded DP's value, and refuses where it refuses."""
    try:
        plain = solve_dp_with_stats(graph, devices, fold=False)[0]
    except InfeasibleError:
        with pytest.raises(InfeasibleError):
            solve_dp(graph, devices)
        return
    folded = solve_dp(graph, devices)
    check_plan(graph, devices, folded)
    assert folded.value == pytest.approx(plain.value, rel=1e-9, abs=1e-9)


def check_latency_ip_finds(graph: CostGraph, devices: Devices, expected: float) -> Plan | None:
    """The latency program with one piece per device refuses where ``expected`` (an independent optimum) is
    inf, else returns a valid plan whose scored latency is ``expected``, proven optimal."""
    if math.isinf(expected):
        with pytest.raises(InfeasibleError):
            solve_latency_ip(graph, devices, q=1, time_limit=20)
        return None
    plan = solve_latency_ip(graph, devices, q=1, time_limit=20)
    check_plan(graph, devices, plan, contiguous=False)
    assert plan.value == pytest.approx(latency_of(graph, devices, plan))
    assert plan.value == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert plan.lower_bound == pytest.approx(expected, rel=1e-6, abs=1e-9)
    return plan
