"""The KServe v2 inference protocol (the one Triton speaks), without the HTTP around it.

A request is checked against the model's inputs here, before any work: every
input named once, of the datatype and a shape the manifest allows (fixed dims
equal, a symbolic dim the same size wherever it appears), with as many values
as its shape holds. What fails is a :class:`ProtocolError` carrying the HTTP
status to answer with, so the endpoint never hands onnxruntime a request it
would have to refuse halfway through the stages.

Binary tensor data extension: when the ``Inference-Header-Content-Length``
header is present, the body is that many bytes of JSON followed by the raw
bytes of every input whose ``parameters.binary_data_size`` is set, in the
order the JSON lists them (little-endian, row-major; a BYTES element is a
4-byte little-endian length followed by its bytes). A response carries an
output as binary data when the request asks for it, per output
(``outputs[].parameters.binary_data``) or for all of them
(``parameters.binary_data_output``), which is what tritonclient does by default.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxsplit.errors import ModelError, OnnxSplitError
from onnxsplit.manifest import Dim, TensorSpec

# The manifest's dtype names (numpy's, "str" for strings) and the protocol's datatype names.
DATATYPES: Mapping[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
    "str": "BYTES",
}
_DTYPE_OF = {datatype: dtype for dtype, datatype in DATATYPES.items()}

# JSON numbers a datatype accepts, by numpy's kind letter (after np.asarray of the JSON list).
_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


class ProtocolError(OnnxSplitError):
    """A request the protocol refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def datatype_of(dtype: str | None) -> str | None:
    """The protocol's datatype for a manifest dtype; None when the protocol has none (bfloat16, complex, maps, ...)."""
    return DATATYPES.get(dtype) if dtype is not None else None


def protocol_shape(shape: Sequence[Dim] | None) -> list[int]:
    """A manifest shape as the protocol writes it: -1 for a symbolic or unknown dim (and ``[-1]`` for an unknown rank)."""
    if shape is None:
        return [-1]
    return [d if isinstance(d, int) else -1 for d in shape]


def check_servable(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, where: str) -> None:
    """ModelError naming the tensor when a model input or output has a dtype the protocol cannot carry.

    An output of unknown dtype is allowed: its datatype is taken from the array at answer time.
    """
    for kind, specs in (("input", inputs), ("output", outputs)):
        for t in specs:
            if t.dtype is None and kind == "output":
                continue
            if datatype_of(t.dtype) is None:
                raise ModelError(f"{where}: {kind} {t.name!r} has dtype {t.dtype}, which the KServe v2 protocol "
                                 "cannot carry")


# -- metadata ---------------------------------------------------------------------------------------------------------


def tensor_metadata(t: TensorSpec) -> dict[str, Any]:
    """A tensor as ``GET /v2/models/NAME`` lists it (an output whose dtype the split never learnt is "UNKNOWN")."""
    return {"name": t.name, "datatype": datatype_of(t.dtype) or "UNKNOWN", "shape": protocol_shape(t.shape)}


def model_metadata(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                   version: str, platform: str) -> dict[str, Any]:
    """The body of ``GET /v2/models/NAME``."""
    return {"name": name, "versions": [version], "platform": platform,
            "inputs": [tensor_metadata(t) for t in inputs], "outputs": [tensor_metadata(t) for t in outputs]}


def error_body(message: str) -> bytes:
    """The protocol's error response: ``{"error": "..."}``."""
    return json.dumps({"error": message}).encode()


# -- requests ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferRequest:
    """An inference request that fits the model."""

    id: str | None
    feeds: Mapping[str, np.ndarray]  # every model input, in the model's order
    outputs: tuple[str, ...]  # the outputs to answer with, in the order asked (all of them when none were named)
    binary: frozenset[str]  # those of ``outputs`` to send as binary data


def parse_infer_request(body: bytes, *, header_length: int | None, inputs: Sequence[TensorSpec],
                        outputs: Sequence[str]) -> InferRequest:
    """Read and check one ``POST .../infer`` body; ProtocolError (400) naming what is wrong.

    ``header_length`` is the ``Inference-Header-Content-Length`` header's value
    (None when absent: the whole body is JSON). ``inputs`` are the model's
    inputs with known dtypes; ``outputs`` the model's output names.
    """
    if header_length is None:
        header, binary = body, b""
    elif 0 <= header_length <= len(body):
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        raise ProtocolError(f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes")
    try:
        doc = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"the request must be a JSON object, got {_kind(doc)}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id must be a string, got {_kind(request_id)}")
    parameters = _object(doc.get("parameters", {}), "parameters")
    feeds = _read_inputs(doc, binary, inputs)
    names, binary_outputs = _read_outputs(doc, outputs, binary_default=parameters.get("binary_data_output") is True)
    return InferRequest(request_id, feeds, names, binary_outputs)


def _read_inputs(doc: dict[str, Any], binary: bytes | memoryview, inputs: Sequence[TensorSpec]
                 ) -> dict[str, np.ndarray]:
    items = doc.get("inputs")
    if not isinstance(items, list):
        raise ProtocolError("the request has no inputs list" if items is None
                            else f"inputs must be a list, got {_kind(items)}")
    specs = {t.name: t for t in inputs}
    found: dict[str, np.ndarray] = {}
    offset = 0
    for j, item in enumerate(items):
        item = _object(item, f"inputs[{j}]")
        name = item.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"inputs[{j}].name must be a string, got {_kind(name)}")
        spec = specs.get(name)
        if spec is None:
            raise ProtocolError(f"unknown input {name!r} (the model's inputs: {list(specs)})")
        if name in found:
            raise ProtocolError(f"input {name!r} is given twice")
        shape = _shape(item.get("shape"), name)
        expected = datatype_of(spec.dtype)
        if item.get("datatype") != expected:
            raise ProtocolError(f"input {name!r}: datatype {item.get('datatype')}, expected {expected}")
        _check_shape(name, shape, spec.shape)
        size = _object(item.get("parameters", {}), f"input {name!r} parameters").get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ProtocolError(f"input {name!r}: binary_data_size must be a whole number, got {size!r}")
            if offset + size > len(binary):
                raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the end of the body")
            found[name] = _from_binary(binary[offset:offset + size], expected, shape, name)
            offset += size
        elif "data" in item:
            found[name] = _from_json(item["data"], expected, shape, name)
        else:
            raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims")
    missing = [t.name for t in inputs if t.name not in found]
    if missing:
        raise ProtocolError(f"missing input {missing[0]!r} (the model's inputs: {list(specs)})")
    _check_symbols(found, inputs)
    return {t.name: found[t.name] for t in inputs}


def _read_outputs(doc: dict[str, Any], outputs: Sequence[str], *, binary_default: bool
                  ) -> tuple[tuple[str, ...], frozenset[str]]:
    items = doc.get("outputs")
    if items is None:
        return tuple(outputs), frozenset(outputs) if binary_default else frozenset()
    if not isinstance(items, list):
        raise ProtocolError(f"outputs must be a list, got {_kind(items)}")
    names: list[str] = []
    binary: set[str] = set()
    for j, item in enumerate(items):
        item = _object(item, f"outputs[{j}]")
        name = item.get("name")
        if name not in outputs:
            raise ProtocolError(f"unknown output {name!r} (the model's outputs: {list(outputs)})")
        if name in names:
            raise ProtocolError(f"output {name!r} is asked for twice")
        parameters = _object(item.get("parameters", {}), f"output {name!r} parameters")
        if parameters.get("classification"):
            raise ProtocolError(f"output {name!r}: the classification extension is not supported")
        names.append(name)
        if parameters.get("binary_data", binary_default) is True:
            binary.add(name)
    return tuple(names), frozenset(binary)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise ProtocolError(f"input {name!r}: shape must be a list of whole numbers, got {value!r}")
    return tuple(value)


def _dims(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_shape(name: str, shape: tuple[int, ...], allowed: tuple[Dim, ...] | None) -> None:
    if allowed is None:
        return
    if len(shape) != len(allowed) or any(isinstance(a, int) and a != d for d, a in zip(shape, allowed)):
        raise ProtocolError(f"input {name!r}: shape {list(shape)} does not fit the model's {_dims(allowed)}")


def _check_symbols(feeds: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> None:
    """A symbolic dim (``batch``, say) must have one size across every input that has it."""
    seen: dict[str, tuple[int, str]] = {}
    for t in inputs:
        for d, size in zip(t.shape or (), feeds[t.name].shape):
            if not isinstance(d, str):
                continue
            first = seen.setdefault(d, (size, t.name))
            if first[0] != size:
                raise ProtocolError(f"dim {d!r} is {first[0]} in input {first[1]!r} but {size} in input {t.name!r}")


def _from_binary(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(raw, count, name).reshape(shape)
    dtype = np.dtype(_DTYPE_OF[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"input {name!r}: {len(raw)} bytes of binary data, expected {count * dtype.itemsize} "
                            f"for {datatype} of shape {list(shape)}")
    # A copy: the body's buffer is released with the request, and onnxruntime wants native byte order.
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _bytes_elements(raw: bytes | memoryview, count: int, name: str) -> np.ndarray:
    raw = bytes(raw)
    items: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ProtocolError(f"input {name!r}: a BYTES element of {size} bytes runs past the end of its data")
        items.append(_text(raw[offset:offset + size], name))
        offset += size
    if len(items) != count:
        raise ProtocolError(f"input {name!r}: {len(items)} BYTES elements, expected {count}")
    return np.array(items, dtype=object)


def _text(data: bytes, name: str) -> str:
    # onnxruntime's string tensors hold text.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"input {name!r}: a BYTES element is not UTF-8 text") from None


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    # Nested lists are read row-major, as if flat: the shape says how the values are laid out.
    flat = _flatten(data) if isinstance(data, list) else [data]
    if len(flat) != count:
        raise ProtocolError(f"input {name!r}: {len(flat)} values, expected {count} for shape {list(shape)}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {name!r}: BYTES data must be strings")
        return np.array(flat, dtype=object).reshape(shape)
    dtype = np.dtype(_DTYPE_OF[datatype])
    values = np.asarray(flat)
    if values.size and values.dtype.kind not in _KINDS[dtype.kind]:
        if dtype.kind in "iu" and all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            # Whole numbers past 64 bits, or a mix of int64 and uint64, which numpy widens to float64.
            raise ProtocolError(f"input {name!r}: a value lies outside the range of {datatype}")
        raise ProtocolError(f"input {name!r}: data of {datatype} must be "
                            f"{'true or false' if dtype.kind == 'b' else 'numbers'}"
                            f"{' without fractions' if dtype.kind in 'iu' else ''}")
    if dtype.kind in "iu" and values.size:
        limits = np.iinfo(dtype)
        if values.min() < limits.min or values.max() > limits.max:
            raise ProtocolError(f"input {name!r}: a value lies outside the range of {datatype}")
    return values.astype(dtype).reshape(shape)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


# -- responses --------------------------------------------------------------------------------------------------------


def response_datatype(array: np.ndarray) -> str:
    """The protocol's datatype of an output array (object and unicode arrays are BYTES)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    found = datatype_of(array.dtype.name)
    if found is None:
        raise OnnxSplitError(f"an output of dtype {array.dtype.name} cannot be sent with the KServe v2 protocol")
    return found


def encode_infer_response(request: InferRequest, results: Mapping[str, np.ndarray], *, model_name: str,
                          model_version: str) -> tuple[bytes, int | None]:
    """The response body for ``request`` and the header length to send (None: the body is all JSON)."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in request.outputs:
        array = np.asarray(results[name])
        datatype = response_datatype(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in request.binary:
            raw = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(array, datatype)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    header = json.dumps(doc).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for x in array.ravel():
            data = x if isinstance(x, bytes) else str(x).encode("utf-8")
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _to_json(array: np.ndarray, datatype: str) -> list[Any]:
    if datatype == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.ravel()]
    return array.ravel().tolist()
