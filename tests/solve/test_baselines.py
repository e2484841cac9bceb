"""Greedy, local search and expert splits: valid plans, reference values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import InfeasibleError, PlanError
from onnxsplit.solve.greedy import evaluate_expert, solve_greedy
from onnxsplit.solve.local import solve_local
from onnxsplit.solve.plan import check_plan, simple_lower_bound
from onnxsplit.solve.units import units_of

from cases import hsettings
from test_ip import brute_force, small_problem

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference-graphs"
GRAPHS = ["layer_bert24", "layer_gnmt", "layer_resnet50", "op_bert_l-3", "op_bert_l-6", "op_resnet50"]
INF = math.inf


def _expected() -> dict:
    return json.loads((REFERENCE / "expected.json").read_text())


@pytest.mark.parametrize("name", GRAPHS)
def test_greedy_and_local_on_reference_graphs(name: str) -> None:
    from onnxsplit.paperformat import load_paper

    graph, devices = load_paper(REFERENCE / f"{name}_inference.json")
    optimum = _expected()["graphs"][f"{name}_inference.json"]["dp_optimum"]
    greedy = solve_greedy(graph, devices)
    check_plan(graph, devices, greedy, contiguous=True)
    assert greedy.solver == "greedy" and greedy.contiguous
    assert greedy.value >= optimum * (1 - 1e-9)
    local = solve_local(graph, devices, restarts=2, time_limit=3.0, start=greedy)
    check_plan(graph, devices, local)
    assert local.solver == "local"
    assert local.value <= greedy.value * (1 + 1e-12)
    assert local.lower_bound <= local.value


@pytest.mark.parametrize("expert", ["bert24", "gnmt", "resnet50"])
def test_expert_splits_score_as_published(expert: str) -> None:
    from onnxsplit.paperformat import load_paper

    expected = _expected()
    graph_file = expected["expert_splits"][f"expert_layer_{expert}_inference.json"]
    graph, devices = load_paper(REFERENCE / graph_file)
    plan = evaluate_expert(graph, devices, REFERENCE / f"expert_layer_{expert}_inference.json")
    check_plan(graph, devices, plan)
    assert plan.solver == "expert"
    # expected.json rounds to about six significant digits.
    assert plan.value == pytest.approx(expected["graphs"][graph_file]["expert"], rel=1e-4)


def test_expert_bert24_exact() -> None:
    from onnxsplit.paperformat import load_paper

    graph, devices = load_paper(REFERENCE / "layer_bert24_inference.json")
    plan = evaluate_expert(graph, devices, REFERENCE / "expert_layer_bert24_inference.json")
    assert plan.value == pytest.approx(20.083953125, rel=1e-12)


def test_expert_with_too_many_slots(tmp_path: Path) -> None:
    graph = CostGraph(names=("0", "1"), compute={"acc": (1.0, 1.0), "cpu": (2.0, 2.0)}, memory=(0.0, 0.0), tensors=())
    devices = Devices((DeviceKind("acc", 1), DeviceKind("cpu", 1, communicates=False)))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"fpgas": [{"nodes": [0]}, {"nodes": [1]}], "cpus": []}))
    with pytest.raises(PlanError):
        evaluate_expert(graph, devices, split)


@given(small_problem())
@hsettings(30)
def test_greedy_is_valid_and_contiguous(problem) -> None:
    graph, devices = problem
    best = brute_force(graph, devices, contiguous=True)
    try:
        plan = solve_greedy(graph, devices)
    except InfeasibleError:
        return
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.value >= best * (1 - 1e-9)


@given(small_problem())
@hsettings(30)
def test_local_search_is_valid_and_respects_constraints(problem) -> None:
    graph, devices = problem
    best = brute_force(graph, devices, contiguous=False)
    if math.isinf(best):
        with pytest.raises(InfeasibleError):
            solve_local(graph, devices, restarts=3, time_limit=2.0)
        return
    plan = solve_local(graph, devices, restarts=3, time_limit=2.0)
    check_plan(graph, devices, plan)
    assert plan.value >= best * (1 - 1e-9)
    assert plan.lower_bound <= plan.value


def test_local_search_beats_a_bad_start_and_keeps_groups() -> None:
    # Four equal nodes, two devices, a and d must share a device.
    graph = CostGraph(
        names=("a", "b", "c", "d"),
        compute={"acc": (1.0, 1.0, 1.0, 1.0)},
        memory=(0.0,) * 4,
        tensors=(Tensor("t", 0, (1, 2, 3), cost=0.0),),
        groups=((0, 3),),
    )
    devices = Devices((DeviceKind("acc", 2),))
    plan = solve_local(graph, devices, restarts=1, time_limit=2.0)
    check_plan(graph, devices, plan)
    assert plan.value == pytest.approx(2.0)
    assert plan.stage_of[0] == plan.stage_of[3]


def test_local_search_respects_memory_and_unsupported_nodes() -> None:
    graph = CostGraph(
        names=("a", "b", "c"),
        compute={"acc": (1.0, INF, 1.0), "cpu": (10.0, 1.0, 10.0)},
        memory=(3.0, 0.0, 3.0),
        tensors=(),
    )
    devices = Devices((DeviceKind("acc", 2, memory=4.0), DeviceKind("cpu", 1, communicates=False)))
    plan = solve_local(graph, devices, seed=3, restarts=5, time_limit=2.0)
    check_plan(graph, devices, plan)
    assert plan.value == pytest.approx(1.0)


def test_units_merge_forced_cycles() -> None:
    # a -> b -> c with {a, c} grouped: contiguity forces b in with them.
    graph = CostGraph(
        names=("a", "b", "c", "d"),
        compute={"acc": (1.0, 1.0, 1.0, 1.0)},
        memory=(0.0,) * 4,
        tensors=(Tensor("ta", 0, (1,)), Tensor("tb", 1, (2,)), Tensor("tc", 2, (3,))),
        groups=((0, 2),),
    )
    assert units_of(graph, merge_cycles=True).members == ((0, 1, 2), (3,))
    assert units_of(graph, merge_cycles=False).members == ((0, 2), (1,), (3,))
    assert simple_lower_bound(graph, Devices((DeviceKind("acc", 2),))) == pytest.approx(2.0)
