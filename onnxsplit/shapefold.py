"""Sizing tensors that shape inference leaves open, by evaluating the model's shape computations.

Exported models compute reshape targets and position ranges at run time
(Shape -> Gather -> Concat -> Reshape, Shape -> Range). With the input
shapes fixed these values do not depend on any input's *values*, yet ONNX
shape inference does not propagate them through every op (Range, for one),
so the tensors they shape stay unsized. Running the model once sizes them,
but building an onnxruntime session of a graph with 100,000 nodes takes tens
of seconds. Here the shape computations are evaluated with numpy instead,
and shape inference is run again with their values as constants.

Only nodes whose every input is an initializer of a few elements, a
Constant, or a ``Shape`` of a tensor whose shape is fixed are evaluated, by a
small set of ops implemented below; anything else is left to the run, as
before. The values are used only to size tensors, never written into a
stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxsplit.model import Model, infer, is_external, light_copy, node_subgraphs
from onnxsplit.shapes import TensorType, fixed_dim

log = logging.getLogger(__name__)

# Shape values are short: a value bigger than this is data, not a shape, and is not evaluated.
MAX_ELEMENTS = 1024

Values = Sequence[np.ndarray | None]


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _axes(node: onnx.NodeProto, ins: Values, at: int) -> list[int] | None:
    """Axes from the attribute (old opsets) or the input at ``at`` (newer ones)."""
    if len(ins) > at and ins[at] is not None:
        return [int(a) for a in np.asarray(ins[at]).ravel()]
    axes = _attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


def _constant(node: onnx.NodeProto, ins: Values) -> list[np.ndarray]:
    for a in node.attribute:
        if a.name == "value":
            return [numpy_helper.to_array(a.t)]
        if a.name == "value_int":
            return [np.array(a.i, dtype=np.int64)]
        if a.name == "value_ints":
            return [np.array(list(a.ints), dtype=np.int64)]
        if a.name == "value_float":
            return [np.array(a.f, dtype=np.float32)]
        if a.name == "value_floats":
            return [np.array(list(a.floats), dtype=np.float32)]
    raise ValueError("a Constant without a numeric value")


def _unsqueeze(node: onnx.NodeProto, ins: Values) -> list[np.ndarray]:
    x, axes = ins[0], _axes(node, ins, 1)
    rank = x.ndim + len(axes)
    out = x
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return [out]


def _squeeze(node: onnx.NodeProto, ins: Values) -> list[np.ndarray]:
    axes = _axes(node, ins, 1)
    return [np.squeeze(ins[0]) if axes is None else np.squeeze(ins[0], axis=tuple(a % ins[0].ndim for a in axes))]


def _slice(node: onnx.NodeProto, ins: Values) -> list[np.ndarray]:
    x = ins[0]
    if len(ins) < 3:  # opset < 10: attributes
        starts, ends, axes, steps = _attr(node, "starts"), _attr(node, "ends"), _attr(node, "axes"), None
    else:
        starts, ends = ins[1].tolist(), ins[2].tolist()
        axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else None
        steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        # Python slicing clamps out-of-range bounds as ONNX does (INT64_MAX/MIN included).
        index[a % x.ndim] = slice(int(s), int(e), int(st))
    return [x[tuple(index)]]


def _reshape(node: onnx.NodeProto, ins: Values) -> list[np.ndarray]:
    x, target = ins[0], [int(d) for d in ins[1]]
    if not _attr(node, "allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [x.reshape(target)]


def _div(node: onnx.NodeProto, ins: Values) -> list[np.ndarray]:
    a, b = ins
    if np.issubdtype(a.dtype, np.integer):
        # ONNX integer division truncates toward zero, as C does.
        q = np.abs(a) // np.abs(b)
        return [(np.sign(a) * np.sign(b) * q).astype(a.dtype)]
    return [(a / b).astype(a.dtype)]


def _cast(node: onnx.NodeProto, ins: Values) -> list[np.ndarray]:
    return [ins[0].astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(node, "to")))]


def _range(node: onnx.NodeProto, ins: Values) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(v).reshape(()) for v in ins)
    return [np.arange(start, limit, delta, dtype=start.dtype)]


def _constant_of_shape(node: onnx.NodeProto, ins: Values) -> list[np.ndarray]:
    shape = [int(d) for d in ins[0]]
    if int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
        raise ValueError("too large to evaluate")
    value = _attr(node, "value")
    fill = numpy_helper.to_array(value).reshape(()) if value is not None else np.array(0.0, dtype=np.float32)
    return [np.full(shape, fill, dtype=fill.dtype)]


def _same_dtype(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[onnx.NodeProto, Values], list]:
    return lambda node, ins: [np.asarray(fn(ins[0], ins[1])).astype(ins[0].dtype)]


# op_type -> evaluation of the default domain's op. Each takes the node and its input values (None for
# an omitted optional input) and returns the output values; an exception means "not evaluated".
OPS: dict[str, Callable[[onnx.NodeProto, Values], list[np.ndarray]]] = {
    "Constant": _constant,
    "Identity": lambda node, ins: [ins[0]],
    "Cast": _cast,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda node, ins: [np.concatenate([np.atleast_1d(v) for v in ins], axis=_attr(node, "axis"))],
    "Gather": lambda node, ins: [np.take(ins[0], ins[1].astype(np.int64), axis=_attr(node, "axis", 0))],
    "Slice": _slice,
    "Reshape": _reshape,
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Add": _same_dtype(np.add),
    "Sub": _same_dtype(np.subtract),
    "Mul": _same_dtype(np.multiply),
    "Div": _div,
    "Max": lambda node, ins: [np.maximum.reduce(list(ins)).astype(ins[0].dtype)],
    "Min": lambda node, ins: [np.minimum.reduce(list(ins)).astype(ins[0].dtype)],
    "Neg": lambda node, ins: [np.negative(ins[0])],
    "Sqrt": lambda node, ins: [np.sqrt(ins[0]).astype(ins[0].dtype)],
    "Equal": lambda node, ins: [np.equal(ins[0], ins[1])],
    "Less": lambda node, ins: [np.less(ins[0], ins[1])],
    "Greater": lambda node, ins: [np.greater(ins[0], ins[1])],
    "Not": lambda node, ins: [np.logical_not(ins[0])],
    "Where": lambda node, ins: [np.where(ins[0], ins[1], ins[2])],
}


def _shape_of(node: onnx.NodeProto, types: dict[str, TensorType]) -> np.ndarray | None:
    t = types.get(node.input[0])
    if t is None or t.shape is None:
        return None
    rank = len(t.shape)
    start, end = _attr(node, "start", 0), _attr(node, "end", rank)
    return np.array(t.shape[slice(start, end)], dtype=np.int64)


def shape_values(model: Model, types: dict[str, TensorType]) -> dict[str, np.ndarray]:
    """Values of the node outputs computed from constants and fixed shapes alone (see the module docstring).

    Before: ``types`` are the concrete types at the split's input shapes
    (:func:`onnxsplit.shapes.concrete_types`), the model's nodes in
    topological order. Values never exceed :data:`MAX_ELEMENTS` elements.
    """
    known: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        if not is_external(t) and np.prod(t.dims, dtype=np.int64) <= MAX_ELEMENTS:
            known[t.name] = numpy_helper.to_array(t)
    initializers = set(known)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node_subgraphs(node):
            continue
        if node.op_type == "Shape":
            value = _shape_of(node, types)
            if value is not None:
                known[node.output[0]] = value
            continue
        fn = OPS.get(node.op_type)
        if fn is None or any(name and name not in known for name in node.input):
            continue
        try:
            outs = fn(node, [known[name] if name else None for name in node.input])
        except Exception:  # an op used in a way the evaluation above does not cover: leave it to the run
            continue
        for name, value in zip(node.output, outs):
            value = np.asarray(value)
            if name and value.size <= MAX_ELEMENTS:
                known[name] = value
    return {k: v for k, v in known.items() if k not in initializers}


def static_types(model: Model, input_shapes: dict[str, tuple[int, ...]], types: dict[str, TensorType],
                 names: Sequence[str]) -> dict[str, TensorType]:
    """Concrete types of the named tensors that shape inference sizes once shape computations are constants.

    ``types``: from :func:`onnxsplit.shapes.concrete_types` at ``input_shapes``.
    Returns only the named tensors that come out with a fixed shape; the
    others are left for a run of the model.
    """
    values = shape_values(model, types)
    if not values:
        return {}
    proto = light_copy(model.proto)
    for vi in proto.graph.input:
        if vi.name in input_shapes:
            for d, v in zip(vi.type.tensor_type.shape.dim, input_shapes[vi.name]):
                d.Clear()
                d.dim_value = v
    # A node whose outputs are all known becomes initializers: inference then sees the values themselves.
    nodes = list(proto.graph.node)
    gone = [bool(n.output) and all(o in values for o in n.output if o) for n in nodes]
    folded = {o for n, g in zip(nodes, gone) if g for o in n.output if o}
    del proto.graph.node[:]
    proto.graph.node.extend(n for n, g in zip(nodes, gone) if not g)
    proto.graph.initializer.extend(numpy_helper.from_array(values[o], o) for o in sorted(folded))
    wanted = set(names)
    out: dict[str, TensorType] = {}
    for name, vi in infer(proto, copy=False).items():
        if name not in wanted:
            continue
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(fixed_dim(d) is not None for d in tt.shape.dim):
            out[name] = TensorType(tt.elem_type, tuple(d.dim_value for d in tt.shape.dim))
    for name in wanted & folded:  # a wanted tensor evaluated outright
        value = values[name]
        known = types.get(name)
        dtype = known.dtype if known is not None and known.dtype else onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        out[name] = TensorType(dtype, tuple(value.shape))
    log.debug("shape computations sized %d of %d tensors shape inference left open", len(out), len(wanted))
    return out
