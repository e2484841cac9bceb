"""Measure every original node's time with onnxruntime's own profiler.

:func:`profile_model` times the model in a plain session (whole-model
latency) and in a profiling session that saves the graph it ran, with runs
of an :class:`OverheadProbe` interleaved. The trace gives each kernel's
time (:mod:`onnxsplit.profile.trace`), and the kernels are related to the
original nodes they computed (:mod:`onnxsplit.profile.attribute`). A
kernel's time is split over the nodes it covers in proportion to their
estimated FLOPs. Uncovered nodes cost nothing when they were constant
(folded at session build time) and fall back to the analytic estimate
otherwise. Kernels inside an If/Loop/Scan body run within the control-flow
node's own kernel, whose time already includes them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from onnxsplit.errors import UsageError
from onnxsplit.graphinfo import GraphInfo, graph_info
from onnxsplit.model import Model, tensor_nbytes
from onnxsplit.feeds import model_feeds
from onnxsplit.orterrors import ort_errors
from onnxsplit.ortutil import QUIET, check_provider_options, make_session, onnxruntime, session_options
from onnxsplit.profile.attribute import Attribution, Kernel, attribute, kernels_of
from onnxsplit.profile.estimate import estimate_node_ms, node_flops
from onnxsplit.profile.store import NodeTime, Profile
from onnxsplit.profile.trace import _KERNEL_EVENT, ProfilerOverhead, _is_kernel, binned_median, kernel_times
from onnxsplit.providers import resolve_provider
from onnxsplit.shapes import concrete_types, resolve_input_shapes

log = logging.getLogger(__name__)

# Above this many bytes of weights, the plain and the profiling session are not held at once.
ALTERNATE_LIMIT = 1 << 30

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# The overhead probe: the profiler's own cost, measured alongside the model's runs


# Ops for calibration chains: varied, so that the profiler's code runs as cold as it does between a
# model's different kernels, and cheap on one element, so that their events are nearly all overhead.
_UNARY_OPS = ("Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Floor", "Ceil", "Sqrt")
_VARIADIC_OPS = ("Sum", "Max", "Min", "Mean")


def _chain_model(length: int, inputs: int) -> bytes:
    """``length`` kernels in a chain on a one-element tensor, each reading ``inputs`` tensors."""
    ops = _UNARY_OPS if inputs == 1 else _VARIADIC_OPS
    nodes, prev = [], "x"
    for i in range(length):
        op = ops[i % len(ops)]
        nodes.append(onnx.helper.make_node(op, [prev] + ["x"] * (inputs - 1), [f"t{i}"], name=f"k{i}"))
        prev = f"t{i}"
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(nodes, "calibration", [vi("x", onnx.TensorProto.FLOAT, [1])],
                                   [vi(prev, onnx.TensorProto.FLOAT, [1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


class OverheadProbe:
    """Measures the profiler's overhead (a ProfilerOverhead) alongside a model's runs.

    Each step runs, once each, chains of near-empty kernels: one node and
    many, without profiling, and many with it. The profiled event's length
    less the unprofiled cost per kernel (the slope between the chains) is
    the overhead inside an event. The steps interleave with the model's
    runs because the overhead drifts with the machine's state (clock,
    caches, other processes), and a calibration taken a minute earlier is
    off by more than the kernels it corrects.
    """

    LENGTH = 48
    MIN_STEPS = 30

    def __init__(self, folder: Path, *, provider: str, options: dict[str, str], threads: int) -> None:
        self._feeds = {"x": np.full([1], 0.5, dtype=np.float32)}
        self._chains = {}
        for inputs in (1, 4):  # 2 and 5 tensors per kernel give the cost per tensor
            plain = [make_session(_chain_model(n, inputs), provider=provider, provider_options=options,
                                  threads=threads) for n in (1, self.LENGTH)]
            profiled = _session(_chain_model(self.LENGTH, inputs), folder / f"calibration{inputs}", provider=provider,
                                provider_options=options, threads=threads)
            self._chains[inputs] = (plain, profiled, ([], []))
        self.steps = 0

    def step(self) -> None:
        for plain, profiled, times in self._chains.values():
            for session, out in zip(plain, times):
                out += _timed_runs(session, self._feeds, warmup=0, runs=1)
            _timed_runs(profiled, self._feeds, warmup=0, runs=1)
        self.steps += 1

    def result(self) -> ProfilerOverhead:
        while self.steps < self.MIN_STEPS:
            self.step()
        inside, between = {}, []
        skip = self.steps // 5  # the first steps warm up
        for inputs, (plain, profiled, (short, long)) in self._chains.items():
            slope_us = (float(np.median(long[skip:])) - float(np.median(short[skip:]))) * 1000.0 / (self.LENGTH - 1)
            with open(profiled.end_profiling(), encoding="utf-8") as f:
                events = [e for e in json.load(f) if _is_kernel(e)][skip * self.LENGTH:]
            in_event = binned_median(np.array([e["dur"] for e in events]))
            inside[inputs + 1] = in_event - slope_us
            # Start to start, one kernel after the next within a run: the event and what lies between events.
            strides = [(events[r + self.LENGTH - 1]["ts"] - events[r]["ts"]) / (self.LENGTH - 1)
                       for r in range(0, len(events) - self.LENGTH + 1, self.LENGTH)]
            between.append(max(float(np.median(strides)) - in_event, 0.0))
        per_tensor = max((inside[5] - inside[2]) / 3.0, 0.0)
        overhead = ProfilerOverhead(per_kernel_us=max(inside[2] - 2 * per_tensor, 0.0), per_tensor_us=per_tensor,
                                    between_us=float(np.median(between)))
        log.info("profiler overhead: %.2f us per kernel + %.2f us per tensor, %.2f us between kernels",
                 overhead.per_kernel_us, overhead.per_tensor_us, overhead.between_us)
        return overhead


# ---------------------------------------------------------------------------------------------
# Sessions and the profile


def _no_tick() -> None:
    pass


def _timed_runs(session, feeds: dict, *, warmup: int, runs: int, tick: Callable[[], None] = _no_tick) -> list[float]:
    """Milliseconds of each of ``runs`` runs after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        session.run(None, feeds)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
        tick()
    return times


def _session(model: bytes, folder: Path, *, provider: str, provider_options: dict[str, str], threads: int,
             external_folder: Path | None = None, save_graph: bool = False):
    """A profiling session writing its trace (and, with ``save_graph``, the graph it runs) into ``folder``."""
    ort = onnxruntime()
    folder.mkdir(parents=True, exist_ok=True)
    opts = session_options(threads=threads, external_folder=external_folder, profile_prefix=folder / "trace",
                           optimized_model=folder / "optimized.onnx" if save_graph else None, log_severity=QUIET)
    return ort.InferenceSession(model, sess_options=opts, providers=[provider], provider_options=[provider_options])


def _profiled(model: Model, folder: Path, **session_args):
    """A profiling session, and the kernels and initializer names of the graph it runs (None if not saved)."""
    data = model.proto.SerializeToString()
    try:
        session = _session(data, folder, external_folder=model.base_dir, save_graph=True, **session_args)
        graph = onnx.load(str(folder / "optimized.onnx"), load_external_data=False).graph
        return session, kernels_of(graph), frozenset(t.name for t in graph.initializer)
    except Exception as exc:  # an execution provider that compiles nodes cannot save its graph
        log.warning("onnxruntime could not save the optimized graph (%s); matching kernels by name only",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return _session(data, folder, external_folder=model.base_dir, **session_args), None, frozenset()


def _node_times(model: Model, info: GraphInfo, types: dict, attribution: Attribution,
                kernel_ms: np.ndarray) -> tuple[list[NodeTime], float]:
    """Original node times from kernel times (last entry: unmatched events) and the unattributed rest."""
    graph_nodes = list(model.graph.node)
    per_node = np.zeros(len(graph_nodes))
    unattributed = float(kernel_ms[-1])
    covering: dict[int, list[frozenset[int]]] = defaultdict(list)
    for k, shares in enumerate(attribution.shares):
        if not shares:
            unattributed += float(kernel_ms[k])
        for i, frac in shares:
            per_node[i] += kernel_ms[k] * frac
            covering[i].append(attribution.covers[k])
    nodes = []
    for i, node in enumerate(graph_nodes):
        if covering[i]:
            together = frozenset().union(*covering[i]) - {i}
            nodes.append(NodeTime(node.name, node.op_type, float(per_node[i]), "fused" if together else "measured",
                                  tuple(info.names[j] for j in sorted(together))))
        elif i in attribution.folded:
            nodes.append(NodeTime(node.name, node.op_type, 0.0, "folded"))
        else:
            nodes.append(NodeTime(node.name, node.op_type, estimate_node_ms(node, types), "estimated"))
    return nodes, unattributed


def _warn_if_busy() -> None:
    """Other processes competing for cores skew a whole run's latency more than the kernels' medians."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return
    cores = os.cpu_count() or 1
    if load > cores:
        log.warning("the machine was busy while profiling (load %.1f on %d cores): timings may be disturbed",
                    load, cores)


def profile_model(model: Model, *, input_shapes: dict[str, tuple[int, ...]],
                  provider: str = "CPUExecutionProvider", provider_options: dict[str, str] | None = None,
                  threads: int = 1, runs: int = 20, warmup: int = 5, feeds: dict | None = None,
                  progress: Progress | None = None) -> Profile:
    """Measure ``model`` at ``input_shapes`` and attribute kernel time to its original nodes.

    ``feeds``: the user's input arrays (checked against the model and the
    shapes), else seeded random ones. Raises UsageError for an unknown or
    unavailable provider, an option it does not know, bad counts or bad
    feeds; ModelError (one line naming the node) when onnxruntime cannot
    load or run the model.
    """
    ort = onnxruntime()
    counts = {"runs": (runs, 1), "warmup": (warmup, 0), "threads": (threads, 1)}
    if any(isinstance(v, bool) or not isinstance(v, int) or v < low for v, low in counts.values()):
        raise UsageError(f"need runs >= 1, warmup >= 0 and threads >= 1 (got {runs}, {warmup}, {threads})")
    provider = resolve_provider(provider)
    options = dict(provider_options or {})
    check_provider_options(provider, options)
    shapes = resolve_input_shapes(model, input_shapes)
    inputs = model_feeds(model, shapes, feeds=feeds)
    total, done = 2 * (warmup + runs), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    # Whole-model latency comes from a session without profiling (make_session checks the provider is
    # installed). Its runs alternate with the profiled session's, so that both see the same machine:
    # another process taking a core for a while slows both alike. A model whose weights would not fit
    # twice in memory is timed by one session after the other instead.
    alternate = sum(tensor_nbytes(t) for t in model.graph.initializer) < ALTERNATE_LIMIT
    with tempfile.TemporaryDirectory(prefix="onnxsplit-profile-") as tmp, ort_errors(model.path.name, model=model.proto):
        latencies = []
        plain = make_session(model.proto.SerializeToString(), provider=provider, provider_options=options,
                             threads=threads, external_folder=model.base_dir)
        if not alternate:
            latencies = _timed_runs(plain, inputs, warmup=warmup, runs=runs, tick=tick)
            del plain
        session, kernels, initializers = _profiled(model, Path(tmp), provider=provider, provider_options=options,
                                                   threads=threads)
        probe = OverheadProbe(Path(tmp), provider=provider, options=options, threads=threads)
        for i in range(warmup + runs):
            if alternate:
                latency = _timed_runs(plain, inputs, warmup=0, runs=1, tick=tick)
                if i >= warmup:
                    latencies += latency
            _timed_runs(session, inputs, warmup=0, runs=1, tick=tick)
            probe.step()
        with open(session.end_profiling(), encoding="utf-8") as f:
            trace = json.load(f)
        overhead = probe.result()
        del session, probe
        if alternate:
            del plain
    end_to_end = float(np.median(latencies))
    _warn_if_busy()
    if kernels is None:
        kernels = [Kernel(name[: -len(_KERNEL_EVENT)], "") for name in dict.fromkeys(
            e["name"] for e in trace if _is_kernel(e))]
    times = kernel_times(trace, kernels, runs, overhead)
    kernel_ms = times.ms()
    info = graph_info(model)
    types = concrete_types(model, shapes)
    flops = [node_flops(n, types) for n in model.graph.node]
    attribution = attribute(kernels, info, [n.op_type for n in model.graph.node], flops, initializers=initializers,
                            ran=times.ran())
    nodes, unattributed = _node_times(model, info, types, attribution, kernel_ms)
    measured = float(kernel_ms.sum())
    if measured < 0.5 * end_to_end:
        # Kernels that only launch asynchronous work (a GPU provider), or a model so small that
        # the per-run overhead outside kernels dominates.
        log.warning("kernels account for only %.0f%% of the end-to-end latency (%.3f of %.3f ms)",
                    100 * measured / end_to_end, measured, end_to_end)
    return Profile(model_sha256=model.sha256, input_shapes=shapes, provider=provider, provider_options=options,
                   threads=threads, ort_version=ort.__version__, runs=runs, warmup=warmup, end_to_end_ms=end_to_end,
                   nodes=tuple(nodes), unattributed_ms=unattributed)
