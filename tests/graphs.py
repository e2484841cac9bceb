"""Tiny ONNX graphs built in code for rewrite tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return path


def model(nodes, inputs, outputs, inits=(), *, opset: int = 17, ir: int = 8, functions=(), extra_opsets=()):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets], functions=list(functions))
    m.ir_version = ir
    return m


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weight(name, shape, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).uniform(-0.5, 0.5, shape).astype(np.float32), name)


def chain(n: int = 6) -> onnx.ModelProto:
    """x -> (MatMul W_i, Relu) * n, with a Constant read by the first and last layer."""
    nodes = [helper.make_node("Constant", [], ["c"], name="const", value=numpy_helper.from_array(np.float32(0.5)))]
    inits = []
    prev = "x"
    for i in range(n):
        inits.append(weight(f"W{i}", [8, 8], seed=i))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"], name=f"mm{i}"))
        prev = f"m{i}"
        if i in (0, n - 1):
            nodes.append(helper.make_node("Mul", [prev, "c"], [f"s{i}"], name=f"scale{i}"))
            prev = f"s{i}"
        nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    # The graph input is read again at the very end, and an early tensor feeds two later stages.
    nodes.append(helper.make_node("ReduceSum", ["x"], ["xs"], name="xsum", keepdims=1))
    nodes.append(helper.make_node("Add", [prev, "xs"], ["y0"], name="addx"))
    nodes.append(helper.make_node("Add", ["y0", "r0"], ["y"], name="skip"))
    return model(nodes, [f32("x", ["N", 8])], [f32("y", ["N", 8])], inits)
