"""Costs and memory from a model: node memory, the activation working set, hand-off bytes."""

from __future__ import annotations

import pytest
from onnx import helper

from graphs import f32, model, save, weight
from onnxsplit.costmodel import activation_peak
from onnxsplit.devices import identical_devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.graphinfo import graph_info
from onnxsplit.model import load_model
from onnxsplit.shapes import concrete_types
from onnxsplit.splitting import prepare, split


def _relu_chain(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
             helper.make_node("Relu", ["a"], ["b"], name="r1"),
             helper.make_node("Relu", ["b"], ["c"], name="r2"),
             helper.make_node("Add", ["c", "a"], ["y"], name="add")]
    return save(model(nodes, [f32("x", ["N", 250])], [f32("y", ["N", 250])], [weight("W", [250, 250])]), tmp_path / "m.onnx")


def test_activation_peak_follows_liveness(tmp_path):
    m = load_model(_relu_chain(tmp_path))
    info = graph_info(m)
    types = concrete_types(m, {"x": (4, 250)})
    t = 4 * 250 * 4  # one activation, bytes
    # mm: {x, a}, then x is dead; r1: {a, b}; r2: {a, b, c}, then b is dead; add: {a, c, y}.
    assert activation_peak(info, types, (0, 1, 2, 3), ("x",), ("y",)) == 3 * t
    # a arrives; r1: {a, b}, then a is dead here; r2: {b, c}.
    assert activation_peak(info, types, (1, 2), ("a",), ("c",)) == 2 * t


def test_node_memory_counts_weights_and_outputs(tmp_path):
    prepared = prepare(_relu_chain(tmp_path), identical_devices(2), input_shapes={"x": (4, 250)})
    assert prepared.graph.memory[0] == 250 * 250 * 4 + 4 * 250 * 4
    assert prepared.graph.memory[1] == 4 * 250 * 4


def test_stage_activations_must_fit(tmp_path):
    src = _relu_chain(tmp_path)
    with pytest.raises(InfeasibleError, match="needs"):
        split(src, tmp_path / "out", devices=identical_devices(2, memory=250 * 250 * 4 + 100), input_shapes={"x": (64, 250)})
    assert not (tmp_path / "out").exists()
