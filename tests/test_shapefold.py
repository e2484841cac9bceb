"""Shape computations evaluated with numpy size what a run of the model would, without running it."""

from __future__ import annotations

import make_models
import numpy as np
from conftest import MODELS
from graphs import model, save
from onnx import TensorProto, helper

from onnxsplit.graphinfo import graph_info
from onnxsplit.model import load_model
from onnxsplit.probe import probe_sizes
from onnxsplit.shapefold import shape_values, static_types
from onnxsplit.shapes import concrete_types, resolve_input_shapes
from onnxsplit.splitting import _unsized, load


def _agree_with_a_run(path, shapes) -> int:
    m = load_model(path)
    fixed = resolve_input_shapes(m, shapes)
    types = concrete_types(m, fixed)
    unknown = _unsized(graph_info(m), types)
    found = static_types(m, fixed, types, unknown)
    ran = probe_sizes(m, unknown, shapes=fixed)
    for name, t in found.items():
        assert ran[name] == t, name
    return len(found)


def test_transformer_sizes_match_a_run(tmp_path) -> None:
    # Range, and the Reshapes fed by Shape -> Gather -> Concat, are what shape inference leaves open.
    assert _agree_with_a_run(MODELS / "transformer.onnx", {"input_ids": (4, 32)}) > 0
    path = tmp_path / "deep.onnx"
    make_models.save(make_models.make_deep_transformer(3), path)
    assert _agree_with_a_run(path, {"input_ids": (2, 16)}) > 0


def test_load_sizes_every_hand_off_without_a_run(monkeypatch) -> None:
    from onnxsplit import splitting

    def no_run(*args, **kwargs):
        raise AssertionError("the model was run to size tensors")

    monkeypatch.setattr(splitting, "probe_sizes", no_run)
    loaded = load(MODELS / "transformer.onnx", input_shapes={"input_ids": (4, 32)})
    assert not _unsized(loaded.info, loaded.types)


def test_ops(tmp_path) -> None:
    i64 = lambda name, values: helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "one", "two"], ["d1"]),
        helper.make_node("Div", ["d1", "neg2"], ["q"]),  # 5 / -2 truncates to -2
        helper.make_node("Neg", ["q"], ["n"]),
        helper.make_node("Range", ["zero_s", "five_s", "one_s"], ["r"]),
        helper.make_node("Concat", ["n", "three"], ["target"], axis=0),
        helper.make_node("Unsqueeze", ["r", "zero"], ["ru"]),
        helper.make_node("Reshape", ["ru", "target"], ["y"]),
    ]
    inits = [i64("one", [1]), i64("two", [2]), i64("three", [3]), i64("neg2", [-2]), i64("zero", [0]),
             helper.make_tensor("zero_s", TensorProto.INT64, [], [0]), helper.make_tensor("five_s", TensorProto.INT64, [], [6]),
             helper.make_tensor("one_s", TensorProto.INT64, [], [1])]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
              [helper.make_tensor_value_info("y", TensorProto.INT64, ["a", "b"])], inits)
    path = save(m, tmp_path / "ops.onnx")
    loaded = load_model(path)
    values = shape_values(loaded, concrete_types(loaded, {"x": (3, 5)}))
    assert values["q"].tolist() == [-2]
    assert values["r"].tolist() == list(range(6))
    assert values["y"].shape == (2, 3)
    assert np.array_equal(values["y"], np.arange(6).reshape(2, 3))
