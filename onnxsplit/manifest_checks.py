"""Reading a manifest document field by field, and checking it as a whole.

Every failure is one ModelError line naming the manifest file and the
field's path (``stages[1].outputs[0].consumers``), so a hand-edited or
damaged file never ends in a KeyError deep inside a reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxsplit.errors import ModelError
from onnxsplit.manifest import (Dim, FrozenMap, GraphOutput, Handoff, Manifest, PredictedLoad, Source, Stage,
                                StageInput, StageOutput, StateSpec, TensorSpec)


def read_checked(doc: dict[str, Any], path: Path, *, check_files: bool = True) -> Manifest:
    """The Manifest of ``doc`` (format and version already checked), every field and the routing checked."""
    manifest = _Reader(path).manifest(doc)
    _check_names(manifest, path)
    _check_routing(manifest, path)
    _check_handoffs(manifest, path)
    _check_state(manifest, path)
    if check_files:
        _check_files(manifest, path)
    return manifest


class _Reader:
    """Typed reads of one manifest document; every failure names the file and the field's path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> ModelError:
        return ModelError(f"{self.path}: {where}: {problem}")

    def get(self, obj: dict[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            raise self.fail(f"{where}.{key}" if where else key, "missing")
        return obj[key]

    def as_obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {_kind(value)}")
        return value

    def as_list(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {_kind(value)}")
        return value

    def as_str(self, value: Any, where: str, *, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(where, f"expected a string, got {_kind(value)}")
        return value

    def as_int(self, value: Any, where: str, *, minimum: int | None = 0, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(where, f"expected an integer of at least {minimum}, got {value}")
        return value

    def as_number(self, value: Any, where: str) -> Any:
        # Kept as read (int or float) so that to_json gives back the same document.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise self.fail(where, f"expected a number, got {_kind(value)}")
        return value

    def as_bool(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {_kind(value)}")
        return value

    def as_shape(self, value: Any, where: str) -> tuple[Dim, ...] | None:
        if value is None:
            return None
        dims = self.as_list(value, where)
        for j, d in enumerate(dims):
            if d is not None and (isinstance(d, bool) or not isinstance(d, (int, str))):
                raise self.fail(f"{where}[{j}]", f"expected an integer, a name or null, got {_kind(d)}")
        return tuple(dims)

    def as_tensor(self, value: Any, where: str) -> tuple[str, str | None, tuple[Dim, ...] | None, dict[str, Any]]:
        t = self.as_obj(value, where)
        name = self.as_str(self.get(t, "name", where), f"{where}.name")
        dtype = self.as_str(self.get(t, "dtype", where), f"{where}.dtype", optional=True)
        return name, dtype, self.as_shape(self.get(t, "shape", where), f"{where}.shape"), t

    def stages_list(self, value: Any, where: str) -> list[int]:
        return [self.as_int(s, f"{where}[{j}]") for j, s in enumerate(self.as_list(value, where))]

    def stage_input(self, value: Any, where: str) -> StageInput:
        name, dtype, shape, t = self.as_tensor(value, where)
        source = self.get(t, "from", where)
        if source != "graph":
            if isinstance(source, str):
                raise self.fail(f"{where}.from", f"expected \"graph\" or a stage index, got {source!r}")
            source = self.as_int(source, f"{where}.from")
        return StageInput(name, dtype, shape, None if source == "graph" else source)

    def stage_output(self, value: Any, where: str) -> StageOutput:
        name, dtype, shape, t = self.as_tensor(value, where)
        return StageOutput(name, dtype, shape, tuple(self.stages_list(self.get(t, "to", where), f"{where}.to")),
                           self.as_bool(self.get(t, "graph_output", where), f"{where}.graph_output"))

    def stage(self, value: Any, where: str) -> Stage:
        s = self.as_obj(value, where)

        def get(key: str) -> Any:
            return self.get(s, key, where)

        options = self.as_obj(get("provider_options"), f"{where}.provider_options")
        for key, option in options.items():
            # onnxruntime takes every option as a string; anything else is an edit gone wrong.
            if isinstance(option, (dict, list)) or option is None:
                raise self.fail(f"{where}.provider_options.{key}", f"expected a string or a number, got {_kind(option)}")
        if "device_id" in options and not str(options["device_id"]).isdigit():
            raise self.fail(f"{where}.provider_options.device_id",
                            f"expected a device number, got {options['device_id']!r}")
        p = self.as_obj(get("predicted"), f"{where}.predicted")
        predicted = PredictedLoad(*(self.as_number(self.get(p, k, f"{where}.predicted"), f"{where}.predicted.{k}")
                                    for k in ("compute_ms", "receive_ms", "send_ms", "load_ms")))
        return Stage(
            index=self.as_int(get("index"), f"{where}.index"),
            file=self.as_str(get("file"), f"{where}.file"),
            external_data=self.as_str(get("external_data"), f"{where}.external_data", optional=True),
            device=self.as_int(get("device"), f"{where}.device"),
            device_kind=self.as_str(get("device_kind"), f"{where}.device_kind"),
            provider=self.as_str(get("provider"), f"{where}.provider"),
            provider_options=FrozenMap(options),
            threads=self.as_int(get("threads"), f"{where}.threads", minimum=1),
            nodes=self.as_int(get("nodes"), f"{where}.nodes"),
            copied_const_nodes=self.as_int(get("copied_const_nodes"), f"{where}.copied_const_nodes"),
            inputs=tuple(self.stage_input(x, f"{where}.inputs[{j}]")
                         for j, x in enumerate(self.as_list(get("inputs"), f"{where}.inputs"))),
            outputs=tuple(self.stage_output(x, f"{where}.outputs[{j}]")
                          for j, x in enumerate(self.as_list(get("outputs"), f"{where}.outputs"))),
            predicted=predicted,
            weight_bytes=self.as_int(get("weight_bytes"), f"{where}.weight_bytes"),
            activation_peak_bytes=self.as_int(get("activation_peak_bytes"), f"{where}.activation_peak_bytes"),
        )

    def handoff(self, value: Any, where: str) -> Handoff:
        name, dtype, shape, t = self.as_tensor(value, where)
        return Handoff(name, dtype, shape, self.as_int(self.get(t, "producer", where), f"{where}.producer"),
                       tuple(self.stages_list(self.get(t, "consumers", where), f"{where}.consumers")),
                       self.as_int(self.get(t, "bytes_per_sample", where), f"{where}.bytes_per_sample", optional=True))

    def state(self, doc: dict[str, Any]) -> tuple[StateSpec, ...]:
        if "state" not in doc:  # a model without state pairs
            return ()
        pairs = []
        for j, x in enumerate(self.as_list(doc["state"], "state")):
            where = f"state[{j}]"
            p = self.as_obj(x, where)
            pairs.append(StateSpec(self.as_str(self.get(p, "input", where), f"{where}.input"),
                                   self.as_str(self.get(p, "output", where), f"{where}.output"),
                                   self.as_int(self.get(p, "stage", where), f"{where}.stage")))
        return tuple(pairs)

    def manifest(self, doc: dict[str, Any]) -> Manifest:
        src = self.as_obj(self.get(doc, "source", ""), "source")
        source = Source(self.as_str(self.get(src, "path", "source"), "source.path"),
                        self.as_str(self.get(src, "sha256", "source"), "source.sha256"),
                        self.as_int(self.get(src, "ir_version", "source"), "source.ir_version"))
        shapes = {}
        for name, dims in self.as_obj(self.get(doc, "input_shapes", ""), "input_shapes").items():
            where = f"input_shapes.{name}"
            shapes[name] = tuple(self.as_int(d, f"{where}[{j}]") for j, d in enumerate(self.as_list(dims, where)))
        inputs = []
        for j, x in enumerate(self.as_list(self.get(doc, "inputs", ""), "inputs")):
            name, dtype, shape, _ = self.as_tensor(x, f"inputs[{j}]")
            if name not in shapes:
                raise self.fail("input_shapes", f"no shape for model input {name!r}")
            if dtype is None or not _known_value_type(dtype):
                raise self.fail(f"inputs[{j}].dtype", f"expected the name of a value type (a tensor element type, "
                                f"or seq(...), optional(...), map(K,V), sparse(...) of one), got {dtype!r}")
            fixed = shapes[name]
            if shape is not None and len(shape) != len(fixed):
                raise self.fail(f"input_shapes.{name}", f"has rank {len(fixed)} but inputs[{j}].shape has rank "
                                f"{len(shape)}")
            for d, (want, got) in enumerate(zip(shape or (), fixed)):
                if isinstance(want, int) and want >= 0 and want != got:
                    raise self.fail(f"input_shapes.{name}[{d}]", f"is {got} but the model fixes that dim to {want}")
            inputs.append(TensorSpec(name, dtype, shape))
        unknown = sorted(set(shapes) - {i.name for i in inputs})
        if unknown:
            raise self.fail(f"input_shapes.{unknown[0]}", "not a model input (not in inputs)")
        outputs = []
        for j, x in enumerate(self.as_list(self.get(doc, "outputs", ""), "outputs")):
            name, dtype, shape, t = self.as_tensor(x, f"outputs[{j}]")
            outputs.append(GraphOutput(name, dtype, shape, self.as_int(self.get(t, "stage", f"outputs[{j}]"),
                                                                    f"outputs[{j}].stage")))
        return Manifest(
            folder=self.path.parent,
            source=source,
            input_shapes=FrozenMap(shapes),
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            stages=tuple(self.stage(x, f"stages[{j}]")
                         for j, x in enumerate(self.as_list(self.get(doc, "stages", ""), "stages"))),
            handoffs=tuple(self.handoff(x, f"handoffs[{j}]")
                           for j, x in enumerate(self.as_list(self.get(doc, "handoffs", ""), "handoffs"))),
            plan_file=self.as_str(self.get(doc, "plan", ""), "plan"),
            predicted_bottleneck_ms=self.as_number(self.get(doc, "predicted_bottleneck_ms", ""),
                                                   "predicted_bottleneck_ms"),
            state=self.state(doc),
        )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


# The element type names onnxsplit writes for ONNX tensors (numpy's names, plus ONNX's own for the types numpy lacks).
_DTYPES = frozenset({
    "bool", "str", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "bfloat16",
    "float32", "float64", "complex64", "complex128", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn", "int2", "int4", "uint2",
    "uint4",
})


def _known_dtype(name: str) -> bool:
    if name in _DTYPES:
        return True
    import numpy as np  # an element type newer than the list above, that numpy knows

    try:
        np.dtype(name)
    except TypeError:
        return False
    return True


def _known_value_type(name: str) -> bool:
    """A tensor element type, or a sequence, optional, sparse tensor or map of known types (as valuetypes names them)."""
    for prefix in ("seq(", "optional(", "sparse("):
        if name.startswith(prefix) and name.endswith(")"):
            return _known_value_type(name[len(prefix):-1])
    if name.startswith("map(") and name.endswith(")"):
        key, _, value = name[len("map("):-1].partition(",")
        return _known_dtype(key) and _known_value_type(value)
    return _known_dtype(name)


def _check_file_name(name: str, where: str, path: Path) -> None:
    """A file of the split lies inside the split folder: a manifest never sends a reader elsewhere."""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts:
        raise ModelError(f"{path}: {where}: {name!r} is not a file name inside the split folder")


def _first_repeat(names: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


def _check_names(m: Manifest, path: Path) -> None:
    """Tensor names unique where a reader keys by them; file names inside the folder."""

    def fail(where: str, problem: str) -> ModelError:
        return ModelError(f"{path}: {where}: {problem}")

    for where, names in (("inputs", m.input_names), ("outputs", m.output_names),
                         ("handoffs", [h.name for h in m.handoffs])):
        again = _first_repeat(names)
        if again is not None:
            raise fail(where, f"{again!r} is listed twice")
    made_by: dict[str, int] = {}
    for k, s in enumerate(m.stages):
        _check_file_name(s.file, f"stages[{k}].file", path)
        if s.external_data is not None:
            _check_file_name(s.external_data, f"stages[{k}].external_data", path)
        for key, names in (("inputs", [i.name for i in s.inputs]), ("outputs", [o.name for o in s.outputs])):
            again = _first_repeat(names)
            if again is not None:
                raise fail(f"stages[{k}].{key}", f"{again!r} is listed twice")
        for j, o in enumerate(s.outputs):
            if o.name in made_by:
                raise fail(f"stages[{k}].outputs[{j}]", f"{o.name!r} is made by stage {made_by[o.name]} already")
            made_by[o.name] = k
    files = [s.file for s in m.stages]
    again = _first_repeat(files)
    if again is not None:
        raise fail("stages", f"two stages name the file {again!r}")
    _check_file_name(m.plan_file, "plan", path)


def _check_handoffs(m: Manifest, path: Path) -> None:
    """``handoffs[]`` and ``outputs[]`` say what the stages' own inputs and outputs say.

    Runs after :func:`_check_routing`: every stage index named exists.
    """

    def fail(where: str, problem: str) -> ModelError:
        return ModelError(f"{path}: {where}: {problem}")

    by_name = {h.name: (j, h) for j, h in enumerate(m.handoffs)}
    graph_outputs = {(o.name, o.stage) for o in m.outputs}
    if not m.outputs:
        raise fail("outputs", "empty (a split model has at least one output)")
    for k, s in enumerate(m.stages):
        for j, o in enumerate(s.outputs):
            where = f"stages[{k}].outputs[{j}]"
            if o.graph_output != ((o.name, k) in graph_outputs):
                said = "is" if o.graph_output else "is not"
                raise fail(f"{where}.graph_output", f"says {o.name!r} {said} a model output, outputs[] disagrees")
            if o.consumers and o.name not in by_name:
                raise fail(f"{where}.to", f"{o.name!r} goes to stages {list(o.consumers)} but is not in handoffs")
            for c in o.consumers:
                if not any(i.name == o.name and i.producer == k for i in m.stages[c].inputs):
                    raise fail(f"{where}.to", f"stage {c} does not read {o.name!r} from stage {k}")
        for j, i in enumerate(s.inputs):
            if i.producer is None:
                continue
            if i.name not in by_name:
                raise fail(f"stages[{k}].inputs[{j}]", f"{i.name!r} comes from stage {i.producer} but is not in handoffs")
            h = by_name[i.name][1]
            if (i.dtype, i.shape) != (h.dtype, h.shape):
                raise fail(f"stages[{k}].inputs[{j}]", f"dtype {i.dtype} shape {_shape_text(i.shape)}, but "
                           f"handoffs[{by_name[i.name][0]}] says {h.dtype} {_shape_text(h.shape)}")
    for j, h in by_name.values():
        where = f"handoffs[{j}]"
        made = next((o for o in m.stages[h.producer].outputs if o.name == h.name), None)
        if made is None:
            raise fail(f"{where}.name", f"stage {h.producer} has no output {h.name!r}")
        if tuple(h.consumers) != tuple(made.consumers):
            raise fail(f"{where}.consumers", f"{list(h.consumers)}, but stages[{h.producer}] sends {h.name!r} to "
                       f"{list(made.consumers)}")
        if (h.dtype, h.shape) != (made.dtype, made.shape):
            raise fail(where, f"dtype {h.dtype} shape {_shape_text(h.shape)}, but stages[{h.producer}] makes "
                       f"{h.name!r} as {made.dtype} {_shape_text(made.shape)}")


def _shape_text(shape: tuple[Dim, ...] | None) -> str:
    return "unknown" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_routing(m: Manifest, path: Path) -> None:
    """Stages numbered in pipeline order, and every tensor routed between stages that exist, forwards."""

    def fail(where: str, problem: str) -> ModelError:
        return ModelError(f"{path}: {where}: {problem}")

    n = len(m.stages)
    if n == 0:
        raise fail("stages", "empty")
    made = [{o.name for o in s.outputs} for s in m.stages]
    for k, s in enumerate(m.stages):
        if s.index != k:
            raise fail(f"stages[{k}].index", f"is {s.index}: stages must be numbered 0..{n - 1} in pipeline order")
        for j, i in enumerate(s.inputs):
            where = f"stages[{k}].inputs[{j}]"
            if i.producer is None:
                if i.name not in m.input_names:
                    raise fail(f"{where}.from", f"{i.name!r} comes from the graph but is not a model input")
            elif not 0 <= i.producer < k:
                raise fail(f"{where}.from", f"stage {i.producer} is not an earlier stage of the {n}")
            elif i.name not in made[i.producer]:
                raise fail(f"{where}.from", f"stage {i.producer} has no output {i.name!r}")
        for j, o in enumerate(s.outputs):
            for c in o.consumers:
                if not k < c < n:
                    raise fail(f"stages[{k}].outputs[{j}].to", f"stage {c} is not a later stage of the {n}")
    for j, o in enumerate(m.outputs):
        if not 0 <= o.stage < n:
            raise fail(f"outputs[{j}].stage", f"stage {o.stage} does not exist (the split has {n})")
        if o.name not in made[o.stage]:
            raise fail(f"outputs[{j}].stage", f"stage {o.stage} has no output {o.name!r}")
    for j, h in enumerate(m.handoffs):
        if not 0 <= h.producer < n:
            raise fail(f"handoffs[{j}].producer", f"stage {h.producer} does not exist (the split has {n})")
        for c in h.consumers:
            if not 0 <= c < n:
                raise fail(f"handoffs[{j}].consumers", f"stage {c} does not exist (the split has {n})")


def _check_state(m: Manifest, path: Path) -> None:
    """Each state pair stays on its stage: its input read there only, its output made there, one dtype.

    Runs after :func:`_check_routing`: every stage a graph output names exists.
    """

    def fail(where: str, problem: str) -> ModelError:
        return ModelError(f"{path}: {where}: {problem}")

    inputs = {i.name: i for i in m.inputs}
    outputs = {o.name: o for o in m.outputs}
    seen_in: dict[str, int] = {}
    seen_out: dict[str, int] = {}
    n = len(m.stages)
    for j, p in enumerate(m.state):
        where = f"state[{j}]"
        if p.input in seen_in:
            raise fail(f"{where}.input", f"{p.input!r} is in state[{seen_in[p.input]}] already")
        if p.output in seen_out:
            raise fail(f"{where}.output", f"{p.output!r} is in state[{seen_out[p.output]}] already")
        seen_in[p.input], seen_out[p.output] = j, j
        if not 0 <= p.stage < n:
            raise fail(f"{where}.stage", f"stage {p.stage} does not exist (the split has {n})")
        if p.input not in inputs:
            raise fail(f"{where}.input", f"{p.input!r} is not a model input")
        if p.output not in outputs:
            raise fail(f"{where}.output", f"{p.output!r} is not a model output")
        readers = [k for k, s in enumerate(m.stages) if any(i.name == p.input for i in s.inputs)]
        others = [k for k in readers if k != p.stage]
        if others:
            raise fail(f"{where}.input", f"{p.input!r} is read by stage {others[0]}, not only by stage {p.stage}")
        if p.stage not in readers:
            raise fail(f"{where}.input", f"stage {p.stage} does not read {p.input!r}")
        made = outputs[p.output].stage
        if made != p.stage:
            raise fail(f"{where}.output", f"{p.output!r} is made by stage {made}, not by stage {p.stage}")
        dtypes = inputs[p.input].dtype, outputs[p.output].dtype
        if dtypes[0] != dtypes[1]:
            raise fail(where, f"input {p.input!r} is {dtypes[0]} but output {p.output!r} is {dtypes[1]}")


def _check_files(m: Manifest, path: Path) -> None:
    for k, s in enumerate(m.stages):
        for key, name in (("file", s.file), ("external_data", s.external_data)):
            if name is not None and not (m.folder / name).is_file():
                raise ModelError(f"{path}: stages[{k}].{key}: {name} is missing")
