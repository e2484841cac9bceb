"""Run a split folder as a pipeline: one worker per stage, bounded queues between them.

Every request moves through the stages in pipeline order. Each worker owns
its stage's onnxruntime session (on the provider, options and thread count
the manifest names) and works on one request at a time, so stage K can run
request i while stage K+1 runs request i-1. onnxruntime releases the GIL
inside ``Run``, so threads are enough to overlap the stages.

Routing follows the manifest exactly: graph inputs go to every stage that
reads them, a hand-off goes to each stage that reads it, graph outputs are
taken from whichever stage makes them, and a request drops every tensor no
later stage reads as soon as it leaves the last stage that needs it.

Each worker also keeps the start and end of its last ``TRACE_REQUESTS``
session runs (:meth:`Pipeline.trace`), so a timeline of the requests through
the stages can be drawn from real runs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxsplit.choices import ENGINES, PLACEMENTS

from onnxsplit.errors import OnnxSplitError, UsageError
from onnxsplit.manifest import load_manifest
from onnxsplit.runtime.sessions import BindingRunner, HostRunner, open_session, to_host
from onnxsplit.runtime.specs import CUDA, StageSpec, assign_cores, stage_specs

if TYPE_CHECKING:
    from onnxsplit.devices import Devices

log = logging.getLogger(__name__)

# Session runs each worker remembers for Pipeline.trace(): enough for a timeline of a few dozen requests
# taken from inside a measured window, even with the requests still in flight at its end.
TRACE_REQUESTS = 256


class StageError(OnnxSplitError):
    """A stage failed on one request; ``stage`` is its index and ``__cause__`` the original error."""

    def __init__(self, stage: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class FeedError(OnnxSplitError):
    """A request's feeds do not match the model's inputs."""


@dataclass(frozen=True)
class StageStats:
    """Counters of one stage worker since the pipeline started; diff two snapshots for a window."""

    index: int
    runs: int
    busy_s: float  # inside session.run
    starved_s: float  # waiting for the previous stage
    blocked_s: float  # waiting for room in the next stage's queue
    other_s: float  # the worker's own Python work: routing, bookkeeping
    cores: tuple[int, ...]  # the cores the worker was pinned to (empty: not pinned)


@dataclass(frozen=True)
class Span:
    """One stage's session run of one request, in ``time.perf_counter()`` seconds.

    ``request`` is the pipeline's submit sequence number (0, 1, 2, ... in the
    order ``submit`` accepted the requests).
    """

    request: int
    stage: int
    start_s: float
    end_s: float


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Request:
    """One inference on its way through the stages (mutable, owned by one worker at a time)."""

    __slots__ = ("future", "env", "outputs", "seq")

    def __init__(self, future: Future, env: dict[str, Any], outputs: dict[str, Any]) -> None:
        self.future = future
        self.env = env
        self.outputs = outputs
        self.seq = -1  # the submit sequence number, set under the submit lock


class _Channel:
    """A bounded FIFO from one thread to the next: ``put`` blocks while ``size`` items wait in it.

    Built from two ``queue.SimpleQueue``s (one of items, one of free slots)
    rather than ``queue.Queue``: SimpleQueue blocks and wakes in C on one
    lock, where Queue goes through Python-level Conditions, and that wake-up
    is most of what a hop between two stages costs.
    """

    __slots__ = ("_items", "_room")

    def __init__(self, size: int) -> None:
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._room: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(size):
            self._room.put(None)

    def put(self, item: Any) -> None:
        self._room.get()
        self._items.put(item)

    def get(self) -> Any:
        item = self._items.get()
        self._room.put(None)
        return item


_STOP = object()  # sent down the queues after the last request: each worker passes it on and exits


class _Worker:
    """One stage: takes requests from ``inbox``, runs them, passes them to ``outbox`` or finishes them."""

    def __init__(self, spec: StageSpec, inbox: _Channel, outbox: _Channel | None, *,
                 cores: tuple[int, ...], output_order: tuple[str, ...], cancelling: threading.Event) -> None:
        self.spec = spec
        self.inbox = inbox
        self.outbox = outbox
        self.cores = cores
        self.output_order = output_order
        self.cancelling = cancelling
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.runs = 0
        # Every moment of the worker's life is in exactly one phase; a snapshot
        # counts the phase under way too, so two snapshots bracket a window exactly.
        self._phase_lock = threading.Lock()
        self._spent = {"busy": 0.0, "starved": 0.0, "blocked": 0.0, "other": 0.0}
        self._phase = ("other", time.perf_counter())
        # (request, start, end) of the latest runs; only this worker appends, and a deque append is atomic
        # under the GIL, so recording takes no lock and readers copy it whole (see Pipeline.trace).
        self.trace: deque[tuple[int, float, float]] = deque(maxlen=TRACE_REQUESTS)
        self.runner: Any = None
        self.thread = threading.Thread(target=self._main, name=f"onnxsplit-stage-{spec.index}", daemon=True)

    def _enter(self, phase: str) -> float:
        """Switch to ``phase``; returns the moment of the switch."""
        now = time.perf_counter()
        with self._phase_lock:
            current, since = self._phase
            self._spent[current] += now - since
            self._phase = (phase, now)
        return now

    def stats(self) -> StageStats:
        with self._phase_lock:
            spent = dict(self._spent)
            current, since = self._phase
            spent[current] += time.perf_counter() - since
            runs = self.runs
        return StageStats(self.spec.index, runs, spent["busy"], spent["starved"], spent["blocked"], spent["other"],
                          self.cores)

    def _main(self) -> None:
        try:
            if self.cores:
                self._pin()
            # Pinned stages own their cores, so spinning between kernels costs nobody else.
            session = open_session(self.spec, spin=bool(self.cores) and self.spec.threads > 1)
            self.runner = (BindingRunner(session, self.spec) if self.spec.provider == CUDA and self.spec.tensors_only
                           else HostRunner(session, self.spec))
        except BaseException as exc:  # reported by Pipeline.__init__, which then stops every worker
            self.error = exc
        finally:
            self.ready.set()
        self._loop()

    def _pin(self) -> None:
        try:
            # pid 0 is the calling thread on Linux; the session's own threads,
            # made after this, inherit the mask.
            os.sched_setaffinity(0, set(self.cores))
        except OSError as exc:  # a container may forbid it; run unpinned rather than not at all
            log.warning("stage %d: could not pin to cores %s (%s)", self.spec.index, self.cores, exc)
            self.cores = ()

    def _loop(self) -> None:
        while True:
            self._enter("starved")
            item = self.inbox.get()
            self._enter("other")
            if item is _STOP:
                if self.outbox is not None:
                    self.outbox.put(_STOP)
                return
            req: _Request = item
            if self.cancelling.is_set() or self.runner is None:
                req.future.cancel()
            elif not req.future.done():  # done here means the caller cancelled it: skip the work
                try:
                    self._handle(req)
                except Exception as exc:  # whatever goes wrong fails this request, never the worker
                    self._enter("other")
                    err = StageError(self.spec.index, f"stage {self.spec.index} ({self.spec.path.name}, "
                                     f"{self.spec.provider}) failed: {_one_line(exc)}")
                    err.__cause__ = exc
                    _finish(req.future, exception=err)

    def _handle(self, req: _Request) -> None:
        # Runs once per request per stage, so it stays lean: names looked up once, one dict built per step.
        spec, env = self.spec, req.env
        feeds = {n: env[n] for n in spec.inputs}
        start = self._enter("busy")
        values = self.runner(feeds)
        # The span is the busy phase itself, so the timeline and the busy fractions agree.
        self.trace.append((req.seq, start, self._enter("other")))
        self.runs += 1
        outputs = req.outputs
        for name in spec.graph_outputs:
            outputs[name] = values[name]
        if self.outbox is None:
            _finish(req.future, result={n: to_host(outputs[n]) for n in self.output_order})
            return
        # Drop what no later stage reads, so big activations are freed as early as possible.
        keep = spec.keep
        env = {n: v for n, v in env.items() if n in keep}
        for name, value in values.items():
            if name in keep:
                env[name] = value
        req.env = env
        self._enter("blocked")
        self.outbox.put(req)


def _copy(ring: deque) -> tuple:
    # tuple() of a deque runs in C without releasing the GIL, so a worker cannot append midway; the retry
    # only matters on an interpreter without a GIL, where the deque may change under the copy.
    while True:
        try:
            return tuple(ring)
        except RuntimeError:
            continue


def _finish(future: Future, *, result: Any = None, exception: BaseException | None = None) -> None:
    future.finished_at = time.perf_counter()  # type: ignore[attr-defined]
    # The caller may cancel a future at any moment; losing that race is not an error.
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class Pipeline:
    """A split folder's stages running as a pipeline, one worker thread per stage.

    ``submit`` blocks while the first stage's queue is full (back-pressure);
    every queue holds at most ``queue_size`` requests. Do not call ``submit``
    or ``close`` from a future's done-callback: callbacks run on a stage
    worker, which would then wait on itself.

    Use as a context manager: leaving the block drains the pipeline, or
    cancels what is left when an exception is on its way out.

    ``engine="ray"`` runs the stages as Ray actors instead, with the same
    API (see :class:`onnxsplit.runtime.ray_engine.RayPipeline`, which
    ``Pipeline(...)`` then returns); ``address``, ``placement`` and
    ``devices`` apply to that engine only.
    """

    # Engines whose stages run elsewhere (Ray) have no in-process workers and record no spans.
    _workers: Sequence[_Worker] = ()

    def __new__(cls, outdir: str | os.PathLike, *, engine: str = "inproc", **options: Any) -> Pipeline:
        if engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if cls is Pipeline and engine == "ray":
            # Imported here: ray is an optional extra, loaded only when asked for.
            from onnxsplit.runtime.ray_engine import RayPipeline

            cls = RayPipeline
        return super().__new__(cls)

    def __init__(self, outdir: str | os.PathLike, *, engine: str = "inproc", queue_size: int = 4, pin: bool = True,
                 address: str | None = None, placement: str = "pack", devices: Devices | None = None) -> None:
        if address is not None or devices is not None or placement != PLACEMENTS[0]:
            raise UsageError("address, placement and devices apply to the Ray engine (engine='ray') only")
        if queue_size < 1:
            raise UsageError(f"queue_size must be at least 1, got {queue_size}")
        self.outdir = Path(outdir)
        self.manifest = load_manifest(self.outdir)
        self.specs = stage_specs(self.manifest)
        self.input_names = self.manifest.input_names
        self.output_names = self.manifest.output_names
        made = {n for s in self.specs for n in s.outputs}
        # A model output that is also a model input passes straight through.
        self._passthrough = tuple(n for n in self.output_names if n not in made and n in self.input_names)
        self.queue_size = queue_size
        self._cancelling = threading.Event()
        self._submit_lock = threading.Lock()
        self._closed = False
        self._submitted = 0
        self._queues = [_Channel(queue_size) for _ in self.specs]
        cores = assign_cores(self.specs, pin=pin)
        self._workers = [
            _Worker(spec, self._queues[k], self._queues[k + 1] if k + 1 < len(self.specs) else None,
                    cores=cores[k], output_order=self.output_names, cancelling=self._cancelling)
            for k, spec in enumerate(self.specs)
        ]
        for w in self._workers:
            w.thread.start()
        for w in self._workers:
            w.ready.wait()
        failed = next((w for w in self._workers if w.error is not None), None)
        if failed is not None:
            self.close(cancel=True)
            if isinstance(failed.error, OnnxSplitError):
                raise failed.error
            raise StageError(failed.spec.index, f"stage {failed.spec.index} ({failed.spec.path.name}) could not be "
                             f"loaded: {_one_line(failed.error)}") from failed.error
        log.info("pipeline of %d stages started (cores %s)", len(self.specs), [w.cores for w in self._workers])

    @property
    def capacity(self) -> int:
        """Requests the pipeline holds before ``submit`` blocks: every queue full, every worker busy."""
        return len(self.specs) * (self.queue_size + 1)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)

    def submit(self, feeds: Mapping[str, Any]) -> Future:
        """Queue one inference; the Future's result maps every model output name to an array.

        Raises FeedError at once when an input is missing or unknown; a stage
        that fails fails only this request's Future, with a StageError. The
        Future carries ``submitted_at`` and, once done, ``finished_at``
        (time.perf_counter() seconds) for latency measurements.
        """
        self._check_feeds(feeds)
        future: Future = Future()
        future.submitted_at = time.perf_counter()  # type: ignore[attr-defined]
        req = _Request(future, {n: feeds[n] for n in self.input_names},
                       {n: feeds[n] for n in self._passthrough})
        with self._submit_lock:
            # Held across put() so that close() never slips its stop marker in
            # ahead of a request that a blocked submitter is still placing.
            if self._closed:
                raise RuntimeError("cannot submit to a closed pipeline")
            req.seq = self._submitted
            self._submitted += 1
            self._queues[0].put(req)
        return future

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One inference, waiting for its result."""
        return self.submit(feeds).result()

    def map(self, feeds: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        """Results in submission order, reading at most ``capacity`` feeds ahead of the caller.

        A failed request (a StageError from a stage, or a FeedError for feeds
        that do not name the model's inputs) raises its error from ``next()``
        when its turn comes, after every result before it, and that ends the
        iteration: the requests read ahead of it are cancelled (any already
        running finish unseen), nothing waits on them, and the pipeline stays
        open for new requests. Closing the iterator early cancels the
        read-ahead the same way. To get past a failure, ``submit`` each
        request and read each Future instead.
        """
        window: deque[Future] = deque()
        source = iter(feeds)
        exhausted = False
        try:
            while True:
                while not exhausted and len(window) < self.capacity:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    window.append(self._submit_or_fail(item))
                if not window:
                    return
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def _submit_or_fail(self, feeds: Mapping[str, Any]) -> Future:
        # A bad feed fails in its own place in the order, after the results before it.
        try:
            return self.submit(feeds)
        except FeedError as exc:
            future: Future = Future()
            future.set_exception(exc)
            return future

    def stats(self) -> tuple[StageStats, ...]:
        return tuple(w.stats() for w in self._workers)

    def trace(self) -> tuple[Span, ...]:
        """The spans of the latest session runs of every stage (at most ``TRACE_REQUESTS`` per stage).

        Sorted by request, then stage. Only runs that returned are recorded
        (a failed run is not). Safe to call while requests are in flight: a
        run finishing meanwhile is either in the copy or not. Empty for
        engines that do not record spans.
        """
        spans = [Span(request, w.spec.index, start, end)
                 for w in self._workers for request, start, end in _copy(w.trace)]
        spans.sort(key=lambda s: (s.request, s.stage))
        return tuple(spans)

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers. By default every submitted request finishes first; with
        ``cancel=True`` requests not yet finished are cancelled (their Futures raise
        CancelledError) and only the runs already under way complete."""
        if threading.current_thread() in {w.thread for w in self._workers}:
            raise RuntimeError("Pipeline.close() called from a stage worker (a done-callback) would deadlock")
        if cancel:
            self._cancelling.set()  # first, so a blocked submitter's put() is unblocked quickly
        with self._submit_lock:
            if not self._closed:
                self._closed = True
                self._queues[0].put(_STOP)
        for w in self._workers:
            w.thread.join()

    def _check_feeds(self, feeds: Mapping[str, Any]) -> None:
        if not isinstance(feeds, Mapping):
            raise FeedError(f"feeds must map input names to arrays, got {type(feeds).__name__}")
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise FeedError(f"missing input {missing[0]!r} (the model's inputs: {list(self.input_names)})")
        extra = sorted(set(feeds) - set(self.input_names))
        if extra:
            raise FeedError(f"{extra[0]!r} is not an input of the model (inputs: {list(self.input_names)})")
