"""The stage model as a Triton model repository holds it (``NAME_stage_K/1/model.onnx``).

Triton refuses scalar inputs and outputs in a model without a batch dim,
so a stage that takes or gives a scalar (shape ``[]``: a length, a step
count, a scale) gets a one-element vector in its place: the written model
takes ``X__1d`` of shape ``[1]`` and reshapes it to the scalar ``X`` its
nodes read, or reshapes the scalar ``X`` it makes into the output
``X__1d``. Nothing inside the graph is renamed; the ensemble maps the new
names to the old ones. Every other stage is copied byte for byte.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

VECTOR_SUFFIX = "__1d"


def write_stage_model(src: Path, dst: Path, *, scalar_inputs: Collection[str] = (),
                      scalar_outputs: Collection[str] = ()) -> Mapping[str, str]:
    """Write stage model ``src`` to ``dst``, the named scalar inputs and outputs turned into one-element vectors.

    Before: every name is a graph input (or output) of ``src`` of rank 0.
    Returns tensor name -> the name the written model uses for it, for the
    tensors renamed. External data stays where ``src`` references it
    (relative to ``dst``'s folder, so it must be copied beside ``dst``).
    """
    if not scalar_inputs and not scalar_outputs:
        shutil.copyfile(src, dst)
        return {}
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    taken = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    taken |= {n for node in graph.node for n in (*node.input, *node.output, node.name)}

    def fresh(base: str) -> str:
        name = base + VECTOR_SUFFIX
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    def shape_const(output: str, dims: list[int]) -> onnx.NodeProto:
        value = helper.make_tensor(output, TensorProto.INT64, [len(dims)], dims)
        return helper.make_node("Constant", [], [output], name=output, value=value)

    renamed: dict[str, str] = {}
    head: list[onnx.NodeProto] = []
    tail: list[onnx.NodeProto] = []
    for vi in graph.input:
        if vi.name in scalar_inputs:
            vector = fresh(vi.name)
            shape = fresh(vi.name + "__shape")
            head += [shape_const(shape, []), helper.make_node("Reshape", [vector, shape], [vi.name], name=vector)]
            renamed[vi.name] = vector
            vi.name = vector
            vi.type.tensor_type.shape.CopyFrom(helper.make_tensor_type_proto(1, [1]).tensor_type.shape)
    for vi in graph.output:
        if vi.name in scalar_outputs:
            vector = fresh(vi.name)
            shape = fresh(vi.name + "__shape")
            tail += [shape_const(shape, [1]), helper.make_node("Reshape", [vi.name, shape], [vector], name=vector)]
            renamed[vi.name] = vector
            vi.name = vector
            vi.type.tensor_type.shape.CopyFrom(helper.make_tensor_type_proto(1, [1]).tensor_type.shape)
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    missing = (set(scalar_inputs) | set(scalar_outputs)) - set(renamed)
    if missing:
        raise ValueError(f"{src}: no graph input or output named {min(missing)!r}")
    dst.write_bytes(model.SerializeToString())
    return renamed
