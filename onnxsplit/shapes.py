"""Concrete shapes at the user's input shapes, for costs and hand-off sizes."""

from __future__ import annotations

import functools
import logging
import math
import os
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
        # Read once per tensor by every pass (costs, estimate, memory): kept to plain integer arithmetic.
        return math.prod(self.shape) * _itemsize(self.dtype)


@functools.cache
def _itemsize(dtype: int) -> int:
    return onnx.helper.tensor_dtype_to_np_dtype(dtype).itemsize


def parse_input_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """``NAME:1x3x224x224`` strings to a dict (the name may itself contain ':').

    Every dim must be a positive integer (``NAME:`` alone is a scalar), and
    each name may be given once. Raises UsageError naming the bad string.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split("x")) if dims else ()
        except ValueError:
            shape = None
        if not sep or not name or shape is None or any(d < 1 for d in shape):
            raise UsageError(f"input shape {spec!r}: expected NAME:DxDxD with positive integers")
        if name in shapes:
            raise UsageError(f"input shape {spec!r}: a shape for {name!r} is already given "
                             f"({name}:{'x'.join(map(str, shapes[name]))})")
        shapes[name] = shape
    return shapes


def fixed_dim(d: onnx.TensorShapeProto.Dimension) -> int | None:
    """A dim's fixed size, or None when it is symbolic.

    A negative ``dim_value`` (some exporters write -1 for a dynamic dim) is
    symbolic, as onnxruntime takes it; 0 is a fixed, empty dim.
    """
    if d.HasField("dim_value") and d.dim_value >= 0:
        return int(d.dim_value)
    return None


def physical_memory() -> float:
    """Bytes of physical memory of this machine; infinity where the platform does not say."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return math.inf


def format_bytes(n: float) -> str:
    """``1.5 GB``-style text for messages (powers of 1000, as the size grammar's G)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def input_nbytes(model: Model, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Bytes of each graph input at ``shapes`` (exact integers: no overflow for absurd shapes).

    A string element counts as a pointer's 8 bytes; the strings themselves are not known.
    """
    sizes: dict[str, int] = {}
    for vi in model.inputs:
        if vi.name not in shapes:
            continue
        elem = vi.type.tensor_type.elem_type
        try:
            itemsize = 8 if elem == onnx.TensorProto.STRING else np.dtype(
                onnx.helper.tensor_dtype_to_np_dtype(elem)).itemsize
        except (KeyError, TypeError, ValueError):  # no element type, or one numpy cannot hold
            itemsize = 1
        count = 1
        for d in shapes[vi.name]:
            count *= int(d)
        sizes[vi.name] = count * itemsize
    return sizes


def check_input_memory(model: Model, shapes: dict[str, tuple[int, ...]], *, limit: float) -> None:
    """Raise UsageError when the inputs at ``shapes`` would take more than ``limit`` bytes together.

    Every later step (profiling, probing, validation) makes such inputs; a
    machine without the memory dies of MemoryError or swaps for minutes,
    so the shapes are refused up front, saying how big they would be.
    """
    sizes = input_nbytes(model, shapes)
    total = sum(sizes.values())
    if total > limit:
        name = max(sizes, key=lambda k: sizes[k])
        raise UsageError(f"the model's inputs at these shapes would take {format_bytes(total)} "
                         f"({name}:{'x'.join(map(str, shapes[name]))} alone {format_bytes(sizes[name])}), "
                         f"more than this machine's {format_bytes(limit)} of memory")


def resolve_input_shapes(model: Model, given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every graph input: given ones checked, symbolic dims left unset default to 1.

    Raises UsageError for a shape of an unknown input, a wrong rank, a dim
    the model fixes to another size, or inputs too big for this machine's
    memory.
    """
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
                fixed = fixed_dim(d)
                if fixed is not None and fixed != want:
                    raise UsageError(f"input shape of {name!r}: dim fixed to {fixed} in the model, got {want}")
            resolved[name] = tuple(int(x) for x in shape)
            continue
        shape = []
        for d in dims:
            fixed = fixed_dim(d)
            if fixed is not None:
                shape.append(fixed)
            else:
                log.warning("input %r: dim %r unset, using 1 (give the input a shape to change it)", name,
                            d.dim_param or "?")
                shape.append(1)
        resolved[name] = tuple(shape)
    check_input_memory(model, resolved, limit=physical_memory())
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
    for name, vi in infer(fixed, copy=False).items():
        tt = vi.type.tensor_type
        shape: tuple[int, ...] | None = None
        if tt.HasField("shape") and all(fixed_dim(d) is not None for d in tt.shape.dim):
            shape = tuple(d.dim_value for d in tt.shape.dim)
        out[name] = TensorType(tt.elem_type, shape)
    return out
