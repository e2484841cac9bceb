"""--json: every command that prints a result prints exactly one JSON document on stdout, and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MODELS, REFERENCE
from onnxsplit.cli.main import main


def _strict(text: str):
    """Parse one JSON document; NaN and Infinity (not JSON) are refused."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _json(argv, capsys, code=0):
    got = main([str(a) for a in argv])
    printed = capsys.readouterr()
    assert got == code, printed.err
    return _strict(printed.out)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("json") / "out"
    assert main(["split", str(MODELS / "transformer.onnx"), "--input-shape", "input_ids:4x32", "--costs", "estimate",
                 "-o", str(out)]) == 0
    return out


def test_split(tmp_path, capsys):
    doc = _json(["split", MODELS / "transformer.onnx", "--devices", 8, "--input-shape", "input_ids:4x32",
                 "--costs", "estimate", "--time-limit", 5, "-o", tmp_path / "out", "--json"], capsys)
    assert doc["outdir"] == str(tmp_path / "out") and doc["solver"] and len(doc["stages"]) >= 2
    assert sum(s["bottleneck"] for s in doc["stages"]) == 1
    assert max(s["predicted_ms"] for s in doc["stages"]) == pytest.approx(doc["value"])
    assert isinstance(doc["warnings"], list)


def test_validate(split_dir, capsys):
    doc = _json(["validate", split_dir, "--json"], capsys)
    assert doc["passed"] is True and doc["outputs"]


def test_validate_failed_is_still_one_document(split_dir, tmp_path, capsys):
    """A FAILED validation: exit 1, and the verdict is the document's "passed", not a line after it."""
    import shutil

    import onnx
    from onnx import numpy_helper

    bad = tmp_path / "bad"
    shutil.copytree(split_dir, bad)
    stage = onnx.load(str(bad / "stage_0.onnx"))
    for w in stage.graph.initializer:
        if numpy_helper.to_array(w).dtype == np.float32:
            w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.5) + 1, w.name))
    onnx.save_model(stage, str(bad / "stage_0.onnx"))
    doc = _json(["validate", bad, "--json"], capsys, code=1)
    assert doc["passed"] is False


def test_profile(tmp_path, capsys):
    from graphs import chain, save

    model = save(chain(3), tmp_path / "m.onnx")
    doc = _json(["profile", model, "-o", tmp_path / "p.json", "--runs", 2, "--warmup", 0, "--json"], capsys)
    assert doc["format"] == "onnxsplit.profile" and doc == json.loads((tmp_path / "p.json").read_text())


@pytest.mark.parametrize("fmt", ["onnxsplit", "paper"])
def test_costgraph(tmp_path, capsys, fmt):
    argv = ["costgraph", MODELS / "branchy_cnn.onnx", "--input-shape", "image:8x3x32x32", "--costs", "estimate",
            "--format", fmt]
    summary = _json([*argv, "-o", tmp_path / "g.json", "--json"], capsys)
    assert summary["output"] == str(tmp_path / "g.json") and summary["nodes"] > 0
    printed = _json(argv, capsys)  # no -o: the graph itself, on stdout
    assert printed == _strict((tmp_path / "g.json").read_text())


def test_solve(capsys):
    doc = _json(["solve", REFERENCE / "layer_bert24_inference.json", "--solver", "dp", "--json"], capsys)
    assert doc["solver"] == "dp" and doc["max_load"] == pytest.approx(doc["value"])


def test_run(split_dir, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", input_ids=np.zeros((4, 32), dtype=np.int64))
    doc = _json(["run", split_dir, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz", "--no-pin", "--json"],
                capsys)
    assert doc["output"] == str(tmp_path / "out.npz") and doc["outputs"][0]["shape"][:2] == [4, 32]


def test_bench(split_dir, capsys):
    doc = _json(["bench", split_dir, "--seconds", 0.1, "--warmup", 0, "--rounds", 1, "--no-pin", "--json"], capsys)
    assert doc["pipeline"]["samples_per_s"] > 0


def test_non_finite_numbers_become_strings(capsys):
    from onnxsplit.cli.common import print_json

    print_json({"a": float("inf"), "b": [float("nan"), 1.5], "c": -float("inf")})
    assert _strict(capsys.readouterr().out) == {"a": "inf", "b": ["nan", 1.5], "c": "-inf"}
