"""Every user error: one line on stderr, exit code 1, and no output folder left behind."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import helper

from conftest import LIGHT, MODELS
from graphs import chain, f32, model, save
from onnxsplit.cli.main import main


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_one_line_error(code, err, pattern):
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("onnxsplit: error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert all(line.startswith("onnxsplit: ") for line in err.splitlines()), err  # no traceback
    assert pattern in errors[0], errors[0]


@pytest.fixture
def good(tmp_path):
    return save(chain(4), tmp_path / "good.onnx")


def _no_leftovers(parent, name="out"):
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith((f".{name}.", ".onnxsplit-"))]


def test_not_a_file(tmp_path, capsys):
    code, err = _run(["split", tmp_path / "missing.onnx", "--devices", 2, "-o", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "no such file")
    code, err = _run(["split", tmp_path, "--devices", 2, "-o", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "not a file")
    _no_leftovers(tmp_path)


def test_not_onnx(tmp_path, capsys):
    (tmp_path / "text.onnx").write_text("hello, this is not a model\n" * 10)
    code, err = _run(["split", tmp_path / "text.onnx", "--devices", 2, "-o", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "text.onnx")
    _no_leftovers(tmp_path)


def test_truncated_protobuf(tmp_path, capsys):
    data = (MODELS / "transformer.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    code, err = _run(["split", tmp_path / "cut.onnx", "--devices", 2, "-o", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "cut.onnx")
    _no_leftovers(tmp_path)


def test_cycle(tmp_path, capsys):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="A"), helper.make_node("Relu", ["a"], ["b"], name="B"),
             helper.make_node("Neg", ["a"], ["y"], name="C")]
    onnx.save_model(model(nodes, [f32("x", [2])], [f32("y", [2])]), str(tmp_path / "cyc.onnx"))
    code, err = _run(["split", tmp_path / "cyc.onnx", "--devices", 2, "-o", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "cycle")
    assert "'A'" in err and "'B'" in err
    _no_leftovers(tmp_path)


def test_unknown_input_shape_name(good, tmp_path, capsys):
    code, err = _run(["split", good, "--devices", 2, "-o", tmp_path / "out", "--input-shape", "nosuch:1x8"], capsys)
    _assert_one_line_error(code, err, "'nosuch'")
    code, err = _run(["split", good, "--devices", 2, "-o", tmp_path / "out", "--input-shape", "x:1xq"], capsys)
    _assert_one_line_error(code, err, "'x:1xq'")
    _no_leftovers(tmp_path)


def test_unknown_plan_name(good, tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps({"mm0": 0, "ghost": 1}))
    code, err = _run(["split", good, "--devices", 2, "-o", tmp_path / "out", "--plan", tmp_path / "plan.json"], capsys)
    _assert_one_line_error(code, err, "'ghost'")
    _no_leftovers(tmp_path)


def test_devices_zero_and_bad_flag(good, tmp_path, capsys):
    code, err = _run(["split", good, "--devices", 0, "-o", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "--devices")
    code, err = _run(["split", good, "--devices", "two", "-o", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "--devices")
    code, err = _run(["split", good, "--no-such-flag", "-o", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "--no-such-flag")
    _no_leftovers(tmp_path)


def test_existing_outdir_needs_force(good, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _run(["split", good, "--devices", 2, "-o", out], capsys)
    _assert_one_line_error(code, err, "--force")
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only a previous split: a folder holding anything else is refused, and kept.
    code, err = _run(["split", good, "--devices", 2, "-o", out, "--force"], capsys)
    _assert_one_line_error(code, err, "keep.txt")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert main(["split", str(good), "--devices", "2", "-o", str(out)]) == 1
    assert main(["split", str(good), "--devices", "2", "-o", str(out), "--force"]) == 0
    assert main(["split", str(good), "--devices", "2", "-o", str(out), "--force"]) == 0
    assert (out / "manifest.json").exists()


def test_model_does_not_fit_memory(tmp_path, capsys):
    code, err = _run(["split", MODELS / "external_data.onnx", "--devices", 2, "--device-memory", "1K", "-o", tmp_path / "out"], capsys)
    _assert_one_line_error(code, err, "memory")
    _no_leftovers(tmp_path)


def test_validate_errors(good, tmp_path, capsys):
    code, err = _run(["validate", tmp_path / "nothing"], capsys)
    _assert_one_line_error(code, err, "not a split folder")
    assert main(["split", str(good), "--devices", "2", "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    code, err = _run(["validate", tmp_path / "out", "--model", LIGHT / "light_squeezenet.onnx"], capsys)
    _assert_one_line_error(code, err, "sha256")
    (tmp_path / "feeds.npz").write_bytes(b"junk")
    code, err = _run(["validate", tmp_path / "out", "--inputs", tmp_path / "feeds.npz"], capsys)
    _assert_one_line_error(code, err, "feeds.npz: not a readable .npz file")


def test_validate_fails_on_a_wrong_stage(good, tmp_path, capsys):
    """A tampered stage makes validate print FAILED, exit 1 and name the stage that diverges."""
    import numpy as np
    from onnx import numpy_helper

    out = tmp_path / "out"
    names = [n.name for n in chain(4).graph.node if n.op_type != "Constant"]
    (tmp_path / "p.json").write_text(json.dumps({n: int(i >= len(names) // 2) for i, n in enumerate(names)}))
    assert main(["split", str(good), "--devices", "2", "-o", str(out), "--plan", str(tmp_path / "p.json")]) == 0
    stage = onnx.load(str(out / "stage_0.onnx"))
    w = stage.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + np.float32(0.25), w.name))
    onnx.save_model(stage, str(out / "stage_0.onnx"))
    capsys.readouterr()
    code = main(["validate", str(out), "--check-handoffs"])
    printed = capsys.readouterr().out
    assert code == 1
    assert printed.strip().splitlines()[-1] == "FAILED"
    assert "first stage that diverges: 0" in printed


def test_fewer_stages_than_devices_is_said_loudly(tmp_path, capsys):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")]
    tiny = save(model(nodes, [f32("x", [4])], [f32("y", [4])]), tmp_path / "tiny.onnx")
    assert main(["split", str(tiny), "--devices", "8", "--costs", "estimate", "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr()
    stages = len(json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"])
    assert stages < 8
    assert f"onnxsplit: warning: the plan uses {stages} of the 8 devices" in printed.err
    assert "warning" not in printed.out.lower()  # warnings go to stderr only
