"""Cost graph files: every reference graph loads and round-trips without changing a figure."""

from __future__ import annotations

import json

import pytest

from conftest import REFERENCE
from onnxsplit.costgraph_io import dump_costgraph, from_json, load_costgraph

GRAPHS = sorted(p.name for p in REFERENCE.glob("*_inference.json") if not p.name.startswith("expert_"))


def _edges(doc):
    return sorted((e["sourceId"], e["destId"], e["cost"], e.get("size")) for e in doc["edges"])


@pytest.mark.parametrize("name", GRAPHS)
def test_paper_round_trip(name):
    original = json.loads((REFERENCE / name).read_text())
    graph, devices = load_costgraph(REFERENCE / name, fmt="paper")
    ours = json.loads(json.dumps(dump_costgraph(graph, devices, fmt="onnxsplit")))
    graph2, devices2 = from_json(ours)
    assert graph2 == graph and devices2 == devices
    back = dump_costgraph(graph2, devices2, fmt="paper")
    for key in ("maxSizePerFPGA", "maxFPGAs", "maxCPUs"):
        assert back[key] == original[key]
    assert {n["id"]: n for n in back["nodes"]} == {n["id"]: n for n in original["nodes"]}
    assert _edges(back) == _edges(original)


@pytest.mark.parametrize("fmt", ["onnxsplit", "paper"])
def test_costgraph_command_writes_a_graph_the_solver_reads(tmp_path, fmt):
    from conftest import MODELS
    from onnxsplit.cli.common import parse_devices
    from onnxsplit.cli.main import main
    from onnxsplit.solve.linear import solve_linear
    from onnxsplit.splitting import prepare

    out = tmp_path / "g.json"
    assert main(["costgraph", str(MODELS / "branchy_cnn.onnx"), "--devices", "3", "--input-shape", "image:8x3x32x32",
                 "--costs", "estimate", "--format", fmt, "-o", str(out)]) == 0
    graph, devices = load_costgraph(out, fmt=fmt)
    direct = prepare(MODELS / "branchy_cnn.onnx", parse_devices("3"), input_shapes={"image": (8, 3, 32, 32)}).graph
    assert graph.n == direct.n and devices.count == 3
    assert solve_linear(graph, devices).value == pytest.approx(solve_linear(direct, parse_devices("3")).value, rel=1e-12)
