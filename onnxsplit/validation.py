"""Run the original and the chained stages on the same inputs and compare.

For every output: max abs and max rel error and the smallest tolerance that
would have passed. With hand-off checking, every tensor passed between
stages is compared with the same tensor inside the original, and the first
stage whose outputs diverge is named.

For a decoder split with its state pairs, ``steps`` compares generation
instead: a prefill and that many decode steps on the original (its present
caches fed back as pasts) and on the split pipeline (each stage keeping its
own caches), the logits of every step within tolerance and the greedily
chosen tokens exactly.
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
from onnxsplit.feeds import check_feeds, load_feeds, random_feeds
from onnxsplit.orterrors import ort_errors
from onnxsplit.ortutil import make_session, run_with_outputs
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
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity: masked by ``exact``
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
    fed = {n: tuple(v.shape) for n, v in feeds.items() if isinstance(v, np.ndarray)}  # tensors: sequences have no shape
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
            if all(fed.get(n, d) == d for n, d in split_for.items()):
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
    inputs_path: str | os.PathLike | Mapping[str, Any] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    check_handoffs: bool = False,
    seed: int = 0,
    steps: int = 0,
) -> Report:
    """Compare the chained stages of a split folder with the original model.

    Tolerances left unset are 1e-4 / 1e-5 (relative / absolute), and 1e-2 /
    1e-3 for float16 outputs. ``inputs_path``: an .npz of input arrays, or a
    mapping of input name to value (a list of arrays for a sequence input,
    None for an empty optional). Sequence outputs are compared element by
    element (see :func:`compare_value`).

    Before anything runs, the manifest is checked on its own, against the
    stage files (names, dtypes and ranks they declare; their weights files)
    and against the original model, and the inputs against the model's
    inputs (names, dtypes, ranks, fixed dims). Every failure, including one
    of onnxruntime's, raises an OnnxSplitError of one line naming the file,
    field, input, stage or node at fault. A Report that did not pass means
    the stages ran but their results differ.

    ``steps`` > 0 (a split whose manifest has state pairs): the prompt is
    the ``input_ids`` of the inputs (an .npz of every input or of
    ``input_ids`` alone), else random ids of the split's
    ``input_ids`` shape, at least 4 long; the outputs compared are the
    logits of the prefill and of each of the ``steps`` decode steps, and the
    tokens (exactly). Hand-off checking compares one run and does not
    combine with steps.
    """
    outdir = Path(outdir)
    manifest = load_manifest(outdir)
    check_stage_files(manifest)
    path = check_source(model_path if model_path is not None else manifest.source_path(), manifest.source.sha256,
                        what="this folder was split from")
    model = load_model(path)
    check_source_model(manifest, model)
    notes = []
    if steps < 0:
        raise UsageError(f"steps must be 0 or more, got {steps}")
    if steps:
        if check_handoffs:
            raise UsageError("hand-off checking compares one run: it does not combine with decode steps")
        return _validate_steps(outdir, manifest, path, model, inputs_path, steps=steps, rtol=rtol, atol=atol,
                               seed=seed)
    if isinstance(inputs_path, Mapping):
        feeds = dict(inputs_path)
    elif inputs_path is not None:
        feeds = _read_feeds(inputs_path, model)
    else:
        odd = [i for i in manifest.inputs if not is_tensor_dtype(i.dtype)]
        if odd:
            raise UsageError(f"input {odd[0].name!r} is a {odd[0].dtype}, for which no random value can be made: "
                             "give the inputs to validate on")
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
    outputs = [compare_value(o.name, got[o.name], want[o.name], rtol=rtol, atol=atol, stage=o.stage)
               for o in manifest.outputs]
    handoffs = [compare_value(h.name, got[h.name], want[h.name], rtol=rtol, atol=atol, stage=h.producer)
                for h in checked]
    bad = sorted(c.stage for c in list(handoffs) + outputs if not c.passed and c.stage is not None)
    return Report(tuple(outputs), tuple(handoffs), bad[0] if bad else None, tuple(notes))


def _validate_steps(outdir: Path, manifest: Manifest, path: Path, model: Model,
                    inputs_path: str | os.PathLike | Mapping[str, Any] | None, *, steps: int, rtol: float | None,
                    atol: float | None, seed: int) -> Report:
    """Prefill + ``steps`` decode steps on the original and on the pipeline; see :func:`validate`."""
    from onnxsplit.decoding import OriginalDecoder
    from onnxsplit.runtime import Pipeline
    from onnxsplit.state import StatePair

    if not manifest.state:
        raise UsageError(f"{outdir}: the split keeps no state (its manifest has no state pairs), so it has no "
                         "decode steps to validate")
    original = OriginalDecoder(path, state=[StatePair(p.input, p.output) for p in manifest.state])
    sig = original.signature
    if inputs_path is None:
        batch, length = (tuple(manifest.input_shapes.get(sig.ids, ())) + (1, 1))[:2]
        logits_spec = next(o for o in manifest.outputs if o.name == sig.logits)
        vocab = logits_spec.shape[-1] if logits_spec.shape and isinstance(logits_spec.shape[-1], int) else 2
        prompt = np.random.default_rng(seed).integers(0, vocab, size=(batch, max(length, 4)), dtype=np.int64)
    else:
        if isinstance(inputs_path, Mapping):
            feeds = dict(inputs_path)
        else:
            try:
                feeds = _read_feeds(inputs_path, model)  # every input of the model, as for one run
            except UsageError:
                feeds = load_feeds(inputs_path, [sig.ids])  # or the prompt alone
        if sig.ids not in feeds:
            raise UsageError(f"{inputs_path if not isinstance(inputs_path, Mapping) else 'the inputs'}: no "
                             f"{sig.ids!r} to take the prompt from")
        prompt = np.asarray(feeds[sig.ids])
    want = original.generate(prompt, steps + 1)
    with Pipeline(outdir, pin=False) as pipe:
        got = pipe.generate(prompt, steps + 1)
    stage = next(o.stage for o in manifest.outputs if o.name == sig.logits)
    outputs = [compare_value(f"{sig.logits} (prefill)" if i == 0 else f"{sig.logits} (step {i})", g, w, rtol=rtol,
                             atol=atol, stage=stage)
               for i, (g, w) in enumerate(zip(got.logits, want.logits))]
    outputs.append(compare("tokens", got.tokens, want.tokens, rtol=0.0, atol=0.0, stage=stage))
    notes = (f"prompt of {prompt.shape[1]} tokens, batch {prompt.shape[0]}; prefill + {steps} decode steps",)
    # The logits come from the last stage whichever stage went wrong: no stage is named.
    return Report(tuple(outputs), (), None, notes)
