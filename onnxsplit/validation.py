"""Run the original and the chained stages on the same inputs and compare.

For every output: max abs and max rel error and the smallest tolerance that
would have passed. With hand-off checking, every tensor passed between
stages is compared with the same tensor inside the original, and the first
stage whose outputs diverge is named.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxsplit.errors import ModelError, OnnxSplitError, UsageError
from onnxsplit.integrity import check_source_model, check_stage_files
from onnxsplit.manifest import Manifest, TensorSpec, load_manifest
from onnxsplit.model import Model, check_source, load_model
from onnxsplit.ortutil import load_feeds, make_session, random_feeds

# fp16 carries ~3 significant digits (unit roundoff 4.9e-4); a boundary that
# stops onnxruntime fusing two kernels changes rounding at that level.
LOW_PRECISION = {"float16": (1e-2, 1e-3), "bfloat16": (5e-2, 1e-2)}


@dataclass(frozen=True)
class Comparison:
    name: str
    dtype: str
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    needed_atol: float  # smallest atol that passes at this rtol
    needed_rtol: float  # smallest rtol that passes at this atol
    passed: bool
    stage: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Report:
    outputs: tuple[Comparison, ...]
    handoffs: tuple[Comparison, ...] = ()
    first_bad_stage: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.outputs) and all(c.passed for c in self.handoffs)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "outputs": [c.as_dict() for c in self.outputs],
                "handoffs": [c.as_dict() for c in self.handoffs], "first_bad_stage": self.first_bad_stage,
                "notes": list(self.notes)}


def compare(name: str, got: np.ndarray, want: np.ndarray, *, rtol: float, atol: float, stage: int | None = None) -> Comparison:
    dtype = str(want.dtype)
    if got.shape != want.shape or got.dtype != want.dtype:
        return Comparison(name, dtype, math.inf, math.inf, rtol, atol, math.inf, math.inf, False, stage)
    if not np.issubdtype(want.dtype, np.number) and want.dtype != bool:
        ok = bool(np.array_equal(got, want))
        return Comparison(name, dtype, 0.0 if ok else math.inf, 0.0 if ok else math.inf, rtol, atol,
                          0.0 if ok else math.inf, 0.0 if ok else math.inf, ok, stage)
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    same_nan = np.isnan(g) & np.isnan(w)
    same_inf = np.isinf(g) & np.isinf(w) & (np.sign(g) == np.sign(w))
    exact = same_nan | same_inf | (g == w)
    diff = np.where(exact, 0.0, np.abs(g - w))
    diff = np.where(np.isnan(diff), np.inf, diff)
    mag = np.abs(np.where(np.isfinite(w), w, 0.0))
    max_abs = float(diff.max()) if diff.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / mag)
        need_rtol = np.where(diff <= atol, 0.0, (diff - atol) / mag)
    max_rel = float(rel.max()) if rel.size else 0.0
    needed_atol = float(np.maximum(diff - rtol * mag, 0).max()) if diff.size else 0.0
    needed_rtol = float(need_rtol.max()) if need_rtol.size else 0.0
    passed = bool(np.all(diff <= atol + rtol * mag))
    return Comparison(name, dtype, max_abs, max_rel, rtol, atol, needed_atol, needed_rtol, passed, stage)


# -- running under onnxruntime, its failures as one line ---------------------------------------------------------------

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_NODE = re.compile(r"Non-zero status code returned while running (\S+) node\. Name:'([^']*)' Status Message: (.*)")


def ort_message(exc: BaseException) -> str:
    """onnxruntime's error as one line, naming the node that failed when onnxruntime says which."""
    text = _ORT_PREFIX.sub("", " ".join(str(exc).split()))
    found = _ORT_NODE.search(text)
    if found:
        return f"node {found.group(2)!r} ({found.group(1)}): {found.group(3)}"
    return text or type(exc).__name__


def _ort_errors() -> tuple[type[BaseException], ...]:
    """What onnxruntime raises: its own error types, and the Python errors its wrapper raises for a bad feed."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = [v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)]
    return (*own, RuntimeError, ValueError, TypeError)


def _quiet():
    """Run options that keep onnxruntime's own multi-line log of a failed run off the terminal;
    the failure reaches the user as one line of ours instead."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


def _run_original(model: Model, names: Sequence[str], feeds: Mapping[str, np.ndarray], *, fed_from: str,
                  error: type[OnnxSplitError]) -> dict[str, np.ndarray]:
    """The original's graph outputs and the named intermediate tensors; an onnxruntime failure is one line.

    A failed run raises ``error`` naming ``fed_from`` (where the feeds came
    from): the user's inputs are at fault when they gave them. The model goes to onnxruntime as bytes without its external weights,
    which onnxruntime reads from the model's folder.
    """
    graph = model.proto.graph
    existing = {o.name for o in graph.output}
    added = [n for n in dict.fromkeys(names) if n not in existing]
    for name in added:
        vi = graph.output.add()
        vi.name = name
        if name in model.value_info:
            vi.type.tensor_type.elem_type = model.value_info[name].type.tensor_type.elem_type
    try:
        data = model.proto.SerializeToString()
    finally:
        del graph.output[len(graph.output) - len(added):]
    try:
        session = make_session(data, external_folder=model.base_dir)
    except _ort_errors() as exc:  # an op or opset onnxruntime lacks, or damaged weights
        raise ModelError(f"{model.path}: onnxruntime cannot load the model: {ort_message(exc)}") from None
    wanted = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(wanted, session.run(wanted, dict(feeds), _quiet())))
    except _ort_errors() as exc:
        raise error(f"{model.path}: onnxruntime failed on {fed_from}: {ort_message(exc)}") from None


def _shapes_text(shapes: Mapping[str, Sequence[int]]) -> str:
    return ", ".join(f"{n}:{'x'.join(str(d) for d in dims) or 'scalar'}" for n, dims in shapes.items())


def run_stages(manifest: Manifest, feeds: dict[str, np.ndarray], *, threads: int = 1) -> dict[str, np.ndarray]:
    """Chain the stages by the manifest: every stage reads graph inputs or earlier stages' outputs.

    Before: ``manifest`` was loaded by ``load_manifest`` and ``feeds`` holds
    every model input. Returns the feeds and every stage output, by name.
    A stage onnxruntime cannot load or run raises ModelError naming the
    stage file, with onnxruntime's reason in the same line.
    """
    env = dict(feeds)
    fed = {n: tuple(np.shape(v)) for n, v in feeds.items()}
    split_for = {n: tuple(d) for n, d in manifest.input_shapes.items()}
    for k, (stage, path) in enumerate(zip(manifest.stages, manifest.stage_paths())):
        names = [o.name for o in stage.outputs]
        if not names:  # nothing to compute that anyone reads; onnxruntime refuses a run for no outputs
            continue
        try:
            session = make_session(path, provider=stage.provider, provider_options=dict(stage.provider_options),
                                   threads=threads)
        except _ort_errors() as exc:  # a damaged stage file or weights file
            raise ModelError(f"{path}: stage {k}: onnxruntime cannot load it: {ort_message(exc)}") from None
        try:
            values = session.run(names, {i.name: env[i.name] for i in stage.inputs}, _quiet())
        except _ort_errors() as exc:
            hint = ""
            if fed != split_for:  # a stage may have kept a dim the split's input shapes fixed
                hint = (f" (the split was made for input shapes {_shapes_text(split_for)}; these inputs are "
                        f"{_shapes_text(fed)})")
            raise ModelError(f"{path}: stage {k}: onnxruntime failed: {ort_message(exc)}{hint}") from None
        env.update(zip(names, values))
    return env


# -- user inputs --------------------------------------------------------------------------------------------------


def check_feeds(feeds: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], *, where: str | os.PathLike) -> None:
    """Every feed has the dtype and rank its model input declares, and every dim the model fixes.

    Before: ``feeds`` has exactly one array per input (as ``load_feeds``
    returns them). Symbolic dims take any size. Raises UsageError naming
    ``where`` (the inputs file), the input, and what does not match.
    """
    for spec in inputs:
        value = np.asarray(feeds[spec.name])
        if spec.dtype is not None and not _dtype_matches(value.dtype, spec.dtype):
            raise UsageError(f"{where}: input {spec.name!r} has dtype {value.dtype.name}, the model takes "
                             f"{spec.dtype}")
        if spec.shape is None:
            continue
        if value.ndim != len(spec.shape):
            raise UsageError(f"{where}: input {spec.name!r} has rank {value.ndim} (shape {list(value.shape)}), the "
                             f"model takes rank {len(spec.shape)} ({_dims_text(spec.shape)})")
        for j, (want, got) in enumerate(zip(spec.shape, value.shape)):
            if isinstance(want, int) and want >= 0 and want != got:
                raise UsageError(f"{where}: input {spec.name!r} has size {got} in dim {j} (shape "
                                 f"{list(value.shape)}), the model fixes that dim to {want} "
                                 f"({_dims_text(spec.shape)})")


def _dtype_matches(got: np.dtype, want: str) -> bool:
    if want == "str":
        return got.kind in "USO"
    return got.name == want


def _dims_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _read_feeds(path: str | os.PathLike, manifest: Manifest) -> dict[str, np.ndarray]:
    """The user's input arrays, checked against the model's inputs."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        # np.load would take a .npy or a pickle too, and neither maps names to arrays.
        raise UsageError(f"{path}: not a readable .npz file of input arrays (not a zip archive of arrays as "
                         f"numpy.savez writes)")
    feeds = load_feeds(path, list(manifest.input_names))
    check_feeds(feeds, manifest.inputs, where=path)
    return feeds


def _tolerance(dtype: str, rtol: float | None, atol: float | None) -> tuple[float, float]:
    default = LOW_PRECISION.get(dtype, (1e-4, 1e-5))
    return (default[0] if rtol is None else rtol, default[1] if atol is None else atol)


def validate(
    outdir: str | os.PathLike,
    *,
    model_path: str | os.PathLike | None = None,
    inputs_path: str | os.PathLike | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    check_handoffs: bool = False,
    seed: int = 0,
) -> Report:
    """Compare the chained stages of a split folder with the original model.

    Tolerances left unset are 1e-4 / 1e-5 (relative / absolute), and 1e-2 /
    1e-3 for float16 outputs.

    Before anything runs, the manifest is checked on its own, against the
    stage files (names, dtypes and ranks they declare; their weights files)
    and against the original model, and ``inputs_path`` (an .npz) against
    the model's inputs (names, dtypes, ranks, fixed dims). Every failure,
    including one of onnxruntime's, raises an OnnxSplitError of one line
    naming the file, field, input, stage or node at fault. A Report that did
    not pass means the stages ran but their results differ.
    """
    outdir = Path(outdir)
    manifest = load_manifest(outdir)
    check_stage_files(manifest)
    path = check_source(model_path if model_path is not None else manifest.source_path(), manifest.source.sha256,
                        what="this folder was split from")
    model = load_model(path)
    check_source_model(manifest, model)
    notes = []
    if inputs_path is not None:
        feeds = _read_feeds(inputs_path, manifest)
        fed_from = f"the inputs in {inputs_path}"
    else:
        feeds = random_feeds(manifest.feed_specs(), seed=seed)
        fed_from = "random inputs"
    checked = manifest.handoffs if check_handoffs else ()
    want = _run_original(model, [h.name for h in checked], feeds, fed_from=fed_from,
                         error=UsageError if inputs_path is not None else ModelError)
    got = run_stages(manifest, feeds)
    outputs = []
    for o in manifest.outputs:
        r, a = _tolerance(str(want[o.name].dtype), rtol, atol)
        outputs.append(compare(o.name, got[o.name], want[o.name], rtol=r, atol=a, stage=o.stage))
    handoffs = []
    for h in checked:
        r, a = _tolerance(str(want[h.name].dtype), rtol, atol)
        handoffs.append(compare(h.name, got[h.name], want[h.name], rtol=r, atol=a, stage=h.producer))
    bad = sorted(c.stage for c in list(handoffs) + outputs if not c.passed and c.stage is not None)
    return Report(tuple(outputs), tuple(handoffs), bad[0] if bad else None, tuple(notes))
