"""Run the original and the chained stages on the same inputs and compare.

For every output: max abs and max rel error and the smallest tolerance that
would have passed. With hand-off checking, every tensor passed between
stages is compared with the same tensor inside the original, and the first
stage whose outputs diverge is named.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxsplit.errors import UsageError
from onnxsplit.manifest import Manifest, load_manifest
from onnxsplit.model import check_source, load_model
from onnxsplit.ortutil import load_feeds, make_session, random_feeds, run_with_outputs
from onnxsplit.valuetypes import is_tensor_dtype

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


def compare_value(name: str, got: Any, want: Any, *, rtol: float | None, atol: float | None,
                  stage: int | None = None) -> Comparison:
    """:func:`compare` for any value onnxruntime returns, at the dtype's default tolerances where unset.

    A sequence (a list of arrays) matches when it has as many elements and
    each matches; its Comparison holds the worst element's errors and the
    first element's dtype. An empty optional (None) matches only None.
    """
    if isinstance(want, list) or isinstance(got, list):
        if not (isinstance(want, list) and isinstance(got, list)) or len(got) != len(want):
            return Comparison(name, "sequence", math.inf, math.inf, rtol or 0.0, atol or 0.0, math.inf, math.inf,
                              False, stage)
        parts = [compare_value(name, g, w, rtol=rtol, atol=atol, stage=stage) for g, w in zip(got, want)]
        if not parts:
            r, a = _tolerance("", rtol, atol)
            return Comparison(name, "sequence", 0.0, 0.0, r, a, 0.0, 0.0, True, stage)
        return Comparison(name, parts[0].dtype, max(c.max_abs for c in parts), max(c.max_rel for c in parts),
                          parts[0].rtol, parts[0].atol, max(c.needed_atol for c in parts),
                          max(c.needed_rtol for c in parts), all(c.passed for c in parts), stage)
    if want is None or got is None:
        r, a = _tolerance("", rtol, atol)
        same = want is None and got is None
        return Comparison(name, "optional", 0.0 if same else math.inf, 0.0 if same else math.inf, r, a,
                          0.0 if same else math.inf, 0.0 if same else math.inf, same, stage)
    r, a = _tolerance(str(want.dtype), rtol, atol)
    return compare(name, got, want, rtol=r, atol=a, stage=stage)


def run_stages(manifest: Manifest, feeds: dict[str, np.ndarray], *, threads: int = 1) -> dict[str, np.ndarray]:
    """Chain the stages by the manifest: every stage reads graph inputs or earlier stages' outputs.

    Returns the feeds and every stage output, by name.
    """
    env = dict(feeds)
    for stage, path in zip(manifest.stages, manifest.stage_paths()):
        session = make_session(path, provider=stage.provider, provider_options=dict(stage.provider_options),
                               threads=threads)
        names = [o.name for o in stage.outputs]
        values = session.run(names, {i.name: env[i.name] for i in stage.inputs})
        env.update(zip(names, values))
    return env


def _tolerance(dtype: str, rtol: float | None, atol: float | None) -> tuple[float, float]:
    default = LOW_PRECISION.get(dtype, (1e-4, 1e-5))
    return (default[0] if rtol is None else rtol, default[1] if atol is None else atol)


def validate(
    outdir: str | os.PathLike,
    *,
    model_path: str | os.PathLike | None = None,
    inputs_path: str | os.PathLike | Mapping[str, Any] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    check_handoffs: bool = False,
    seed: int = 0,
) -> Report:
    """Compare the chained stages of a split folder with the original model.

    Tolerances left unset are 1e-4 / 1e-5 (relative / absolute), and 1e-2 /
    1e-3 for float16 outputs. ``inputs_path``: an .npz of input arrays, or a
    mapping of input name to value (a list of arrays for a sequence input,
    None for an empty optional). Sequence outputs are compared element by
    element (see :func:`compare_value`).
    """
    outdir = Path(outdir)
    manifest = load_manifest(outdir)
    path = check_source(model_path if model_path is not None else manifest.source_path(), manifest.source.sha256,
                        what="this folder was split from")
    model = load_model(path)
    notes = []
    if isinstance(inputs_path, Mapping):
        feeds = dict(inputs_path)
    elif inputs_path is not None:
        feeds = load_feeds(inputs_path, list(manifest.input_names))
    else:
        odd = [i for i in manifest.inputs if not is_tensor_dtype(i.dtype)]
        if odd:
            raise UsageError(f"input {odd[0].name!r} is a {odd[0].dtype}, for which no random value can be made: "
                             "give the inputs to validate on")
        feeds = random_feeds(manifest.feed_specs(), seed=seed)
    checked = manifest.handoffs if check_handoffs else ()
    want = run_with_outputs(model, [h.name for h in checked], feeds)
    got = run_stages(manifest, feeds)
    outputs = []
    outputs = [compare_value(o.name, got[o.name], want[o.name], rtol=rtol, atol=atol, stage=o.stage)
               for o in manifest.outputs]
    handoffs = [compare_value(h.name, got[h.name], want[h.name], rtol=rtol, atol=atol, stage=h.producer)
                for h in checked]
    bad = sorted(c.stage for c in list(handoffs) + outputs if not c.passed and c.stage is not None)
    return Report(tuple(outputs), tuple(handoffs), bad[0] if bad else None, tuple(notes))
