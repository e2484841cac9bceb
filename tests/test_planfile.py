"""plan.json: save_plan / load_plan round trip, and a one-line error for every malformed field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import PlanError
from onnxsplit.paperformat import load_paper
from onnxsplit.planfile import load_plan, plan_document, read_assignment, save_plan
from onnxsplit.solve.dp import solve_dp
from onnxsplit.solve.greedy import solve_greedy
from onnxsplit.solve.latency import latency_plan
from onnxsplit.solve.plan import Objective, Solver, check_plan, make_plan, plan_from_devices

REFERENCE = Path(__file__).resolve().parent / "data" / "reference-graphs"


def _small() -> tuple[CostGraph, Devices]:
    graph = CostGraph(
        names=("a", "b", "c", "d"),
        compute={"acc": (1.0, 2.0, math.inf, 1.5), "cpu": (3.0, 4.0, 2.0, 6.0)},
        memory=(1.0, 2.0, 0.0, 1.0),
        tensors=(Tensor("ta", 0, (1, 2), nbytes=16, cost=0.25), Tensor("tb", 1, (3,), cost=0.5),
                 Tensor("tc", 2, (3,), cost=0.125)),
    )
    return graph, Devices((DeviceKind("acc", 2, memory=4.0), DeviceKind("cpu", 1, communicates=False)))


def _plans():
    graph, devices = load_paper(REFERENCE / "layer_bert24_inference.json")
    yield "dp", graph, devices, solve_dp(graph, devices)
    yield "greedy", graph, devices, solve_greedy(graph, devices)
    small, small_devices = _small()
    yield "user", small, small_devices, make_plan(small, small_devices, [0, 0, 1, 2], [0, 2, 1], solver="user",
                                                  lower_bound=1.0, notes=("by hand",))
    # Devices feed each other: not contiguous.
    yield "noncontiguous", small, small_devices, plan_from_devices(small, small_devices, [0, 1, 2, 0], solver="local")
    yield "latency", small, small_devices, latency_plan(small, small_devices, [0, 0, 2, 1], solver="ip-latency")


@pytest.mark.parametrize("label, graph, devices, plan", list(_plans()), ids=lambda x: x if isinstance(x, str) else "")
def test_round_trip(tmp_path, label, graph, devices, plan) -> None:
    path = save_plan(plan, tmp_path / "plan.json", graph=graph, devices=devices)
    assert path == tmp_path / "plan.json" and [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    back = load_plan(path)
    assert back == plan
    assert load_plan(path, graph=graph) == plan
    assert isinstance(back.solver, Solver) and isinstance(back.objective, Objective)
    check_plan(graph, devices, back)
    # The document is today's plan.json: the enums are written as their plain names.
    doc = json.loads(path.read_text())
    assert doc == json.loads(json.dumps(plan_document(graph, devices, plan)))
    assert doc["solver"] == plan.solver.value and doc["objective"] == plan.objective.value
    assert read_assignment(path) == {graph.names[v]: plan.stage_of[v] for v in range(graph.n)}


def test_graph_order_wins_over_file_order(tmp_path) -> None:
    graph, devices = _small()
    plan = make_plan(graph, devices, [0, 0, 1, 2], [0, 2, 1], solver="user")
    path = save_plan(plan, tmp_path / "plan.json", graph=graph, devices=devices)
    doc = json.loads(path.read_text())
    doc["assignment"] = dict(reversed(doc["assignment"].items()))
    for stage in doc["stages"]:
        stage["nodes"].reverse()
    path.write_text(json.dumps(doc))
    assert load_plan(path, graph=graph) == plan
    assert load_plan(path).stage_of == tuple(reversed(plan.stage_of))


def test_extra_keys_are_ignored(tmp_path) -> None:
    graph, devices = _small()
    plan = make_plan(graph, devices, [0, 0, 1, 2], [0, 2, 1], solver="user")
    doc = plan_document(graph, devices, plan)
    doc["refine"] = [{"round": 1}]
    doc["max_load"] = plan.value
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    assert load_plan(tmp_path / "plan.json") == plan


def _edit(doc: dict, path: str, value=None, *, delete: bool = False) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    last = int(keys[-1]) if isinstance(doc, list) else keys[-1]
    if delete:
        del doc[last]
    else:
        doc[last] = value


MALFORMED = [
    # (edit, field the message names, words of the message)
    (("format", "onnxsplit.manifest"), "format", "expected 'onnxsplit.plan'"),
    (("version", 2), "version", "not supported"),
    (("objective", "speed"), "objective", "unknown objective 'speed'"),
    (("objective", 1), "objective", "expected a name"),
    (("solver", "magic"), "solver", "unknown solver 'magic'"),
    (("value", "fast"), "value", "expected a number"),
    (("value", 1.0), "value", "is not the largest load_ms"),
    (("value", True), "value", "expected a number"),
    (("lower_bound", None), "lower_bound", "expected a number"),
    (("gap", -0.5), "gap", "must be at least 0"),
    (("gap", 0.75), "gap", "does not match value and lower_bound"),
    (("contiguous", "yes"), "contiguous", "expected true or false"),
    (("devices_available", 0), "devices_available", "must be at least 1"),
    (("devices_available", 2), "stages[1].device", "device 2 does not exist"),
    (("notes", "n"), "notes", "expected a list of strings"),
    (("stages", {}), "stages", "expected a list"),
    (("stages.1", 3), "stages[1]", "expected an object"),
    (("stages.1.index", 0), "stages[1].index", "expected 1"),
    (("stages.1.device", 0), "stages[1].device", "already holds stage 0"),
    (("stages.1.device", -1), "stages[1].device", "must be at least 0"),
    (("stages.0.device_kind", 3), "stages[0].device_kind", "expected a name"),
    (("stages.0.nodes", ["a"]), "stages[0].nodes", "disagrees with the assignment"),
    (("stages.0.nodes", "a b"), "stages[0].nodes", "expected a list of node names"),
    (("stages.0.compute_ms", -1.0), "stages[0].compute_ms", "must be at least 0"),
    (("stages.0.memory_bytes", "big"), "stages[0].memory_bytes", "expected a number"),
    (("stages.0.load_ms", 99.0), "stages[0].load_ms", "is not compute_ms + receive_ms + send_ms"),
    (("assignment", ["a", "b"]), "assignment", "expected an object"),
    (("assignment.a", 7), "assignment['a']", "stage 7 does not exist"),
    (("assignment.a", -1), "assignment['a']", "must be at least 0"),
    (("assignment.a", "0"), "assignment['a']", "expected an integer"),
]
MISSING = ["objective", "solver", "value", "lower_bound", "gap", "contiguous", "devices_available", "notes", "stages",
           "assignment", "stages.0.index", "stages.0.device", "stages.0.device_kind", "stages.0.nodes",
           "stages.0.compute_ms", "stages.0.receive_ms", "stages.0.send_ms", "stages.0.load_ms",
           "stages.0.memory_bytes"]


def _saved(tmp_path: Path) -> tuple[Path, dict]:
    graph, devices = _small()
    plan = make_plan(graph, devices, [0, 0, 1, 2], [0, 2, 1], solver="user")
    path = save_plan(plan, tmp_path / "plan.json", graph=graph, devices=devices)
    return path, json.loads(path.read_text())


def _refused(path: Path, doc, **kwargs) -> str:
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError) as info:
        load_plan(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("edit, field, words", MALFORMED, ids=[f"{e[0]}={e[1]!r}" for e, _, _ in MALFORMED])
def test_malformed_field(tmp_path, edit, field, words) -> None:
    path, doc = _saved(tmp_path)
    _edit(doc, *edit)
    message = _refused(path, doc)
    assert f": {field}: " in message and words in message


@pytest.mark.parametrize("field", MISSING)
def test_missing_field(tmp_path, field) -> None:
    path, doc = _saved(tmp_path)
    _edit(doc, field, delete=True)
    shown = field.replace("stages.0.", "stages[0].")
    assert f": {shown}: missing" in _refused(path, doc)


def test_not_a_plan_file(tmp_path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("{ not json")
    with pytest.raises(PlanError, match="cannot read a JSON plan"):
        load_plan(path)
    assert "a plan file is a JSON object" in _refused(path, [1, 2])
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "missing.json")


def test_assignment_must_match_the_graph(tmp_path) -> None:
    path, doc = _saved(tmp_path)
    graph, _ = _small()
    doc["assignment"]["ghost"] = doc["assignment"].pop("d")
    doc["stages"][2]["nodes"] = ["ghost"]
    assert "names node 'ghost', which is not in the graph" in _refused(path, doc, graph=graph)
    _, doc = _saved(tmp_path)
    del doc["assignment"]["d"]
    doc["stages"][2]["nodes"] = []
    assert "does not place node 'd'" in _refused(path, doc, graph=graph)


def test_read_assignment_takes_names_indices_and_lists(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"a": 0, "1": 1}))
    assert read_assignment(path) == {"a": 0, "1": 1}
    path.write_text(json.dumps([0, 0, 2]))
    assert read_assignment(path) == {0: 0, 1: 0, 2: 2}
    for bad, match in (([0, "1"], "list holds the stage number of every node"), ([0, True], "list holds"),
                       ({"a": 1.5}, "node names \\(or indices\\) to stage numbers"), ([0, -1], "negative stage")):
        path.write_text(json.dumps(bad))
        with pytest.raises(PlanError, match=match):
            read_assignment(path)
