"""Names for the types of ONNX values that are not plain tensors: sequences, optionals, maps.

A manifest names a tensor's dtype as numpy does (``"float32"``). A value of
another ONNX type gets a name built from its element's, and no shape (its
tensors may differ in shape from one element to the next):

    sequence of float32 tensors            "seq(float32)"
    optional float32 tensor                "optional(float32)"
    optional sequence of int64 tensors     "optional(seq(int64))"
    map from int64 to float32              "map(int64,float32)"
    sparse float32 tensor                  "sparse(float32)"

A runtime passes such values as onnxruntime does: a sequence is a list of
arrays, an empty optional is None, a map is a dict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

# Only the string helpers are used at start-up (by the runtime); onnx and numpy are imported where needed.
NON_TENSOR_PREFIXES = ("seq(", "optional(", "map(", "sparse(")


def type_name(tp: onnx.TypeProto) -> str | None:
    """The manifest's name for a value of type ``tp``; None when inference left its element type unknown."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return dtype_name(tp.tensor_type.elem_type) if tp.tensor_type.elem_type else None
    if kind == "sparse_tensor_type":
        elem = tp.sparse_tensor_type.elem_type
        return f"sparse({dtype_name(elem)})" if elem else None
    if kind == "sequence_type":
        inner = type_name(tp.sequence_type.elem_type)
        return f"seq({inner})" if inner else None
    if kind == "optional_type":
        inner = type_name(tp.optional_type.elem_type)
        return f"optional({inner})" if inner else None
    if kind == "map_type":
        value = type_name(tp.map_type.value_type)
        key = tp.map_type.key_type
        return f"map({dtype_name(key)},{value})" if key and value else None
    return None


def is_tensor_type(tp: onnx.TypeProto) -> bool:
    return tp.WhichOneof("value") == "tensor_type"


def is_tensor_dtype(dtype: str | None) -> bool:
    """Whether a manifest dtype names a plain tensor (None, unknown, counts as one: it was never anything else)."""
    return dtype is None or not dtype.startswith(NON_TENSOR_PREFIXES)


def has_type(tp: onnx.TypeProto) -> bool:
    """Whether ``tp`` says enough for a stage input or output: the checker wants a tensor's dtype and rank."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return bool(tp.tensor_type.elem_type) and tp.tensor_type.HasField("shape")
    return type_name(tp) is not None


def type_of_value(value: Any) -> onnx.TypeProto | None:
    """The type of a value onnxruntime returned: an array, or a list of arrays (a sequence).

    A tensor gets its dtype and rank, a sequence its tensors' dtype only
    (the next run's may differ in rank). None when the value does not tell
    (an empty optional, an empty sequence, a map).
    """
    import numpy as np
    import onnx

    tp = onnx.TypeProto()
    if isinstance(value, np.ndarray):
        tp.tensor_type.elem_type = _elem_type(value)
        for _ in value.shape:
            tp.tensor_type.shape.dim.add()
        return tp
    if isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
        elem = {_elem_type(v) for v in value}
        if len(elem) != 1:
            return None
        tp.sequence_type.elem_type.tensor_type.elem_type = elem.pop()
        return tp
    return None


def _elem_type(array: Any) -> int:
    import onnx

    if array.dtype == object or array.dtype.kind in "US":
        return onnx.TensorProto.STRING
    return onnx.helper.np_dtype_to_tensor_dtype(array.dtype)


def dtype_name(elem_type: int) -> str:
    """onnx element type -> numpy dtype name, for manifests and random feeds."""
    import numpy as np
    import onnx

    if elem_type == onnx.TensorProto.STRING:
        return "str"
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
