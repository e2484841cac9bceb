"""Run the original and the chained stages on the same inputs and compare.

For every output: max abs and max rel error and the smallest tolerance that
would have passed. With hand-off checking, every tensor passed between
stages is compared with the same tensor inside the original, and the first
stage whose outputs diverge is named.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxsplit.errors import ModelError, UsageError
from onnxsplit.integrity import check_source_model, check_stage_files
from onnxsplit.manifest import Manifest, load_manifest
from onnxsplit.model import Model, check_source, load_model
from onnxsplit.ortutil import check_feeds, load_feeds, make_session, ort_errors, random_feeds, run_with_outputs

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
        label = f"{path}: stage {k}"
        session = make_session(path, provider=stage.provider, provider_options=dict(stage.provider_options),
                               threads=threads, label=label)
        try:
            with ort_errors(label):
                values = session.run(names, {i.name: env[i.name] for i in stage.inputs})
        except ModelError as exc:
            if fed == split_for:
                raise
            # A stage may have kept a dim that the split's input shapes fixed.
            raise ModelError(f"{exc} (the split was made for input shapes {_shapes_text(split_for)}; these inputs "
                             f"are {_shapes_text(fed)})") from None
        env.update(zip(names, values))
    return env


# -- user inputs --------------------------------------------------------------------------------------------------


def _read_feeds(path: str | os.PathLike, model: Model) -> dict[str, np.ndarray]:
    """The user's input arrays, checked against the model's inputs."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        # np.load would take a .npy or a pickle too, and neither maps names to arrays.
        raise UsageError(f"{path}: not a readable .npz file of input arrays (not a zip archive of arrays as "
                         f"numpy.savez writes)")
    feeds = load_feeds(path, [i.name for i in model.inputs])
    check_feeds(model, feeds, where=str(path))
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
        feeds = _read_feeds(inputs_path, model)
    else:
        feeds = random_feeds(manifest.feed_specs(), seed=seed)
    checked = manifest.handoffs if check_handoffs else ()
    try:
        want = run_with_outputs(model, [h.name for h in checked], feeds)
    except ModelError as exc:
        if inputs_path is None:
            raise
        raise UsageError(f"{exc} (on the inputs in {inputs_path})") from None  # the user's inputs are at fault
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
