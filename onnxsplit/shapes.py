"""Concrete shapes at the user's input shapes, for costs and hand-off sizes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from onnxsplit.errors import UsageError
from onnxsplit.model import Model, infer, light_copy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorType:
    dtype: int  # onnx.TensorProto element type; 0 when unknown
    shape: tuple[int, ...] | None  # None when unknown at these input shapes

    @property
    def nbytes(self) -> int | None:
        if self.shape is None or not self.dtype or self.dtype == onnx.TensorProto.STRING:
            return None
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(self.dtype).itemsize
        return int(np.prod(self.shape, dtype=np.int64)) * itemsize if self.shape else itemsize


def parse_input_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """``NAME:1x3x224x224`` strings to a dict (the name may itself contain ':'); UsageError naming a bad one."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split("x")) if dims else ()
        except ValueError:
            shape = None
        if not sep or not name or shape is None or any(d < 0 for d in shape):
            raise UsageError(f"input shape {spec!r}: expected NAME:DxDxD with non-negative integers")
        shapes[name] = shape
    return shapes


def resolve_input_shapes(model: Model, given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every graph input: given ones checked, symbolic dims left unset default to 1."""
    inputs = {i.name: i for i in model.inputs}
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise UsageError(f"an input shape is given for {unknown[0]!r}, which is not an input of the model "
                         f"(inputs: {sorted(inputs)})")
    resolved: dict[str, tuple[int, ...]] = {}
    for name, vi in inputs.items():
        dims = vi.type.tensor_type.shape.dim
        if name in given:
            shape = given[name]
            if len(shape) != len(dims):
                raise UsageError(f"input shape of {name!r}: the model input has rank {len(dims)}, "
                                 f"got {len(shape)} dims")
            for d, want in zip(dims, shape):
                if d.HasField("dim_value") and d.dim_value != want:
                    raise UsageError(f"input shape of {name!r}: dim fixed to {d.dim_value} in the model, got {want}")
            resolved[name] = shape
            continue
        shape = []
        for d in dims:
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            else:
                log.warning("input %r: dim %r unset, using 1 (give the input a shape to change it)", name,
                            d.dim_param or "?")
                shape.append(1)
        resolved[name] = tuple(shape)
    return resolved


def concrete_types(model: Model, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, TensorType]:
    """Infer every tensor's dtype and shape with the inputs fixed to ``input_shapes``."""
    fixed = light_copy(model.proto)
    for vi in fixed.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[vi.name]):
                d.Clear()
                d.dim_value = v
    out: dict[str, TensorType] = {}
    for name, vi in infer(fixed).items():
        tt = vi.type.tensor_type
        shape: tuple[int, ...] | None = None
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shape = tuple(d.dim_value for d in tt.shape.dim)
        out[name] = TensorType(tt.elem_type, shape)
    return out
