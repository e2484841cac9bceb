"""Units: contracted co-location groups, numbered in a topological order."""

from __future__ import annotations

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import identical_devices
from onnxsplit.solve.greedy import solve_greedy
from onnxsplit.solve.plan import check_plan
from onnxsplit.solve.units import units_of


def _fed_group() -> CostGraph:
    """Group {a, d} where c, which a does not reach, feeds d: the group's smallest node precedes its feeder."""
    return CostGraph(names=("a", "c", "d", "e"), compute={"cpu": (1.0, 1.0, 1.0, 1.0)}, memory=(0.0,) * 4,
                     tensors=(Tensor("ta", 0, (2,), 4, 0.0), Tensor("tc", 1, (2,), 4, 0.0),
                              Tensor("td", 2, (3,), 4, 0.0)),
                     groups=((0, 2),))


def test_units_are_numbered_topologically_when_a_group_is_fed_from_between():
    units = units_of(_fed_group(), merge_cycles=True)
    assert units.members == ((1,), (0, 2), (3,))
    assert all(a < b for a, b in units.edges)


def test_smallest_node_order_is_kept_when_it_is_topological():
    g = _fed_group()
    plain = CostGraph(names=g.names, compute=g.compute, memory=g.memory, tensors=g.tensors, groups=((1, 2),))
    assert units_of(plain, merge_cycles=True).members == ((0,), (1, 2), (3,))


def test_greedy_keeps_such_a_group_contiguous():
    graph = _fed_group()
    plan = solve_greedy(graph, identical_devices(2))
    check_plan(graph, identical_devices(2), plan, contiguous=True)
