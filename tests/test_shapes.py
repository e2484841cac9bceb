"""Shapes: dims stored as -1 are symbolic, input shapes are checked before anything is made at them."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import one_error_line, one_line, run_cli
from graphs import chain, f32, model, save
from onnx import TensorProto, helper

from onnxsplit.cli.main import main
from onnxsplit.errors import UsageError
from onnxsplit.model import load_model
from onnxsplit.shapes import (
    check_input_memory,
    concrete_types,
    fixed_dim,
    parse_input_shapes,
    resolve_input_shapes,
)



# ---------------------------------------------------------------------------------------------
# Dims stored as -1


def _minus_one_model(tmp_path):
    """A conv-free image model whose batch and width are stored as dim_value -1."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[3], keepdims=1),
             helper.make_node("Sub", ["r", "m"], ["y"], name="sub")]
    m = model(nodes, [f32("x", [-1, 3, 48, -1])], [f32("y", [-1, 3, 48, -1])])
    path = tmp_path / "minus.onnx"
    onnx.save_model(m, str(path))  # the checker would refuse -1; exporters write it anyway
    return path


def test_minus_one_is_symbolic(tmp_path):
    m = load_model(_minus_one_model(tmp_path))
    dims = m.inputs[0].type.tensor_type.shape.dim
    assert [fixed_dim(d) for d in dims] == [None, 3, 48, None]
    assert resolve_input_shapes(m, {"x": (1, 3, 48, 192)}) == {"x": (1, 3, 48, 192)}
    assert resolve_input_shapes(m, {}) == {"x": (1, 3, 48, 1)}
    with pytest.raises(UsageError, match="dim fixed to 48"):
        resolve_input_shapes(m, {"x": (1, 3, 40, 192)})
    types = concrete_types(m, {"x": (2, 3, 48, 192)})
    assert types["y"].shape == (2, 3, 48, 192) and types["m"].shape == (2, 3, 48, 1)
    # fixed_dim on its own: -1 is symbolic, 0 a fixed empty dim.
    d = onnx.TensorShapeProto.Dimension()
    d.dim_value = -1
    assert fixed_dim(d) is None
    d.dim_value = 0
    assert fixed_dim(d) == 0


def test_minus_one_model_splits_at_a_given_shape(tmp_path, capsys):
    path = _minus_one_model(tmp_path)
    out = tmp_path / "out"
    code, err = run_cli(["split", path, "--devices", 2, "--costs", "estimate", "--input-shape", "x:1x3x48x192",
                      "-o", out], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [None, 3, 48, None]

    def shapes(doc):
        if isinstance(doc, dict):
            own = [doc["shape"]] if "shape" in doc else []
            return own + [s for v in doc.values() for s in shapes(v)]
        return [s for v in doc for s in shapes(v)] if isinstance(doc, list) else []

    dims = [d for shape in shapes(manifest) if shape for d in shape]
    assert dims and not [d for d in dims if isinstance(d, int) and d < 0]
    assert main(["validate", str(out)]) == 0


# ---------------------------------------------------------------------------------------------
# Input shapes


def test_parse_input_shapes_refuses_repeats_and_empty_dims():
    assert parse_input_shapes(["x:2x8", "mask:", "a:b:1"]) == {"x": (2, 8), "mask": (), "a:b": (1,)}
    with pytest.raises(UsageError) as exc:
        parse_input_shapes(["x:2x8", "x:3x8"])
    assert "'x'" in one_line(exc) and "already" in one_line(exc)
    for bad in ("x:0x8", "x:2x-1", "x:2x0"):
        with pytest.raises(UsageError) as exc:
            parse_input_shapes([bad])
        assert repr(bad) in one_line(exc) and "positive" in one_line(exc)


def test_repeated_input_shape_on_the_command_line(tmp_path, capsys):
    good = save(chain(3), tmp_path / "good.onnx")
    code, err = run_cli(["split", good, "--devices", 2, "--costs", "estimate", "-o", tmp_path / "out",
                      "--input-shape", "x:2x8", "--input-shape", "x:3x8"], capsys)
    one_error_line(code, err, "'x'", "already")
    code, err = run_cli(["profile", good, "-o", tmp_path / "p.json", "--input-shape", "x:0x8"], capsys)
    one_error_line(code, err, "--input-shape", "positive")
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.json").exists()


def test_inputs_bigger_than_memory_are_refused(tmp_path, capsys):
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"])
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Relu", ["f"], ["y"], name="relu")]
    path = save(model(nodes, [ids], [f32("y", ["B", "T"])]), tmp_path / "ids.onnx")
    m = load_model(path)
    with pytest.raises(UsageError) as exc:
        check_input_memory(m, {"input_ids": (1000, 32)}, limit=100_000)
    message = one_line(exc)
    assert "256.0 kB" in message and "input_ids:1000x32" in message and "100.0 kB" in message
    check_input_memory(m, {"input_ids": (1000, 32)}, limit=256_000)
    # 10**12 x 32 int64 is 256 TB: more than any machine that runs this test.
    with pytest.raises(UsageError) as exc:
        resolve_input_shapes(m, {"input_ids": (10**12, 32)})
    assert "256.0 TB" in one_line(exc)
    for command in (["split", path, "--devices", 2, "--costs", "estimate", "-o", tmp_path / "out"],
                    ["profile", path, "-o", tmp_path / "p.json"]):
        code, err = run_cli([*command, "--input-shape", "input_ids:1000000000000x32"], capsys)
        one_error_line(code, err, "256.0 TB", "memory")
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.json").exists()
