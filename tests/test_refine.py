"""`split --refine N`: rounds are measured, recorded in plan.json, and the kept split is valid."""

from __future__ import annotations

import json

import pytest

from conftest import MODELS, one_line
from onnxsplit.cli.main import main
from onnxsplit.errors import UsageError
from onnxsplit.refine import Round, load_rounds, refine_split, scale_by_stage
from onnxsplit.solve.plan import stage_loads
from onnxsplit.splitting import prepare
from onnxsplit.devices import identical_devices
from onnxsplit.validation import validate


def test_refine_records_rounds_and_keeps_a_valid_split(tmp_path):
    out = tmp_path / "out"
    code = main(["split", str(MODELS / "branchy_cnn.onnx"), "--devices", "2", "--input-shape", "image:8x3x32x32",
                 "--costs", "estimate", "--refine", "2", "-o", str(out)])
    assert code == 0
    rounds = json.loads((out / "plan.json").read_text())["refine"]
    assert rounds[0]["index"] == 0 and rounds[0]["kept"]
    assert all(r["samples_per_s"] > 0 and r["measured_bottleneck_ms"] > 0 for r in rounds)
    assert [r["index"] for r in rounds] == list(range(len(rounds)))
    assert validate(out).passed


def test_scaling_by_stage_matches_the_measurement():
    devices = identical_devices(2)
    graph = prepare(MODELS / "branchy_cnn.onnx", devices, input_shapes={"image": (8, 3, 32, 32)}, costs="estimate").graph
    half = graph.n // 2
    stage_of = tuple(0 if v < half else 1 for v in range(graph.n))
    before = [sl.compute for sl in stage_loads(graph, devices, stage_of, (0, 1))]
    scaled = scale_by_stage(graph, stage_of, [2.0, 0.5])
    after = [sl.compute for sl in stage_loads(scaled, devices, stage_of, (0, 1))]
    assert after[0] == 2.0 * before[0] or abs(after[0] - 2.0 * before[0]) < 1e-9 * before[0]
    assert abs(after[1] - 0.5 * before[1]) < 1e-9 * max(before[1], 1e-12)


def test_refine_rejects_a_plan_file(tmp_path, capsys):
    (tmp_path / "p.json").write_text("{}")
    code = main(["split", str(MODELS / "branchy_cnn.onnx"), "--refine", "1", "--plan", str(tmp_path / "p.json"),
                 "-o", str(tmp_path / "out")])
    assert code == 1 and "--refine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_refine_rounds_come_back_from_plan_json(tmp_path):
    out = tmp_path / "out"
    result, history = refine_split(MODELS / "branchy_cnn.onnx", out, rounds=1, seconds=0.2, devices=2,
                                   input_shapes={"image": (8, 3, 32, 32)}, costs="estimate")
    rounds = load_rounds(out / "plan.json")
    assert rounds == tuple(history) and all(isinstance(r, Round) for r in rounds)
    assert rounds[0].index == 0 and rounds[0].kept and rounds[0].samples_per_s > 0
    assert result.manifest.plan_path() == out / "plan.json"


def test_a_plan_without_rounds_has_none(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"format": "onnxsplit.plan", "stages": []}))
    assert load_rounds(tmp_path / "plan.json") == ()


@pytest.mark.parametrize("rounds, field", [
    ("many", "refine: expected a list"),
    ([7], "refine[0]: expected an object"),
    ([{"index": 0, "predicted_bottleneck_ms": 1.0, "measured_bottleneck_ms": 1.0, "samples_per_s": 5.0}],
     "refine[0].kept: missing"),
    ([{"index": 1, "predicted_bottleneck_ms": 1.0, "measured_bottleneck_ms": 1.0, "samples_per_s": 5.0,
       "kept": True}], "refine[0].index: expected 0"),
    ([{"index": 0, "predicted_bottleneck_ms": "1", "measured_bottleneck_ms": 1.0, "samples_per_s": 5.0,
       "kept": True}], "refine[0].predicted_bottleneck_ms: expected a number"),
    ([{"index": 0, "predicted_bottleneck_ms": 1.0, "measured_bottleneck_ms": 1.0, "samples_per_s": -5.0,
       "kept": True}], "refine[0].samples_per_s: expected a number at least 0"),
    ([{"index": 0, "predicted_bottleneck_ms": 1.0, "measured_bottleneck_ms": 1.0, "samples_per_s": 5.0,
       "kept": 1}], "refine[0].kept: expected true or false"),
])
def test_damaged_rounds_are_refused_naming_the_field(tmp_path, rounds, field):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": "onnxsplit.plan", "refine": rounds}))
    with pytest.raises(UsageError) as info:
        load_rounds(path)
    assert one_line(info).startswith(f"{path}: {field}")
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="a plan file is a JSON object"):
        load_rounds(path)
