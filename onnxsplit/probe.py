"""Run the original model once to learn what shape inference could not: hand-off types and sizes.

The run uses the user's representative inputs when given (``split(...,
inputs=...)``), else seeded random ones. Random inputs can steer a model
wrong: an ``If`` condition, a ``Reshape`` target or a ``ReduceSum`` axes
input taken from an input's values. So what a run shows is trusted only as
far as it cannot depend on input values: the dtype and rank of a tensor,
the element type of a sequence. Dims seen in the run are never written into
a stage (a stage is a graph for every input of these shapes, not for the
values of one run), and a run that fails leaves the types to shape
inference, or to a one-line refusal naming the tensor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from onnxsplit.errors import ModelError, UsageError
from onnxsplit.model import Model, light_copy
from onnxsplit.feeds import load_feeds, random_feeds
from onnxsplit.ortutil import run_with_outputs
from onnxsplit.valuetypes import dtype_name
from onnxsplit.shapes import TensorType
from onnxsplit.valuetypes import has_type, is_tensor_type, type_name, type_of_value

log = logging.getLogger(__name__)

Feeds = Mapping[str, Any]  # input name -> array, list of arrays (a sequence), or None (an empty optional)


class ProbeFailed(Exception):
    """The original could not be run on the inputs at hand; the message is one line saying why."""


def read_inputs(model: Model, inputs: str | os.PathLike | Feeds | None) -> dict[str, Any] | None:
    """The representative inputs as a name -> value dict: from an .npz file or a mapping; None stays None.

    After: there is exactly one value per model input; a tensor input's value
    is a numpy array of the model's dtype and rank. Raises UsageError naming
    the input (and the file) otherwise.
    """
    if inputs is None:
        return None
    names = [i.name for i in model.inputs]
    where = f"{inputs}: " if isinstance(inputs, (str, os.PathLike)) else "representative inputs: "
    if isinstance(inputs, (str, os.PathLike)):
        feeds: dict[str, Any] = load_feeds(inputs, names)
    elif isinstance(inputs, Mapping):
        feeds = dict(inputs)
        missing = [n for n in names if n not in feeds]
        if missing:
            raise UsageError(f"{where}no value for model input {missing[0]!r} (inputs: {names})")
        extra = sorted(set(map(str, feeds)) - set(names))
        if extra:
            raise UsageError(f"{where}{extra[0]!r} is not an input of the model (inputs: {names})")
    else:
        raise UsageError(f"representative inputs must be an .npz path or a mapping of input names to arrays, "
                         f"got {type(inputs).__name__}")
    for vi in model.inputs:
        if not is_tensor_type(vi.type):
            continue
        value = feeds[vi.name]
        if not isinstance(value, np.ndarray):
            value = feeds[vi.name] = np.asarray(value)
        want = vi.type.tensor_type
        if want.elem_type and want.elem_type != onnx.TensorProto.STRING:
            dtype = dtype_name(want.elem_type)
            if value.dtype.name != dtype:
                raise UsageError(f"{where}input {vi.name!r} is {value.dtype.name} but the model takes {dtype}")
        if want.HasField("shape") and value.ndim != len(want.shape.dim):
            raise UsageError(f"{where}input {vi.name!r} has rank {value.ndim} but the model takes rank "
                             f"{len(want.shape.dim)}")
    return feeds


def feed_shapes(model: Model, feeds: Feeds | None) -> dict[str, tuple[int, ...]]:
    """The shapes of the tensor inputs among ``feeds``: what the split sizes everything at."""
    if feeds is None:
        return {}
    return {vi.name: tuple(int(d) for d in feeds[vi.name].shape) for vi in model.inputs
            if is_tensor_type(vi.type) and isinstance(feeds.get(vi.name), np.ndarray)}


def run_original(model: Model, names: Sequence[str], *, shapes: Mapping[str, tuple[int, ...]],
                 feeds: Feeds | None = None) -> dict[str, Any]:
    """The named values of one run of the original, on ``feeds`` or on seeded random inputs at ``shapes``.

    Raises ProbeFailed (one line) when random inputs cannot be made for an
    input (a sequence or an optional) or onnxruntime fails on the inputs.
    """
    if feeds is None:
        odd = [vi for vi in model.inputs if not is_tensor_type(vi.type)]
        if odd:
            raise ProbeFailed(f"input {odd[0].name!r} is a {type_name(odd[0].type) or 'non-tensor value'}, "
                              "for which no random value can be made")
        specs = [(vi.name, dtype_name(vi.type.tensor_type.elem_type), tuple(shapes[vi.name])) for vi in model.inputs]
        feeds = random_feeds(specs, seed=0)
    try:
        return run_with_outputs(model, list(names), dict(feeds))
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidArgument, ...); any of them means "failed"
        lines = str(exc).strip().splitlines()
        raise ProbeFailed(lines[0] if lines else type(exc).__name__) from None


def probe_sizes(model: Model, names: Sequence[str], *, shapes: Mapping[str, tuple[int, ...]],
                feeds: Feeds | None = None) -> dict[str, TensorType]:
    """Sizes (as TensorTypes) of the named values, from one run; {} with a warning when the run fails.

    A sequence is sized as the flat run of its tensors' elements, so that
    its ``nbytes`` is what sending it costs. Values the run does not size
    (an empty optional, strings) are left out.
    """
    try:
        values = run_original(model, names, shapes=shapes, feeds=feeds)
    except ProbeFailed as exc:
        log.warning("could not run the model to size %d tensors shape inference left unsized (%s); they are "
                    "costed as free%s", len(names), exc, "" if feeds is not None else
                    " (representative inputs would size them)")
        return {}
    out: dict[str, TensorType] = {}
    for name in names:
        value = values.get(name)
        tp = type_of_value(value)
        if tp is None:
            continue
        if isinstance(value, np.ndarray):
            out[name] = TensorType(tp.tensor_type.elem_type, tuple(int(d) for d in value.shape))
        else:
            out[name] = TensorType(tp.sequence_type.elem_type.tensor_type.elem_type, (sum(v.size for v in value),))
    return out


def inferred_types(model: Model) -> dict[str, onnx.ValueInfoProto]:
    """Every value shape inference types, of any kind (sequences and optionals too, which Model.value_info omits)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(light_copy(model.proto), data_prop=True)
    except Exception:  # best effort, as Model.value_info is: what inference cannot type is probed
        inferred = model.proto
    g = inferred.graph
    return {vi.name: vi for vi in (*g.value_info, *g.input, *g.output) if vi.type.WhichOneof("value")}


def boundary_types(model: Model, names: Sequence[str], *, shapes: Mapping[str, tuple[int, ...]],
                   feeds: Feeds | None = None) -> dict[str, onnx.ValueInfoProto]:
    """Value infos for the named stage inputs/outputs that ``model.value_info`` does not type well enough.

    A stage boundary needs a tensor's dtype and rank (the checker's minimum)
    or a sequence's, optional's or map's element types. They come from
    shape inference over every kind of value first, then from one run of
    the original (dtype and rank only, see the module docstring). Raises
    ModelError naming the first tensor neither can type.
    """
    missing = [n for n in dict.fromkeys(names) if n not in model.value_info or not has_type(model.value_info[n].type)]
    if not missing:
        return {}
    inferred = inferred_types(model)
    out: dict[str, onnx.ValueInfoProto] = {}
    unresolved = []
    for name in missing:
        vi = inferred.get(name)
        if vi is not None and has_type(vi.type):
            out[name] = _named(vi.type, name)
        else:
            unresolved.append(name)
    if not unresolved:
        return out
    cause = ""
    try:
        values = run_original(model, unresolved, shapes=shapes, feeds=feeds)
    except ProbeFailed as exc:
        values, cause = {}, str(exc)
    for name in unresolved:
        tp = type_of_value(values.get(name))
        if tp is None:
            what = "the given inputs" if feeds is not None else "random inputs"
            why = f"running the model on {what} failed ({cause})" if cause else \
                f"running the model on {what} gave a value that does not tell ({_describe(values.get(name))})"
            hint = "" if feeds is not None else "; give representative inputs"
            known = inferred.get(name)
            gap = "rank" if known is not None and type_name(known.type) else "type"
            raise ModelError(f"cannot type {name!r}, which crosses a stage boundary: shape inference does not give "
                             f"its {gap} and {why}{hint}")
        known = inferred.get(name)
        if known is not None and known.type.WhichOneof("value") not in (None, tp.WhichOneof("value")):
            raise ModelError(f"cannot type {name!r}, which crosses a stage boundary: shape inference says "
                             f"{type_name(known.type) or 'an unknown type'} but a run gave {type_name(tp)}")
        out[name] = _named(tp, name)
    return out


def _named(tp: onnx.TypeProto, name: str) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto()
    vi.name = name
    vi.type.CopyFrom(tp)
    return vi


def _describe(value: Any) -> str:
    if value is None:
        return "no value"
    if isinstance(value, list):
        return "an empty sequence" if not value else "a sequence of mixed values"
    return type(value).__name__
