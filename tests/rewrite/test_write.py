"""Typing what crosses a stage boundary: sequences, optionals, and hand-offs only a run can type."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import f32, model, save
from onnx import TensorProto, helper

from onnxsplit import split, validate
from onnxsplit.errors import ModelError, UsageError
from onnxsplit.manifest import load_manifest
from onnxsplit.runtime import Pipeline
from onnxsplit.runtime.bench import bench
from onnxsplit.runtime.specs import stage_specs


def _plan(path, mapping):
    path.write_text(json.dumps(mapping))
    return path


def _sequence_handoff(tmp_path):
    """x -> SplitToSequence -> (stage cut) -> SequenceAt(pos) -> y, and the sequence is an output too."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("SplitToSequence", ["r"], ["seq"], name="split", axis=0, keepdims=0),
        helper.make_node("SequenceAt", ["seq", "pos"], ["at"], name="at"),
        helper.make_node("Neg", ["at"], ["y"], name="neg"),
    ]
    outputs = [f32("y", [3]), helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)]
    m = model(nodes, [f32("x", [2, 3]), helper.make_tensor_value_info("pos", TensorProto.INT64, [])], outputs)
    return save(m, tmp_path / "seq.onnx")


def test_a_sequence_crosses_a_stage_boundary(tmp_path):
    src = _sequence_handoff(tmp_path)
    mapping = {"relu": 0, "split": 0, "at": 1, "neg": 1}
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    feeds = {"x": x, "pos": np.array(1)}  # random positions could be out of range
    result = split(src, tmp_path / "out", devices=2, plan=_plan(tmp_path / "p.json", mapping), costs="estimate",
                   inputs=feeds)
    for stage in result.manifest.stages:
        onnx.checker.check_model(str(tmp_path / "out" / stage.file), full_check=True)
    report = validate(tmp_path / "out", inputs_path=feeds, check_handoffs=True)
    assert report.passed and [c.name for c in report.handoffs] == ["seq"]
    (seq,) = [h for h in result.manifest.handoffs if h.name == "seq"]
    assert (seq.dtype, seq.shape, seq.producer, seq.consumers) == ("seq(float32)", None, 0, (1,))
    assert [(o.name, o.dtype, o.shape) for o in result.manifest.outputs][1] == ("seq", "seq(float32)", None)
    # The folder reads back, and the pipeline carries the list from stage to stage.
    manifest = load_manifest(tmp_path / "out")
    assert manifest.handoffs == result.manifest.handoffs
    with Pipeline(tmp_path / "out") as pipe:
        out = pipe.run({"x": x, "pos": np.array(1)})
    assert np.array_equal(out["y"], -x[1]) and isinstance(out["seq"], list) and len(out["seq"]) == 2
    # IO binding cannot carry a list: a GPU stage with a sequence runs with host arrays.
    specs = stage_specs(manifest)
    assert [s.tensors_only for s in specs] == [False, False] and not any(s.on_device for s in specs)


def test_an_optional_crosses_a_stage_boundary(tmp_path):
    """x -> Relu -> Optional -> (stage cut) -> OptionalGetElement -> Neg -> y."""
    element = helper.make_tensor_type_proto(TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Optional", ["r"], ["o"], name="wrap", type=element),
             helper.make_node("OptionalGetElement", ["o"], ["g"], name="unwrap"),
             helper.make_node("Neg", ["g"], ["y"], name="neg")]
    src = save(model(nodes, [f32("x", [2])], [f32("y", [2])], opset=18), tmp_path / "opt.onnx")
    mapping = {"relu": 0, "wrap": 0, "unwrap": 1, "neg": 1}
    result = split(src, tmp_path / "out", devices=2, plan=_plan(tmp_path / "p.json", mapping), costs="estimate")
    for stage in result.manifest.stages:
        onnx.checker.check_model(str(tmp_path / "out" / stage.file), full_check=True)
    (o,) = result.manifest.handoffs
    assert (o.name, o.dtype, o.producer, o.consumers) == ("o", "optional(float32)", 0, (1,))
    feeds = {"x": np.array([-1.0, 2.0], np.float32)}
    report = validate(tmp_path / "out", inputs_path=feeds, check_handoffs=True)
    assert report.passed and [c.name for c in report.handoffs] == ["o"]
    with Pipeline(tmp_path / "out") as pipe:
        assert np.array_equal(pipe.run(feeds)["y"], np.array([0.0, -2.0], np.float32))


def test_sequence_and_optional_graph_inputs_and_outputs(tmp_path):
    nodes = [
        helper.make_node("SequenceInsert", ["s", "x"], ["s2"], name="insert"),
        helper.make_node("SequenceLength", ["s2"], ["n"], name="length"),
        helper.make_node("Identity", ["opt"], ["opt_out"], name="ident"),
    ]
    opt_type = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))
    inputs = [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None), f32("x", [2]),
              helper.make_value_info("opt", opt_type)]
    outputs = [helper.make_tensor_sequence_value_info("s2", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("n", TensorProto.INT64, []), helper.make_value_info("opt_out", opt_type)]
    src = save(model(nodes, inputs, outputs, opset=18), tmp_path / "io.onnx")
    feeds = {"s": [np.ones(2, np.float32), np.zeros(3, np.float32)], "x": np.full(2, 7, np.float32),
             "opt": np.array([1.0, 2.0], np.float32)}
    mapping = {"insert": 0, "length": 1, "ident": 2}
    result = split(src, tmp_path / "out", devices=3, plan=_plan(tmp_path / "p.json", mapping), costs="estimate",
                   inputs=feeds)
    assert len(result.manifest.stages) == 3
    assert [(i.name, i.dtype) for i in result.manifest.inputs] == [("s", "seq(float32)"), ("x", "float32"),
                                                                    ("opt", "optional(float32)")]
    assert validate(tmp_path / "out", inputs_path=feeds).passed
    assert validate(tmp_path / "out", inputs_path={**feeds, "opt": None}).passed  # an empty optional
    with pytest.raises(UsageError, match="'s' is a seq\\(float32\\)"):
        validate(tmp_path / "out")  # no random sequence can be made
    with pytest.raises(UsageError, match="'s' is a seq\\(float32\\): bench makes random tensors only"):
        bench(tmp_path / "out", seconds=0.1)


def _value_steered(tmp_path, rank: int):
    """ReduceSum over axes read from an input: shape inference cannot tell the result's rank, a run can."""
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], name="reduce", keepdims=0),
             helper.make_node("Neg", ["s"], ["y"], name="neg")]
    shape = [2, 3, 4][:rank]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (rank - 1))
    m = model(nodes, [f32("x", shape), helper.make_tensor_value_info("axes", TensorProto.INT64, [1])], [y], opset=18)
    src = save(m, tmp_path / f"steered{rank}.onnx")
    return src, _plan(tmp_path / "p.json", {"reduce": 0, "neg": 1})


def test_a_probe_on_random_inputs_writes_no_dim_it_saw(tmp_path):
    # Random axes are [1]; the user's are [0]. A hand-off written 2x4 from the random run would refuse 3x4.
    src, plan = _value_steered(tmp_path, 3)
    result = split(src, tmp_path / "out", devices=2, plan=plan, costs="estimate")
    (s,) = result.manifest.handoffs
    assert (s.name, s.dtype, s.shape) == ("s", "float32", (None, None))
    assert onnx.load(str(tmp_path / "out" / "stage_1.onnx")).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0
    feeds = {"x": np.ones((2, 3, 4), np.float32), "axes": np.array([0])}
    assert validate(tmp_path / "out", inputs_path=feeds).passed


def test_a_failed_probe_is_one_line_that_asks_for_representative_inputs(tmp_path):
    src, plan = _value_steered(tmp_path, 1)  # random axes [1] are out of range for a rank-1 x
    with pytest.raises(ModelError) as err:
        split(src, tmp_path / "out", devices=2, plan=plan, costs="estimate")
    message = str(err.value)
    assert "'s'" in message and "representative inputs" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    feeds = {"x": np.arange(2, dtype=np.float32), "axes": np.array([0])}
    np.savez(tmp_path / "feeds.npz", **feeds)
    for given in (feeds, tmp_path / "feeds.npz"):
        out = tmp_path / f"out-{type(given).__name__}"
        split(src, out, devices=2, plan=plan, costs="estimate", inputs=given)
        assert validate(out, inputs_path=feeds).passed


def test_a_failed_probe_still_splits_where_shape_inference_gives_the_type(tmp_path, caplog, monkeypatch):
    """Random indices fall outside a one-row table, so no run works; shape inference gives the hand-off's type and rank
    (NonZero: int64, 2 x unknown), and that is enough to split."""
    import logging

    monkeypatch.setattr(logging.getLogger("onnxsplit"), "propagate", True)  # the CLI's tests may have turned it off
    nodes = [helper.make_node("Gather", ["table", "ids"], ["g"], name="gather"),
             helper.make_node("NonZero", ["g"], ["nz"], name="nonzero"),
             helper.make_node("Transpose", ["nz"], ["y"], name="transpose")]
    src = save(model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [8])],
                     [helper.make_tensor_value_info("y", TensorProto.INT64, [None, 2])],
                     [helper.make_tensor("table", TensorProto.FLOAT, [1, 3], [1.0, 0.0, 3.0])]), tmp_path / "nz.onnx")
    plan = _plan(tmp_path / "p.json", {"gather": 0, "nonzero": 0, "transpose": 1})
    result = split(src, tmp_path / "out", devices=2, plan=plan, costs="estimate")
    (nz,) = result.manifest.handoffs
    assert (nz.name, nz.dtype, nz.shape[0]) == ("nz", "int64", 2) and len(nz.shape) == 2
    assert "could not run the model" in caplog.text and "representative inputs would size them" in caplog.text
    assert validate(tmp_path / "out", inputs_path={"ids": np.zeros(8, np.int64)}, check_handoffs=True).passed


def test_representative_inputs_fix_the_input_shapes(tmp_path):
    src, plan = _value_steered(tmp_path, 3)
    feeds = {"x": np.ones((2, 3, 4), np.float32), "axes": np.array([2])}
    result = split(src, tmp_path / "out", devices=2, plan=plan, costs="estimate", inputs=feeds)
    assert dict(result.manifest.input_shapes) == {"x": (2, 3, 4), "axes": (1,)}
    assert result.manifest.handoffs[0].bytes_per_sample == 2 * 3 * 4  # sized on the user's axes: 2x3 floats
    with pytest.raises(UsageError, match="'x'.*disagrees"):
        split(src, tmp_path / "bad", devices=2, plan=plan, costs="estimate", inputs=feeds,
              input_shapes={"x": (2, 3, 5)})


@pytest.mark.parametrize("feeds, match", [
    ({"x": np.ones((2, 3, 4), np.float32)}, "no value for model input 'axes'"),
    ({"x": np.ones((2, 3, 4), np.float32), "axes": np.array([0]), "z": np.ones(1)}, "'z' is not an input"),
    ({"x": np.ones((2, 3, 4), np.float64), "axes": np.array([0])}, "'x' is float64 but the model takes float32"),
    ({"x": np.ones((2, 3), np.float32), "axes": np.array([0])}, "'x' has rank 2 but the model takes rank 3"),
])
def test_bad_representative_inputs_are_one_line(tmp_path, feeds, match):
    src, plan = _value_steered(tmp_path, 3)
    with pytest.raises(UsageError, match=match):
        split(src, tmp_path / "out", devices=2, plan=plan, costs="estimate", inputs=feeds)
