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

A decoder's caches stay on their stage. A request of a sequence (see
:mod:`onnxsplit.runtime.generation`) carries the sequence's id and a kind:
``start`` feeds the stage's state inputs from the request (empty caches),
``step`` from the stage's own store, and both store the stage's state
outputs as the sequence's next state instead of sending them on; ``end``
runs nothing and drops the sequence's state on every stage. The queues are
FIFO, so the steps of one sequence reach every stage in order while the
steps of different sequences overlap across the stages.

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
from onnxsplit.decoding import greedy
from onnxsplit.errors import OnnxSplitError, UsageError
from onnxsplit.manifest import load_manifest
from onnxsplit.runtime.sessions import BindingRunner, HostRunner, open_session, to_host
from onnxsplit.runtime.specs import CUDA, StageSpec, assign_cores, stage_specs

if TYPE_CHECKING:
    from onnxsplit.decoding import DecoderSignature, Generation
    from onnxsplit.devices import Devices
    from onnxsplit.runtime import generation

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
    sent_bytes: int = 0  # tensor bytes passed to the next stage while counting (Pipeline.count_bytes)
    sequences: int = 0  # sequences whose state this stage holds now
    state_bytes: int = 0  # the bytes of that state


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


# The kinds of a sequence's requests.
START, STEP, END = "start", "step", "end"


class SequenceStateError(OnnxSplitError):
    """A step of a sequence whose state a stage does not hold (the sequence ended, or failed before)."""


class _Request:
    """One inference on its way through the stages (mutable, owned by one worker at a time)."""

    __slots__ = ("future", "env", "outputs", "seq", "sequence", "kind", "pick")

    def __init__(self, future: Future, env: dict[str, Any], outputs: dict[str, Any], *,
                 sequence: int | None = None, kind: str = STEP, pick: str | None = None) -> None:
        self.future = future
        self.env = env
        self.outputs = outputs
        self.seq = -1  # the submit sequence number, set under the submit lock
        self.sequence = sequence  # the id of the sequence it is a step of; None for a stateless request
        self.kind = kind  # START, STEP or END (sequences only)
        self.pick = pick  # the output that is the result (sequences only)


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
        # Sequence id -> this stage's state of that sequence (state input name -> value). Only this worker
        # touches it, except readers that copy it whole (see stats()).
        self.store: dict[int, dict[str, Any]] = {}
        state_inputs = {i for i, _ in spec.state}
        self.plain_inputs = tuple(n for n in spec.inputs if n not in state_inputs)
        self.state_outputs = frozenset(o for _, o in spec.state)
        self.result_outputs = tuple(n for n in spec.graph_outputs if n not in self.state_outputs)
        self.count_bytes = False  # set by Pipeline.count_bytes; off, the stateless path pays one test
        self.sent_bytes = 0
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
        held = _copy_values(self.store)
        return StageStats(self.spec.index, runs, spent["busy"], spent["starved"], spent["blocked"], spent["other"],
                          self.cores, self.sent_bytes, len(held), sum(_nbytes(state) for state in held))

    def _main(self) -> None:
        try:
            if self.cores:
                self._pin()
            # Pinned stages own their cores, so spinning between kernels costs nobody else.
            session = open_session(self.spec, spin=bool(self.cores) and self.spec.threads > 1)
            self.runner = make_runner(session, self.spec)
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
            if req.sequence is not None and (req.kind == END or req.future.done() or self.cancelling.is_set()
                                             or self.runner is None):
                # A sequence's state here is no longer in step with the other stages' (a step skipped), or no
                # longer wanted: drop it, so a later step fails instead of computing on a stale cache.
                self.store.pop(req.sequence, None)
                if req.kind == END:
                    self._pass_on(req, None)
                    continue
            if self.cancelling.is_set() or self.runner is None:
                req.future.cancel()
            elif not req.future.done():  # done here means the caller cancelled it: skip the work
                try:
                    if req.sequence is None:
                        self._handle(req)
                    else:
                        self._handle_step(req)
                except Exception as exc:  # whatever goes wrong fails this request, never the worker
                    self._enter("other")
                    if req.sequence is not None:
                        self.store.pop(req.sequence, None)
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
        if self.count_bytes:
            self.sent_bytes += _nbytes(env) + _nbytes(outputs)
        self._enter("blocked")
        self.outbox.put(req)

    def _handle_step(self, req: _Request) -> None:
        """One step of a sequence: the state inputs come from the store (from the request at its start),
        the state outputs go back to the store, and everything else is routed as :meth:`_handle` does."""
        spec, env = self.spec, req.env
        if req.kind == START:
            state = {i: env[i] for i, _ in spec.state}
        else:
            held = self.store.get(req.sequence)
            if held is None and spec.state:
                raise SequenceStateError(f"sequence {req.sequence} has no state on this stage (it ended, or an "
                                         "earlier step of it failed)")
            state = held or {}
        feeds = {n: env[n] for n in self.plain_inputs}
        feeds.update(state)
        start = self._enter("busy")
        values = self.runner(feeds)
        self.trace.append((req.seq, start, self._enter("other")))
        self.runs += 1
        if spec.state:
            self.store[req.sequence] = {i: values[o] for i, o in spec.state}
        outputs = req.outputs
        for name in self.result_outputs:
            outputs[name] = values[name]
        keep = spec.keep
        env = {n: v for n, v in env.items() if n in keep}
        for name, value in values.items():
            if name in keep and name not in self.state_outputs:
                env[name] = value
        req.env = env
        self._pass_on(req, to_host(outputs[req.pick]) if self.outbox is None else None)

    def _pass_on(self, req: _Request, result: Any) -> None:
        """Send a sequence's request to the next stage, or finish it with ``result`` at the last."""
        if self.outbox is None:
            _finish(req.future, result=result)
            return
        if self.count_bytes:
            self.sent_bytes += _nbytes(req.env) + _nbytes(req.outputs)
        self._enter("blocked")
        self.outbox.put(req)


def make_runner(session: Any, spec: StageSpec) -> Any:
    """How a worker runs its session: IO binding on a CUDA stage (hand-offs and state stay on the GPU),
    numpy in and out elsewhere."""
    if spec.provider == CUDA and spec.tensors_only:
        return BindingRunner(session, spec)
    return HostRunner(session, spec)


def _nbytes(values: Mapping[str, Any]) -> int:
    """The bytes of the tensors in ``values`` (numpy arrays or OrtValues; other values count 0)."""
    total = 0
    for value in values.values():
        size = getattr(value, "nbytes", None)
        if size is None and hasattr(value, "element_type"):  # an OrtValue, left on a GPU by a CUDA stage
            from onnxsplit.valuetypes import dtype_name  # loads onnx: only CUDA stages get here

            size = int(np.prod(value.shape())) * np.dtype(dtype_name(value.element_type())).itemsize
        total += int(size or 0)
    return total


def _copy_values(store: dict) -> list:
    # As _copy: list() of a dict's values runs in C, so the worker cannot change the dict midway under a GIL.
    while True:
        try:
            return list(store.values())
        except RuntimeError:
            continue


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
        self._sequences = 0
        self._signature: DecoderSignature | None = None
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

    def _submit_step(self, env: dict[str, Any], *, sequence: int, kind: str, pick: str | None) -> Future:
        """Queue one request of a sequence (see :class:`onnxsplit.runtime.generation.Sequence`).

        ``env`` holds the non-state feeds (and, at the start, the empty
        state); the Future's result is the output ``pick`` (None for END).
        """
        future: Future = Future()
        future.submitted_at = time.perf_counter()  # type: ignore[attr-defined]
        req = _Request(future, env, {}, sequence=sequence, kind=kind, pick=pick)
        with self._submit_lock:
            if self._closed:
                raise RuntimeError("cannot submit to a closed pipeline")
            req.seq = self._submitted
            self._submitted += 1
            self._queues[0].put(req)
        return future

    @property
    def decoder(self) -> DecoderSignature:
        """The split model as a decoder: which inputs and outputs a step feeds and reads.

        Raises UsageError when the manifest records no state pairs, or the
        model is not a decoder (see :func:`onnxsplit.decoding.decoder_signature`).
        """
        if self._signature is None:
            from onnxsplit.decoding import decoder_signature
            from onnxsplit.state import StatePair

            if not self.manifest.state:
                raise UsageError(f"{self.outdir}: the split keeps no state (its manifest has no state pairs); "
                                 "generation needs a decoder split with its state pairs")
            self._signature = decoder_signature(self.manifest.inputs, self.manifest.outputs,
                                                [StatePair(p.input, p.output) for p in self.manifest.state])
        return self._signature

    def start_sequence(self, prompt_ids: Any, *, max_seq_len: int | None = None) -> generation.Sequence:
        """Start a sequence: submits the prefill of ``prompt_ids`` [batch, prompt] and returns at once.

        Each stage keeps the sequence's caches until :meth:`Sequence.end`.
        ``max_seq_len``: the most positions a cache may hold (None: no
        limit); a step beyond it raises SequenceError. Raises UsageError for
        a split without state, or an engine that cannot keep it (Ray).
        """
        from onnxsplit.runtime.generation import Sequence

        if not self._workers:
            raise UsageError("generation keeps state on the stages of the in-process engine only")
        signature = self.decoder
        with self._submit_lock:
            sequence_id = self._sequences
            self._sequences += 1
        return Sequence(self, signature, sequence_id, prompt_ids, max_seq_len=max_seq_len)

    def generate(self, prompt_ids: Any, max_new_tokens: int, *, max_seq_len: int | None = None,
                 choose: generation.Chooser = greedy) -> Generation:
        """Greedy generation (or ``choose``'s) after the prompt; see :func:`onnxsplit.runtime.generation.generate`."""
        from onnxsplit.runtime.generation import generate

        return generate(self, prompt_ids, max_new_tokens, max_seq_len=max_seq_len, choose=choose)

    def generate_many(self, prompts: Sequence[Any], max_new_tokens: int, *, max_seq_len: int | None = None,
                      concurrent: int = 64, choose: generation.Chooser = greedy) -> list[Future]:
        """Many sequences interleaved: see :func:`onnxsplit.runtime.generation.generate_many`."""
        from onnxsplit.runtime.generation import generate_many

        return generate_many(self, prompts, max_new_tokens, max_seq_len=max_seq_len, concurrent=concurrent,
                             choose=choose)

    def count_bytes(self, on: bool = True) -> None:
        """Count the tensor bytes each stage passes to the next (``StageStats.sent_bytes``); off by default,
        as it costs a little on every request. Engines without in-process workers count nothing."""
        for w in self._workers:
            w.count_bytes = on

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
