"""Plan values: solver and objective are enums that read and write as their plain names."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import ModelError, PlanError, UsageError
from onnxsplit.solve.plan import Objective, Solver, fits_devices, make_plan, plan_from_devices
from onnxsplit.solve.select import OBJECTIVES, REGISTRY, SOLVERS, solve


def _chain(n: int = 3) -> tuple[CostGraph, Devices]:
    graph = CostGraph(
        names=tuple(f"n{v}" for v in range(n)),
        compute={"acc": tuple(1.0 + v for v in range(n))},
        memory=(1.0,) * n,
        tensors=tuple(Tensor(f"t{v}", v, (v + 1,), cost=0.5) for v in range(n - 1)),
    )
    return graph, Devices((DeviceKind("acc", 2, memory=10.0),))


def test_plain_strings_are_coerced() -> None:
    graph, devices = _chain()
    plan = make_plan(graph, devices, [0, 0, 1], [0, 1], solver="user")
    assert plan.solver is Solver.USER and plan.objective is Objective.THROUGHPUT
    latency = replace(plan, objective="latency")
    assert latency.objective is Objective.LATENCY
    # Still equal to, formatted as and serialised as the plain names.
    assert plan.solver == "user" and latency.objective == "latency"
    assert f"{plan.solver}, {latency.objective:>8}" == "user,  latency" and str(plan.solver) == "user"
    assert json.dumps({"solver": plan.solver, "objective": plan.objective}) == '{"solver": "user", "objective": "throughput"}'


def test_unknown_names_are_refused() -> None:
    graph, devices = _chain()
    with pytest.raises(PlanError, match=r"^unknown solver 'brute' \(known: dp, dp-relaxed, .*user\)$"):
        make_plan(graph, devices, [0, 0, 1], [0, 1], solver="brute")
    plan = make_plan(graph, devices, [0, 0, 1], [0, 1], solver=Solver.GREEDY)
    with pytest.raises(PlanError, match=r"^unknown objective 'speed' \(known: throughput, latency\)$"):
        replace(plan, objective="speed")


def test_registry_drives_the_names() -> None:
    assert SOLVERS == tuple(REGISTRY) == ("auto", "dp", "ip", "linear", "greedy", "local", "expert")
    assert OBJECTIVES == ("throughput", "latency")
    graph, devices = _chain()
    assert solve(graph, devices, solver="greedy").solver is Solver.GREEDY
    assert solve(graph, devices, solver="linear").solver is Solver.LINEAR
    with pytest.raises(UsageError, match="unknown solver 'magic'"):
        solve(graph, devices, solver="magic")
    with pytest.raises(UsageError, match="latency objective is solved by the integer program"):
        solve(graph, devices, solver="dp", objective="latency")
    with pytest.raises(UsageError, match="expert split file"):
        solve(graph, devices, solver="expert")
    with pytest.raises(UsageError, match="time limit must be positive"):
        solve(graph, devices, time_limit=0)


def test_plan_helpers_keep_the_solver() -> None:
    graph, devices = _chain()
    plan = plan_from_devices(graph, devices, [1, 1, 0], solver="local")
    assert plan.solver is Solver.LOCAL and plan.stage_device == (1, 0) and plan.contiguous
    assert fits_devices(graph, devices, plan)
    tight = Devices((DeviceKind("acc", 2, memory=1.5),))
    assert not fits_devices(graph, tight, plan)


@pytest.mark.parametrize("field, value, words", [
    ("compute", {"acc": (1.0, -2.0, 3.0)}, "node 'n1' has compute time -2.0 on 'acc'"),
    ("compute", {"acc": (1.0, math.nan, 3.0)}, "node 'n1' has compute time nan on 'acc'"),
    ("compute", {"acc": (1.0, 2.0, -math.inf)}, "node 'n2' has compute time -inf on 'acc'"),
    ("memory", (1.0, -1.0, 1.0), "node 'n1' has memory -1.0"),
    ("memory", (1.0, 1.0, math.inf), "node 'n2' has memory inf"),
    ("tensors", (Tensor("t0", 0, (1,), cost=math.nan),), "tensor 't0' has cost nan"),
    ("tensors", (Tensor("t0", 0, (1,), nbytes=-4),), "tensor 't0' has bytes -4"),
    ("tensors", (Tensor("t0", 1, (0,)),), "tensor 't0': consumer 0 does not follow producer 1"),
    ("groups", ((0, 5),), "co-location group [0, 5] names a node out of range"),
])
def test_cost_graph_refuses_bad_numbers(field, value, words) -> None:
    graph, _ = _chain()
    with pytest.raises(ModelError) as info:
        replace(graph, **{field: value})
    assert words in str(info.value) and "\n" not in str(info.value)


def test_infinite_time_is_cannot_run() -> None:
    graph, _ = _chain()
    assert replace(graph, compute={"acc": (1.0, math.inf, 3.0)}).compute["acc"][1] == math.inf
