"""Read back what ``onnxsplit bench --json`` printed: a checked :class:`BenchResult`.

The document is :meth:`BenchResult.as_dict`, as the CLI writes it (floats
that are not finite as the strings "inf", "-inf", "nan") or as ``json.dumps``
writes it (``Infinity``, ``NaN``). Every field is checked for its type; the
derived figures (``vs_original_1``, ``vs_original_n``, ``spread``,
``reliable``) must agree with the fields they come from. A file without
``timeline`` (written before the timeline was recorded) reads with an empty
one; other unknown keys are ignored.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from onnxsplit.errors import UsageError
from onnxsplit.runtime.bench import BenchResult, StageResult, Throughput, TimelineSpan

T = TypeVar("T")

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


class _Reader:
    """Checked access to one document's fields; every error names the file and the field's path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, problem: str) -> UsageError:
        return UsageError(f"{self.path}: {field}: {problem}")

    def get(self, doc: dict[str, Any], key: str, where: str) -> Any:
        if key not in doc:
            raise self.fail(where + key, "missing")
        return doc[key]

    def obj(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"expected an object, got {_kind(value)}")
        return value

    def items(self, value: Any, field: str, read: Callable[[Any, str], T]) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise self.fail(field, f"expected a list, got {_kind(value)}")
        return tuple(read(v, f"{field}[{i}]") for i, v in enumerate(value))

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {_kind(value)}")
        return value

    def integer(self, value: Any, field: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"expected an integer, got {_kind(value)}")
        if value < minimum:
            raise self.fail(field, f"must be at least {minimum}, got {value}")
        return value

    def number(self, value: Any, field: str, *, finite: bool = False) -> float:
        if isinstance(value, str) and value in _NON_FINITE:
            value = _NON_FINITE[value]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"expected a number, got {_kind(value)}")
        if finite and not math.isfinite(value):
            raise self.fail(field, f"expected a finite number, got {value}")
        return float(value)

    def fraction(self, value: Any, field: str) -> float:
        x = self.number(value, field)
        if not 0.0 <= x <= 1.0:
            raise self.fail(field, f"expected a fraction between 0 and 1, got {x}")
        return x


def _kind(value: Any) -> str:
    """How a JSON value is named in a message: its type, and the value when short."""
    name = {dict: "an object", list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(
        type(value), "a number")
    text = json.dumps(value) if not isinstance(value, (dict, list)) else ""
    return f"{name} {text}" if text and len(text) <= 40 else name


def _throughput(r: _Reader, value: Any, field: str) -> Throughput:
    doc = r.obj(value, field)
    w = field + "."
    return Throughput(
        label=r.string(r.get(doc, "label", w), w + "label"),
        threads=r.integer(r.get(doc, "threads", w), w + "threads", minimum=1),
        requests=r.integer(r.get(doc, "requests", w), w + "requests"),
        seconds=r.number(r.get(doc, "seconds", w), w + "seconds", finite=True),
        samples_per_s=r.number(r.get(doc, "samples_per_s", w), w + "samples_per_s"),
        p50_ms=r.number(r.get(doc, "p50_ms", w), w + "p50_ms"),
        p99_ms=r.number(r.get(doc, "p99_ms", w), w + "p99_ms"),
        per_round=r.items(r.get(doc, "per_round", w), w + "per_round", r.number),
    )


def _stage(r: _Reader, value: Any, field: str) -> StageResult:
    doc = r.obj(value, field)
    w = field + "."
    return StageResult(
        index=r.integer(r.get(doc, "index", w), w + "index"),
        provider=r.string(r.get(doc, "provider", w), w + "provider"),
        threads=r.integer(r.get(doc, "threads", w), w + "threads", minimum=1),
        cores=r.items(r.get(doc, "cores", w), w + "cores", r.integer),
        runs=r.integer(r.get(doc, "runs", w), w + "runs"),
        busy=r.fraction(r.get(doc, "busy", w), w + "busy"),
        starved=r.fraction(r.get(doc, "starved", w), w + "starved"),
        blocked=r.fraction(r.get(doc, "blocked", w), w + "blocked"),
        other=r.fraction(r.get(doc, "other", w), w + "other"),
        measured_ms=r.number(r.get(doc, "measured_ms", w), w + "measured_ms"),
        predicted_ms=r.number(r.get(doc, "predicted_ms", w), w + "predicted_ms"),
    )


def _span(r: _Reader, value: Any, field: str) -> TimelineSpan:
    doc = r.obj(value, field)
    w = field + "."
    span = TimelineSpan(
        request=r.integer(r.get(doc, "request", w), w + "request"),
        stage=r.integer(r.get(doc, "stage", w), w + "stage"),
        start_ms=r.number(r.get(doc, "start_ms", w), w + "start_ms", finite=True),
        end_ms=r.number(r.get(doc, "end_ms", w), w + "end_ms", finite=True),
    )
    if span.end_ms < span.start_ms:
        raise r.fail(w + "end_ms", f"{span.end_ms} is before start_ms {span.start_ms}")
    return span


def _shape(r: _Reader, value: Any, field: str) -> tuple[int, ...]:
    return r.items(value, field, r.integer)


def _agrees(stored: float, derived: float) -> bool:
    if math.isnan(stored) or math.isnan(derived):
        return math.isnan(stored) and math.isnan(derived)
    return stored == derived or math.isclose(stored, derived, rel_tol=1e-9)


def load_bench(path: str | os.PathLike) -> BenchResult:
    """The BenchResult that ``onnxsplit bench --json`` printed into ``path``.

    Before: ``path`` holds one JSON object (:meth:`BenchResult.as_dict`).
    After: the result equals the one that was dumped (figures that are NaN
    excepted, as NaN equals nothing). A missing field, a field of the wrong
    type, a stage out of place or a derived figure that disagrees with its
    sources raises a one-line UsageError naming the file and the field.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read a JSON bench result ({' '.join(str(exc).split())})") from None
    r = _Reader(path)
    doc = r.obj(doc, "(top level)")

    def field(key: str) -> Any:
        return r.get(doc, key, "")

    shapes = r.obj(field("input_shapes"), "input_shapes")
    stages = r.items(field("stages"), "stages", lambda v, f: _stage(r, v, f))
    for k, stage in enumerate(stages):
        if stage.index != k:
            raise r.fail(f"stages[{k}].index", f"expected {k}, got {stage.index}")
    timeline = r.items(doc.get("timeline", []), "timeline", lambda v, f: _span(r, v, f))
    for i, span in enumerate(timeline):
        if span.stage >= len(stages):
            raise r.fail(f"timeline[{i}].stage", f"stage {span.stage} does not exist ({len(stages)} stages)")
    result = BenchResult(
        outdir=r.string(field("outdir"), "outdir"),
        model=r.string(field("model"), "model"),
        input_shapes={r.string(k, "input_shapes"): _shape(r, v, f"input_shapes[{k!r}]") for k, v in shapes.items()},
        samples_per_request=r.integer(field("samples_per_request"), "samples_per_request", minimum=1),
        in_flight=r.integer(field("in_flight"), "in_flight", minimum=1),
        rounds=r.integer(field("rounds"), "rounds", minimum=1),
        predicted_scale=r.number(field("predicted_scale"), "predicted_scale", finite=True),
        pipeline=_throughput(r, field("pipeline"), "pipeline"),
        stages=stages,
        original_1=_throughput(r, field("original_1"), "original_1"),
        original_n=_throughput(r, field("original_n"), "original_n"),
        warnings=r.items(field("warnings"), "warnings", r.string),
        spread_limit=r.number(field("spread_limit"), "spread_limit"),
        timeline=timeline,
    )
    if not result.spread_limit >= 0:  # as bench refuses it: NaN fails too
        raise r.fail("spread_limit", f"must be zero or more, got {result.spread_limit}")
    # The derived figures are printed for people; a file whose figures contradict them was edited or damaged.
    for key in ("vs_original_1", "vs_original_n", "spread"):
        if key in doc:
            stored, derived = r.number(doc[key], key), getattr(result, key)
            if not _agrees(stored, derived):
                raise r.fail(key, f"{stored} disagrees with the figures it comes from ({derived})")
    if "reliable" in doc:
        if not isinstance(doc["reliable"], bool):
            raise r.fail("reliable", f"expected true or false, got {_kind(doc['reliable'])}")
        if doc["reliable"] != result.reliable:
            raise r.fail("reliable", f"{json.dumps(doc['reliable'])} disagrees with spread and spread_limit")
    return result
