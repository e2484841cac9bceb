"""`onnxsplit solve` on the reference graphs: the DP optimum and the expert splits, as JSON."""

from __future__ import annotations

import json

import pytest

from conftest import REFERENCE
from onnxsplit.cli.main import main

pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference graphs not present")


def _expected():
    return json.loads((REFERENCE / "expected.json").read_text())


def _solve(argv, capsys):
    code = main(["solve", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


@pytest.mark.parametrize("name", sorted(json.loads((REFERENCE / "expected.json").read_text())["graphs"]) if REFERENCE.is_dir() else [])
def test_dp_optimum(name, capsys):
    doc = _solve([REFERENCE / name, "--format", "paper", "--solver", "dp"], capsys)
    want = _expected()["graphs"][name]["dp_optimum"]
    assert doc["objective"] == pytest.approx(want, rel=1e-6)
    assert doc["max_load"] == pytest.approx(want, rel=1e-6) and doc["gap"] == 0
    assert max(d["load"] for d in doc["devices"]) == pytest.approx(doc["max_load"])
    placed = sorted(v for d in doc["devices"] for v in d["nodes"])
    graph = json.loads((REFERENCE / name).read_text())
    assert placed == sorted(n["id"] for n in graph["nodes"])


@pytest.mark.parametrize("split_file", ["expert_layer_bert24_inference.json", "expert_layer_gnmt_inference.json",
                                        "expert_layer_resnet50_inference.json"])
def test_expert_splits(split_file, capsys):
    graph = _expected()["expert_splits"][split_file]
    doc = _solve([REFERENCE / graph, "--solver", "expert", "--expert", REFERENCE / split_file], capsys)
    assert doc["objective"] == pytest.approx(_expected()["graphs"][graph]["expert"], abs=1e-4)


def test_devices_override_and_errors(tmp_path, capsys):
    one = _solve([REFERENCE / "layer_bert24_inference.json", "--devices", "1"], capsys)
    many = _solve([REFERENCE / "layer_bert24_inference.json"], capsys)
    assert one["max_load"] > many["max_load"]
    (tmp_path / "bad.json").write_text("{\"nodes\": 3}")
    assert main(["solve", str(tmp_path / "bad.json")]) == 1
    assert "bad.json" in capsys.readouterr().err
    assert main(["solve", str(REFERENCE / "layer_bert24_inference.json"), "--solver", "expert"]) == 1
    assert "--expert" in capsys.readouterr().err
