"""Triton model configurations (``config.pbtxt``) as text, from typed values.

The text is written by hand rather than through Triton's protobuf classes:
those ship with ``tritonclient``, which onnxsplit does not depend on at run
time. :func:`onnxsplit.export.triton.check_repository` parses every file
this module writes into Triton's own ``ModelConfig`` message, so the two
cannot drift apart unnoticed.

Triton's conventions followed here: ``dims`` leave out the batch dim when
``max_batch_size`` is above 0; a variable dim is ``-1``; a tensor with no
dims left (a scalar, or a batched tensor of shape ``[batch]``) is declared
``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``, the form Triton documents
for it (scalars of models without a batch dim excepted: Triton refuses
them, so they travel as one-element vectors).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from onnxsplit.errors import UsageError
from onnxsplit.manifest import TensorSpec
from onnxsplit.valuetypes import is_tensor_dtype

# numpy's dtype names (as the manifest writes them) -> Triton's data types.
TRITON_DTYPES: Mapping[str, str] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "str": "TYPE_STRING",
    "bfloat16": "TYPE_BF16",
}
# numpy has no bfloat16, so a Python-backend model could not hand one to Triton.
PYTHON_BACKEND_LACKS = frozenset({"bfloat16"})
# Execution providers that run on an NVIDIA GPU, which is what Triton's KIND_GPU means.
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
NO_PARAMETERS: Mapping[str, str] = MappingProxyType({})


class TritonExportError(UsageError):
    """A split cannot be written as a Triton model repository (a tensor Triton cannot type, a bad model name)."""


@dataclass(frozen=True)
class TritonTensor:
    """One input or output of a Triton model, in Triton's terms.

    ``dims`` is what the config declares (batch dim left out when the model
    batches); ``reshape`` is the model's own shape when it differs (only for
    tensors with no dims left, see the module docstring).
    """

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Step:
    """One step of an ensemble: a model and its tensor maps (model tensor name -> ensemble tensor name)."""

    model_name: str
    input_map: tuple[tuple[str, str], ...]
    output_map: tuple[tuple[str, str], ...]


def triton_tensor(spec: TensorSpec, *, batched: bool, python_backend: bool = False,
                  name: str | None = None) -> TritonTensor:
    """``spec`` as Triton declares it; with ``batched`` its first dim (the batch dim) is left out.

    ``name`` is the model's name for it, when not ``spec.name``. A scalar
    of a model without a batch dim is declared with ``dims: [ 1 ]``: the
    model must take or give it as a one-element vector (see
    :mod:`onnxsplit.export.triton_model`).

    Raises TritonExportError naming the tensor when its dtype or rank is
    unknown, or Triton (or the Python backend) has no data type for it.
    """
    if spec.dtype is None:
        raise TritonExportError(f"tensor {spec.name!r}: its dtype is unknown, so Triton cannot declare it")
    if not is_tensor_dtype(spec.dtype):
        raise TritonExportError(f"tensor {spec.name!r}: Triton models pass only tensors, not {spec.dtype}")
    data_type = TRITON_DTYPES.get(spec.dtype)
    if data_type is None:
        raise TritonExportError(f"tensor {spec.name!r}: Triton has no data type for {spec.dtype}")
    if python_backend and spec.dtype in PYTHON_BACKEND_LACKS:
        raise TritonExportError(f"tensor {spec.name!r}: the Python backend cannot pass {spec.dtype} tensors")
    if spec.shape is None:
        raise TritonExportError(f"tensor {spec.name!r}: its rank is unknown, so Triton cannot declare its dims")
    dims = tuple(d if isinstance(d, int) else -1 for d in spec.shape)
    if batched:
        dims = dims[1:]
        if not dims:
            return TritonTensor(name or spec.name, data_type, (1,), reshape=())
    elif not dims:
        # Triton refuses scalars in models without a batch dim: the stage model gets a one-element view instead.
        return TritonTensor(name or spec.name, data_type, (1,))
    return TritonTensor(name or spec.name, data_type, dims)


def quote(text: str) -> str:
    """``text`` as a protobuf text-format string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _dims(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]" if dims else "[ ]"


def _tensors(field: str, tensors: Sequence[TritonTensor]) -> list[str]:
    if not tensors:
        return []
    blocks = []
    for t in tensors:
        lines = ["  {", f"    name: {quote(t.name)}", f"    data_type: {t.data_type}", f"    dims: {_dims(t.dims)}"]
        if t.reshape is not None:
            lines.append(f"    reshape: {{ shape: {_dims(t.reshape)} }}")
        lines.append("  }")
        blocks.append("\n".join(lines))
    return [f"{field} [", ",\n".join(blocks), "]"]


def _parameters(parameters: Mapping[str, str]) -> list[str]:
    return [f"parameters {{ key: {quote(k)} value {{ string_value: {quote(v)} }} }}" for k, v in parameters.items()]


def stage_config(*, name: str, inputs: Sequence[TritonTensor], outputs: Sequence[TritonTensor],
                 max_batch_size: int = 0, gpu: int | None = None, backend: str = "onnxruntime",
                 parameters: Mapping[str, str] = NO_PARAMETERS) -> str:
    """The config.pbtxt of one stage model.

    ``backend`` "onnxruntime" runs ``1/model.onnx`` on Triton's onnxruntime
    backend; "python" runs ``1/model.py`` on the Python backend. ``gpu`` is
    the GPU the instance runs on, None for the CPU. With ``max_batch_size``
    above 0 the model gets a dynamic batcher.
    """
    lines = [f"name: {quote(name)}"]
    if backend == "onnxruntime":
        lines += ['platform: "onnxruntime_onnx"', 'default_model_filename: "model.onnx"']
    elif backend == "python":
        lines += ['backend: "python"']
    else:
        raise ValueError(f"backend must be onnxruntime or python, got {backend!r}")
    lines.append(f"max_batch_size: {max_batch_size}")
    lines += _tensors("input", inputs)
    lines += _tensors("output", outputs)
    if gpu is None:
        lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_CPU", "  }", "]"]
    else:
        lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_GPU", f"    gpus: [ {gpu} ]", "  }", "]"]
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    lines += _parameters(parameters)
    return "\n".join(lines) + "\n"


def ensemble_config(*, name: str, inputs: Sequence[TritonTensor], outputs: Sequence[TritonTensor],
                    steps: Sequence[Step], max_batch_size: int = 0) -> str:
    """The config.pbtxt of the ensemble that runs ``steps`` in order; every stage model version is the latest (-1)."""
    lines = [f"name: {quote(name)}", 'platform: "ensemble"', f"max_batch_size: {max_batch_size}"]
    lines += _tensors("input", inputs)
    lines += _tensors("output", outputs)
    blocks = []
    for step in steps:
        block = ["    {", f"      model_name: {quote(step.model_name)}", "      model_version: -1"]
        block += [f"      input_map {{ key: {quote(k)} value: {quote(v)} }}" for k, v in step.input_map]
        block += [f"      output_map {{ key: {quote(k)} value: {quote(v)} }}" for k, v in step.output_map]
        block.append("    }")
        blocks.append("\n".join(block))
    lines += ["ensemble_scheduling {", "  step [", ",\n".join(blocks), "  ]", "}"]
    return "\n".join(lines) + "\n"


def provider_parameters(provider: str, options: Mapping[str, object], threads: int) -> dict[str, str]:
    """The Python-backend model's parameters: which onnxruntime provider to run the stage on, and how."""
    return {
        "onnxsplit_provider": provider,
        "onnxsplit_provider_options": json.dumps({str(k): str(v) for k, v in options.items()}, sort_keys=True),
        "onnxsplit_threads": str(threads),
    }
