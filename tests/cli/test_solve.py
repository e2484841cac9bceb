"""`onnxsplit solve` on the reference graphs: the DP optimum and the expert splits, as JSON (plan.json's keys)."""

from __future__ import annotations

import json

import pytest

from conftest import REFERENCE
from onnxsplit.cli.main import main

def _expected():
    return json.loads((REFERENCE / "expected.json").read_text())


def _solve(argv, capsys):
    code = main(["solve", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


@pytest.mark.parametrize("name", sorted(json.loads((REFERENCE / "expected.json").read_text())["graphs"]))
def test_dp_optimum(name, capsys):
    doc = _solve([REFERENCE / name, "--format", "paper", "--solver", "dp"], capsys)
    want = _expected()["graphs"][name]["dp_optimum"]
    assert doc["objective"] == "throughput" and doc["solver"] == "dp"
    assert doc["value"] == pytest.approx(want, rel=1e-6)
    assert doc["max_load"] == pytest.approx(want, rel=1e-6) and doc["gap"] == 0
    assert max(d["load_ms"] for d in doc["stages"]) == pytest.approx(doc["max_load"])
    placed = sorted(int(v) for d in doc["stages"] for v in d["nodes"])
    graph = json.loads((REFERENCE / name).read_text())
    assert placed == sorted(n["id"] for n in graph["nodes"])


@pytest.mark.parametrize("split_file", ["expert_layer_bert24_inference.json", "expert_layer_gnmt_inference.json",
                                        "expert_layer_resnet50_inference.json"])
def test_expert_splits(split_file, capsys):
    graph = _expected()["expert_splits"][split_file]
    doc = _solve([REFERENCE / graph, "--solver", "expert", "--expert", REFERENCE / split_file], capsys)
    assert doc["solver"] == "expert"
    assert doc["value"] == pytest.approx(_expected()["graphs"][graph]["expert"], abs=1e-4)


def test_devices_override_and_errors(tmp_path, capsys):
    one = _solve([REFERENCE / "layer_bert24_inference.json", "--devices", "1"], capsys)
    many = _solve([REFERENCE / "layer_bert24_inference.json"], capsys)
    assert one["max_load"] > many["max_load"]
    (tmp_path / "bad.json").write_text("{\"nodes\": 3}")
    assert main(["solve", str(tmp_path / "bad.json")]) == 1
    assert "bad.json" in capsys.readouterr().err
    assert main(["solve", str(REFERENCE / "layer_bert24_inference.json"), "--solver", "expert"]) == 1
    assert "--expert" in capsys.readouterr().err


def test_json_has_plan_json_keys(tmp_path, capsys):
    """solve --json describes a plan with plan.json's keys, and reads back as a Plan."""
    from onnxsplit.costgraph_io import load_costgraph
    from onnxsplit.planfile import load_plan, plan_document
    from onnxsplit.solve.select import solve

    doc = _solve([REFERENCE / "layer_bert24_inference.json", "--solver", "greedy"], capsys)
    graph, devices = load_costgraph(REFERENCE / "layer_bert24_inference.json")
    plan = solve(graph, devices, solver="greedy")
    expected = plan_document(graph, devices, plan)
    assert {k: v for k, v in doc.items() if k != "max_load"} == expected
    assert list(doc["stages"][0]) == ["index", "device", "device_kind", "nodes", "compute_ms", "receive_ms",
                                      "send_ms", "load_ms", "memory_bytes"]
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    assert load_plan(tmp_path / "plan.json", graph=graph) == plan


def _edited_graph(tmp_path, edit):
    """layer_bert24 in onnxsplit's format, with one figure edited."""
    from onnxsplit.costgraph_io import dump_costgraph, load_costgraph

    doc = dump_costgraph(*load_costgraph(REFERENCE / "layer_bert24_inference.json"))
    edit(doc)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["nodes"][3]["compute"].__setitem__("acc", -1.5), "node '4' has compute time -1.5 on 'acc'"),
    (lambda d: d["nodes"][3]["compute"].__setitem__("cpu", float("nan")), "node '4' has compute time nan on 'cpu'"),
    (lambda d: d["nodes"][3]["compute"].__setitem__("cpu", "-inf"), "node '4' has compute time -inf on 'cpu'"),
    (lambda d: d["nodes"][5].__setitem__("memory", -1), "node '6' has memory -1"),
    (lambda d: d["nodes"][5].__setitem__("memory", float("nan")), "node '6' has memory nan"),
    (lambda d: d["tensors"][2].__setitem__("cost", -0.25), "has cost -0.25"),
    (lambda d: d["tensors"][2].__setitem__("cost", float("inf")), "has cost inf"),
    (lambda d: d["tensors"][2].__setitem__("bytes", -8), "has bytes -8"),
])
def test_bad_numbers_in_a_cost_graph_are_refused(tmp_path, capsys, edit, message):
    path = _edited_graph(tmp_path, edit)
    assert main(["solve", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "edited.json" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_negative_time_in_a_paper_graph_is_refused(tmp_path, capsys):
    doc = json.loads((REFERENCE / "layer_bert24_inference.json").read_text())
    doc["nodes"][0]["fpgaLatency"] = -3.0
    (tmp_path / "paper.json").write_text(json.dumps(doc))
    assert main(["solve", str(tmp_path / "paper.json")]) == 1
    err = capsys.readouterr().err
    assert f"node '{doc['nodes'][0]['id']}' has compute time -3.0 on 'acc'" in err and "paper.json" in err


def test_infinite_time_means_cannot_run_there(tmp_path, capsys):
    """inf stays legal in a cost graph: the node runs only on the other kind."""
    def edit(doc):
        doc["nodes"][3]["compute"]["acc"] = "inf"
    doc = _solve([_edited_graph(tmp_path, edit), "--solver", "greedy"], capsys)
    on = {n: st["device_kind"] for st in doc["stages"] for n in st["nodes"]}
    assert on["4"] == "cpu"


def _one_line_error(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("onnxsplit: error: ") and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("edit, needles", [
    (lambda d: d["nodes"][3]["compute"].__setitem__("cpu", "fast"), ["edited.json", "'fast'"]),
    (lambda d: d["nodes"][3]["compute"].__setitem__("cpu", None), ["edited.json"]),
    (lambda d: d["tensors"][2].__setitem__("cost", "cheap"), ["edited.json", "'cheap'"]),
])
def test_non_numeric_costs_in_a_cost_graph_are_refused(tmp_path, capsys, edit, needles):
    err = _one_line_error(["solve", _edited_graph(tmp_path, edit)], capsys)
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("field, value", [("fpgaLatency", "fast"), ("cpuLatency", None), ("size", [1])])
def test_non_numeric_costs_in_a_paper_graph_are_refused(tmp_path, capsys, field, value):
    doc = json.loads((REFERENCE / "layer_bert24_inference.json").read_text())
    doc["nodes"][0][field] = value
    (tmp_path / "paper.json").write_text(json.dumps(doc))
    err = _one_line_error(["solve", tmp_path / "paper.json"], capsys)
    assert "paper.json" in err and f"node {doc['nodes'][0]['id']}" in err, err


@pytest.mark.parametrize("text", ["[1, 2, 3]", "\"fpgas\"", "{\"fpgas\": 3, \"cpus\": []}", "not json"])
def test_expert_split_that_is_not_an_object_of_lists(tmp_path, capsys, text):
    (tmp_path / "expert.json").write_text(text)
    err = _one_line_error(["solve", REFERENCE / "layer_bert24_inference.json", "--solver", "expert",
                           "--expert", tmp_path / "expert.json"], capsys)
    assert "expert.json" in err, err
