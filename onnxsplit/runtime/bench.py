"""Measure a split folder's pipeline against the original model, in one run.

Three ways of running the model, on the same random inputs:

1. the pipeline, kept full (a bounded number of requests always in flight):
   throughput, latency p50/p99, and for each stage its busy / starved /
   blocked fractions and its mean run time next to the manifest's prediction;
2. the original model alone with 1 intra-op thread;
3. the original model alone with as many threads as the stages use in total.

They take turns in short rounds (pipeline, original 1, original N, pipeline,
...), so a machine whose speed drifts (other tenants, clocks) slows all three
alike instead of whichever happened to run at the bad moment.

Two things make the comparison misleading, and the result says so in its
``warnings``: CPU stages that want more threads than the machine has cores
(they share cores, which separate devices would not), and rounds whose speeds
spread by more than ``spread_limit`` (a busy machine: the ratios then compare
moments, not ways of running).

The result also keeps a timeline: when each stage ran each of
``TIMELINE_REQUESTS`` consecutive requests of the pipeline's last measured
window, from the spans the in-process workers record. Engines that record no
spans (Ray) leave it empty.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxsplit.devices import Devices
from onnxsplit.errors import UsageError
from onnxsplit.manifest import TensorSpec, load_manifest
from onnxsplit.model import check_source
from onnxsplit.feeds import random_feeds
from onnxsplit.ortutil import make_session
from onnxsplit.valuetypes import is_tensor_dtype
from onnxsplit.runtime.pipeline import Pipeline, Span, StageStats
from onnxsplit.runtime.specs import CPU, usable_cores

log = logging.getLogger(__name__)

# A quiet machine repeats a round within a few percent; beyond this the ratios describe its load.
SPREAD_LIMIT = 0.2
# Requests in the timeline: enough to show the pipeline's rhythm and its bubbles, few enough to draw.
TIMELINE_REQUESTS = 32


@dataclass(frozen=True)
class Throughput:
    """One way of running the model: how fast, and how long one request took."""

    label: str
    threads: int
    requests: int
    seconds: float
    samples_per_s: float
    p50_ms: float
    p99_ms: float
    per_round: tuple[float, ...]  # samples/s of each round: their spread shows how noisy the machine was

    @property
    def spread(self) -> float:
        """How much faster the fastest round ran than the slowest (max/min - 1); 0 with a single round."""
        return max(self.per_round) / min(self.per_round) - 1 if len(self.per_round) > 1 else 0.0


@dataclass(frozen=True)
class StageResult:
    """One stage during the pipeline's measured window.

    The four fractions split the window's wall time, so they add up to 1.
    """

    index: int
    provider: str
    threads: int
    cores: tuple[int, ...]
    runs: int
    busy: float  # running the stage's session
    starved: float  # waiting for a request from the previous stage
    blocked: float  # waiting for room in the next stage's queue
    other: float  # the worker's own Python work (routing, queue hand-offs)
    measured_ms: float  # mean session run time per request
    predicted_ms: float  # the manifest's predicted load, scaled to the benchmark's batch


@dataclass(frozen=True)
class TimelineSpan:
    """One stage's session run of one request of the timeline.

    ``request`` counts the timeline's requests from 0 in submit order;
    times are ms after the start of the timeline's earliest span.
    """

    request: int
    stage: int
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class BenchResult:
    outdir: str
    model: str
    input_shapes: dict[str, tuple[int, ...]]
    samples_per_request: int
    in_flight: int
    rounds: int
    predicted_scale: float  # benchmark batch / the manifest's batch (1 when unchanged)
    pipeline: Throughput
    stages: tuple[StageResult, ...]
    original_1: Throughput
    original_n: Throughput
    warnings: tuple[str, ...] = ()  # one line each: why the figures may mislead
    spread_limit: float = SPREAD_LIMIT
    # Every stage's runs of up to TIMELINE_REQUESTS consecutive requests of the last measured window, sorted
    # by request then stage; empty when the engine records no spans.
    timeline: tuple[TimelineSpan, ...] = ()

    @property
    def spread(self) -> float:
        """The widest spread between rounds of the three ways of running (see :attr:`Throughput.spread`)."""
        return max(t.spread for t in (self.pipeline, self.original_1, self.original_n))

    @property
    def reliable(self) -> bool:
        """Whether the ratios compare ways of running rather than moments of a busy machine."""
        return self.spread <= self.spread_limit

    @property
    def vs_original_1(self) -> float:
        return self.pipeline.samples_per_s / self.original_1.samples_per_s

    @property
    def vs_original_n(self) -> float:
        return self.pipeline.samples_per_s / self.original_n.samples_per_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "outdir": self.outdir, "model": self.model,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "samples_per_request": self.samples_per_request, "in_flight": self.in_flight, "rounds": self.rounds,
            "predicted_scale": self.predicted_scale,
            "pipeline": _plain(self.pipeline),
            "stages": [_plain(s) for s in self.stages],
            "original_1": _plain(self.original_1), "original_n": _plain(self.original_n),
            "vs_original_1": self.vs_original_1, "vs_original_n": self.vs_original_n,
            "spread": self.spread, "spread_limit": self.spread_limit, "reliable": self.reliable,
            "warnings": list(self.warnings),
            "timeline": [_plain(s) for s in self.timeline],
        }


def _plain(value: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready fields (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in ((k, getattr(value, k)) for k in value.__dataclass_fields__)}


def bench_shapes(inputs: Sequence[TensorSpec], input_shapes: Mapping[str, Sequence[int]], *,
                 batch: int | None = None) -> tuple[dict[str, tuple[int, ...]], float]:
    """Input shapes to benchmark at, and how much bigger the batch is than the split's.

    ``inputs`` and ``input_shapes`` are a manifest's. ``batch`` replaces the
    first dim of every input whose first dim is symbolic; None keeps
    ``input_shapes``.
    """
    shapes = {i.name: tuple(input_shapes[i.name]) for i in inputs}
    if batch is None:
        return shapes, 1.0
    if batch < 1:
        raise UsageError(f"the batch must be at least 1, got {batch}")
    dynamic = [i.name for i in inputs if i.shape and not isinstance(i.shape[0], int)]
    if not dynamic:
        raise UsageError("no model input has a symbolic first dimension to batch")
    scale = batch / shapes[dynamic[0]][0]
    for name in dynamic:
        shapes[name] = (batch, *shapes[name][1:])
    return shapes, scale


def _samples(shapes: dict[str, tuple[int, ...]]) -> int:
    # The first dim of the first input that has one is the batch, by convention.
    return next((s[0] for s in shapes.values() if len(s) >= 1 and s[0] > 0), 1)


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    if not latencies:
        return (float("nan"), float("nan"))
    p50, p99 = np.percentile(np.asarray(latencies) * 1e3, [50, 99])
    return float(p50), float(p99)


@dataclass(frozen=True)
class _Window:
    """One measured stretch of one way of running: what finished inside it, and how long it was."""

    requests: int
    seconds: float
    latencies: tuple[float, ...]
    before: tuple[StageStats, ...] = ()
    after: tuple[StageStats, ...] = ()
    opened: float = 0.0  # time.perf_counter() when the window opened and closed
    closed: float = 0.0
    spans: tuple[Span, ...] = ()  # the pipeline's recorded spans when the window closed


def _measure_pipeline(pipe: Pipeline, feeds: dict[str, np.ndarray], *, seconds: float, warmup: float,
                      in_flight: int) -> _Window:
    """Keep ``in_flight`` requests in the pipeline through warm-up and measurement.

    The window opens once ``warmup`` has passed and the pipeline is full
    (``in_flight`` requests finished), and there is no break between the two,
    so it sees the steady state, not the pipeline filling or draining; a
    request counts when it finishes inside the window (at least one must).
    """
    clock = time.perf_counter
    pending: deque[Future] = deque()
    finished: list[Future] = []
    begin = clock() + warmup
    end = 0.0
    before: tuple[StageStats, ...] = ()
    t0 = t1 = 0.0
    spans: tuple[Span, ...] = ()
    while True:
        now = clock()
        if not before and now >= begin and len(finished) >= in_flight:
            before, t0, end = pipe.stats(), now, now + seconds
        if before and now >= end and finished[-1].finished_at >= t0:
            after, t1 = pipe.stats(), now
            # Taken before draining, so the ring buffers still hold the window's last requests.
            trace = getattr(pipe, "trace", None)
            spans = trace() if trace is not None else ()
            break
        while len(pending) < in_flight:
            pending.append(pipe.submit(feeds))
        future = pending.popleft()
        future.result()
        finished.append(future)
    for future in pending:  # drain, unmeasured
        future.result()
    # The worker stamps the finish time, so a late wake-up here does not count as latency.
    inside = [f for f in [*finished, *pending] if t0 <= f.finished_at <= t1]
    return _Window(len(inside), t1 - t0, tuple(f.finished_at - f.submitted_at for f in inside), before, after,
                   t0, t1, spans)


def timeline(spans: Sequence[Span], stages: int, *, opened: float, closed: float,
             requests: int = TIMELINE_REQUESTS) -> tuple[TimelineSpan, ...]:
    """The last ``requests`` consecutive requests that ran through all ``stages`` inside [opened, closed].

    ``spans`` are a pipeline's (:meth:`Pipeline.trace`). A request counts
    when every stage has a span for it and all of them lie inside the
    window; the run of consecutive request numbers ending at the latest such
    request is kept (fewer than ``requests`` when the window held fewer),
    renumbered from 0, with times in ms after its earliest start. Empty
    when no request qualifies.
    """
    by_request: dict[int, dict[int, Span]] = {}
    for span in spans:
        by_request.setdefault(span.request, {})[span.stage] = span
    whole = {r for r, runs in by_request.items()
             if len(runs) == stages and all(opened <= s.start_s and s.end_s <= closed for s in runs.values())}
    if not whole or requests < 1:
        return ()
    last = max(whole)
    first = last
    while first - 1 in whole and last - first + 1 < requests:
        first -= 1
    kept = [by_request[r][k] for r in range(first, last + 1) for k in range(stages)]
    origin = min(s.start_s for s in kept)
    return tuple(TimelineSpan(s.request - first, s.stage, (s.start_s - origin) * 1e3, (s.end_s - origin) * 1e3)
                 for s in kept)


def _measure_session(session: Any, feeds: dict[str, np.ndarray], *, seconds: float, warmup: float) -> _Window:
    clock = time.perf_counter
    end = clock() + warmup
    while clock() < end:
        session.run(None, feeds)
    latencies = []
    begin = clock()
    while not latencies or clock() - begin < seconds:
        t0 = clock()
        session.run(None, feeds)
        latencies.append(clock() - t0)
    return _Window(len(latencies), clock() - begin, tuple(latencies))


def _throughput(label: str, threads: int, windows: list[_Window], samples: int) -> Throughput:
    requests = sum(w.requests for w in windows)
    seconds = sum(w.seconds for w in windows)
    p50, p99 = _percentiles([x for w in windows for x in w.latencies])
    return Throughput(label, threads, requests, seconds, requests * samples / seconds, p50, p99,
                      tuple(w.requests * samples / w.seconds for w in windows))


def core_warning(cpu_threads: int, cores: int) -> str | None:
    """A warning when the CPU stages' threads (``cpu_threads`` in all) outnumber the ``cores`` they may run on.

    Such stages cannot be pinned to cores of their own; they take turns on
    shared ones, so the pipeline runs slower, and each stage's time looks
    longer, than on as many separate devices.
    """
    if cpu_threads <= cores:
        return None
    return (f"the CPU stages run {cpu_threads} threads in all on {cores} core{'s' if cores != 1 else ''}: "
            f"they share cores, so the pipeline is slower and its stages' times longer than on separate devices")


def spread_warning(runs: Sequence[Throughput], *, limit: float = SPREAD_LIMIT) -> str | None:
    """A warning when the rounds of any of ``runs`` spread by more than ``limit`` (see :attr:`Throughput.spread`)."""
    worst = max(runs, key=lambda t: t.spread, default=None)
    if worst is None or worst.spread <= limit:
        return None
    return (f"rounds spread by {worst.spread:.0%} ({worst.label}: {min(worst.per_round):.1f} to "
            f"{max(worst.per_round):.1f} samples/s, more than the {limit:.0%} a quiet machine stays within): "
            f"the machine is busy, so the speed-up ratios are unreliable")


def _stage_results(pipe: Pipeline, windows: list[_Window], scale: float) -> tuple[StageResult, ...]:
    fields = ("busy_s", "starved_s", "blocked_s", "other_s")
    out = []
    for k, (spec, stage) in enumerate(zip(pipe.specs, pipe.manifest.stages)):
        runs = sum(w.after[k].runs - w.before[k].runs for w in windows)
        spent = {f: sum(getattr(w.after[k], f) - getattr(w.before[k], f) for w in windows) for f in fields}
        # The phases tile the time between two snapshots, so this is the windows' length.
        total = sum(spent.values()) or 1.0
        out.append(StageResult(
            index=spec.index, provider=spec.provider, threads=spec.threads, cores=windows[-1].after[k].cores,
            runs=runs, busy=spent["busy_s"] / total, starved=spent["starved_s"] / total,
            blocked=spent["blocked_s"] / total, other=spent["other_s"] / total,
            measured_ms=spent["busy_s"] / runs * 1e3 if runs else float("nan"),
            predicted_ms=float(stage.predicted.load_ms) * scale,
        ))
    return tuple(out)


def bench(
    outdir: str | os.PathLike,
    *,
    seconds: float = 5.0,
    warmup: float = 1.0,
    rounds: int = 3,
    batch: int | None = None,
    model_path: str | os.PathLike | None = None,
    pin: bool = True,
    queue_size: int = 4,
    in_flight_per_stage: int = 2,
    seed: int = 0,
    engine: str = "inproc",
    address: str | None = None,
    placement: str = "pack",
    devices: Devices | None = None,
    spread_limit: float = SPREAD_LIMIT,
) -> BenchResult:
    """Benchmark the pipeline of ``outdir`` and the original model on the same random inputs.

    Each way of running is measured for ``seconds`` in all, split into
    ``rounds`` turns, after ``warmup`` unmeasured seconds at its first turn;
    the whole run takes about three times ``seconds + warmup``. ``engine``,
    ``address``, ``placement`` and ``devices`` choose the pipeline's engine as
    :class:`~onnxsplit.runtime.Pipeline` does.

    The result's ``warnings`` name what makes its figures misleading: CPU
    stages of the in-process engine with more threads than this process
    has cores, and rounds that spread by more than ``spread_limit`` (0.2:
    the fastest round 20% faster than the slowest), when ``reliable`` is
    False.
    """
    if not (0 < seconds < math.inf and 0 <= warmup < math.inf):  # nan fails both: it would never end
        raise UsageError(f"seconds must be positive and warmup not negative, both finite (got {seconds}, {warmup})")
    if not spread_limit >= 0:  # nan fails too; inf is allowed: never warn
        raise UsageError(f"spread_limit must be zero or more, got {spread_limit}")
    if rounds < 1 or in_flight_per_stage < 1:
        raise UsageError(f"rounds and in_flight_per_stage must be at least 1 (got {rounds}, {in_flight_per_stage})")
    outdir = Path(outdir)
    manifest = load_manifest(outdir)
    source = check_source(model_path if model_path is not None else manifest.source_path(), manifest.source.sha256,
                          what="this folder was split from")
    odd = [i for i in manifest.inputs if not is_tensor_dtype(i.dtype)]
    if odd:
        raise UsageError(f"input {odd[0].name!r} is a {odd[0].dtype}: bench makes random tensors only")
    shapes, scale = bench_shapes(manifest.inputs, manifest.input_shapes, batch=batch)
    feeds = random_feeds(manifest.feed_specs(shapes), seed=seed)
    samples = _samples(shapes)
    in_flight = in_flight_per_stage * len(manifest.stages)
    total_threads = sum(s.threads for s in manifest.stages)
    turn = seconds / rounds

    ray_options: dict[str, Any] = {"address": address, "placement": placement, "devices": devices} \
        if engine == "ray" else {}
    with Pipeline(outdir, queue_size=queue_size, pin=pin, engine=engine, **ray_options) as pipe:
        originals = {1: make_session(source, threads=1), total_threads: make_session(source, threads=total_threads)}
        piped: list[_Window] = []
        alone: dict[int, list[_Window]] = {1: [], total_threads: []}
        for r in range(rounds):
            first = warmup if r == 0 else 0.0
            log.info("round %d of %d: pipeline, original with 1 thread, with %d", r + 1, rounds, total_threads)
            piped.append(_measure_pipeline(pipe, feeds, seconds=turn, warmup=first, in_flight=in_flight))
            for threads in dict.fromkeys((1, total_threads)):  # once when the split uses 1 thread
                alone[threads].append(_measure_session(originals[threads], feeds, seconds=turn, warmup=first))
        stages = _stage_results(pipe, piped, scale)
    pipeline = _throughput(f"pipeline ({len(stages)} stages)", total_threads, piped, samples)
    original_1 = _throughput("original, 1 thread", 1, alone[1], samples)
    original_n = _throughput(f"original, {total_threads} threads", total_threads, alone[total_threads], samples)
    warnings = []
    if engine == "inproc":  # Ray stages run on the cluster's nodes, whose cores are not this process's
        warnings.append(core_warning(sum(s.threads for s in manifest.stages if s.provider == CPU),
                                     len(usable_cores())))
    warnings.append(spread_warning((pipeline, original_1, original_n), limit=spread_limit))
    for w in warnings:
        if w is not None:
            log.info("bench: %s", w)  # the caller shows result.warnings; logging them too would say it twice
    last = piped[-1]
    spans = timeline(last.spans, len(stages), opened=last.opened, closed=last.closed)
    return BenchResult(str(outdir), str(source), shapes, samples, in_flight, rounds, scale, pipeline, stages,
                       original_1, original_n, tuple(w for w in warnings if w is not None), spread_limit, spans)
