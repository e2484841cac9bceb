"""Measure every original node's time with onnxruntime's own profiler.

onnxruntime rewrites a graph before it runs it: it fuses nodes (Conv+Relu,
MatMul+Add -> Gemm, the Erf chain -> Gelu), folds constants, drops no-ops,
changes layouts (NCHWc) and adds nodes of its own (reorders, casts, copies).
Its profiler times the kernels of that optimized graph; the solver needs
times for the original nodes. The profiling session saves the graph it ran,
and kernels are related to original nodes through tensor names, which
onnxruntime keeps for every original tensor it still computes:

1. A kernel is *anchored* to the original tensors it computes: its outputs
   with original names, the outputs of the original node whose name it
   kept, and, by onnxruntime's naming conventions, the tensor an NCHWc node
   is named after or a float16 tensor it computes in float32.
2. An anchored kernel *covers* the original nodes between its anchors and
   the original tensors that still exist: walking back from its anchors
   through tensors that are gone finds every node it absorbed. A kernel
   reading an input its cover does not need also computed what combines
   that input with its result (a Conv that does the residual Add and Relu).
3. A kernel with no anchor (a reorder, a cast, a copy, the body of an
   inlined function) covers what the nearest anchored kernels downstream
   cover, since its work exists for theirs; upstream if nothing is.

A kernel's time is split over the nodes it covers in proportion to their
estimated FLOPs. Uncovered nodes cost nothing when they were constant
(folded at session build time) and fall back to the analytic estimate
otherwise. Kernels inside an If/Loop/Scan body run within the control-flow
node's own kernel, whose time already includes them.

The profiler's bookkeeping inside each kernel event (a few microseconds,
as much as a small kernel takes) is measured alongside and subtracted; see
:class:`ProfilerOverhead`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from onnxsplit.errors import ModelError, UsageError
from onnxsplit.graphinfo import GraphInfo, graph_info
from onnxsplit.model import Model, node_reads, tensor_nbytes
from onnxsplit.ortutil import dtype_name, make_session, random_feeds
from onnxsplit.profile.estimate import estimate_node_ms, node_flops
from onnxsplit.profile.store import NodeTime, Profile
from onnxsplit.shapes import concrete_types, resolve_input_shapes

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# onnxruntime's InsertCastTransformer computes float16 tensor T in float32 as this prefix + T.
_TENSOR_PREFIXES = ("InsertedPrecisionFreeCast_",)
# The NchwcTransformer names the node that computes tensor T in blocked layout T + "_nchwc".
_NODE_SUFFIXES = ("_nchwc",)
# Graph::GenerateNodeName makes a taken name unique with this suffix.
_UNIQUIFIER = re.compile(r"_token_\d+$")
_KERNEL_EVENT = "_kernel_time"
# Above this many bytes of weights, the plain and the profiling session are not held at once.
ALTERNATE_LIMIT = 1 << 30
# Activations onnxruntime fuses into the kernel before them (Conv, Gemm, NCHWc Conv with a residual Sum).
_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "Elu", "Softplus"})

Progress = Callable[[int, int], None]


def resolve_provider(text: str) -> str:
    """``cpu`` / ``cuda`` / a full execution provider name -> the full name; unknown names are a user error."""
    import onnxruntime as ort

    name = PROVIDER_ALIASES.get(text.lower(), text)
    if name not in ort.get_all_providers():
        available = ", ".join(ort.get_available_providers())
        raise UsageError(f"unknown execution provider {text!r} (available here: {available})")
    return name


# ---------------------------------------------------------------------------------------------
# Attribution: which original nodes each kernel computed


@dataclass(frozen=True)
class Kernel:
    """One node of the graph onnxruntime ran."""

    name: str
    op_type: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


def kernels_of(graph: onnx.GraphProto) -> list[Kernel]:
    return [Kernel(n.name, n.op_type, tuple(node_reads(n)), tuple(o for o in n.output if o)) for n in graph.node]


@dataclass(frozen=True)
class Attribution:
    """``covers[k]``: the original node indices kernel k computed (empty: unknown).

    ``shares[k]`` pairs each with its fraction of the kernel's time (they sum
    to 1). ``folded``: original nodes no kernel covers whose values were
    computed once, when the session was built.
    """

    covers: tuple[frozenset[int], ...]
    shares: tuple[tuple[tuple[int, float], ...], ...]
    folded: frozenset[int]


def _original_tensor(t: str, info: GraphInfo) -> str | None:
    """The original tensor (made by an original node) that optimized tensor ``t`` holds, if known."""
    if t in info.producer:
        return t
    for prefix in _TENSOR_PREFIXES:
        if t.startswith(prefix) and t[len(prefix):] in info.producer:
            return t[len(prefix):]
    return None


def _anchors(kernels: Sequence[Kernel], info: GraphInfo) -> list[set[str]]:
    index = {name: i for i, name in enumerate(info.names)}
    anchors = []
    for k in kernels:
        found = {m for t in k.writes if (m := _original_tensor(t, info)) is not None}
        if k.name in index:
            found.update(info.writes[index[k.name]])
        else:
            base = _UNIQUIFIER.sub("", k.name)
            for suffix in _NODE_SUFFIXES:
                if base.endswith(suffix) and base[: -len(suffix)] in info.producer:
                    found.add(base[: -len(suffix)])
        anchors.append(found)
    return anchors


def _topological(kernels: Sequence[Kernel]) -> list[int]:
    """Kernel indices in dependency order, ties in file order."""
    producer = {t: k for k, kern in enumerate(kernels) for t in kern.writes}
    users: list[list[int]] = [[] for _ in kernels]
    indeg = [0] * len(kernels)
    for k, kern in enumerate(kernels):
        for j in {producer[t] for t in kern.reads if t in producer and producer[t] != k}:
            users[j].append(k)
            indeg[k] += 1
    order = [k for k in range(len(kernels)) if indeg[k] == 0]
    for k in order:  # grows while walked
        for u in users[k]:
            indeg[u] -= 1
            if indeg[u] == 0:
                order.append(u)
    seen = set(order)  # names that form a cycle cannot come from onnxruntime; keep them anyway
    return order + [k for k in range(len(kernels)) if k not in seen]


def _absorbed(start: set[str], info: GraphInfo, present: set[str]) -> set[int]:
    """Original nodes behind tensors ``start``, walking back through tensors not ``present`` in the optimized graph."""
    found: set[int] = set()
    stack = [info.producer[t] for t in start]
    while stack:
        i = stack.pop()
        if i not in found:
            found.add(i)
            # Constant inputs were folded away, not recomputed inside the kernel.
            stack.extend(p for r in info.reads[i] if r not in present
                         and (p := info.producer.get(r)) is not None and p not in info.const)
    return found


def _fused_ahead(kernels: Sequence[Kernel], anchors: list[set[str]], direct: list[set[int] | None], info: GraphInfo,
                 op_types: Sequence[str], present: set[str], order: list[int]) -> list[set[int]]:
    """For each kernel, the original nodes past its anchors that it computed too (see _absorbed_forward).

    Walks the kernels in order, tracking which original tensor each
    optimized tensor holds: its name says so, or the one output of a kernel
    holds that kernel's last computed tensor (in whatever layout), or a
    one-in one-out kernel without an anchor (a reorder, a copy) passes its
    input on.
    """
    meaning = {t: t for t in set(info.inputs) | set(info.initializers)}
    ahead: list[set[int]] = [set() for _ in kernels]
    for k in order:
        kern = kernels[k]
        if direct[k]:
            ahead[k] = _absorbed_forward(kern, direct[k], info, op_types, meaning, present)
        for t in kern.writes:
            m = _original_tensor(t, info)
            if m is None and len(kern.writes) == 1:
                if ahead[k]:
                    # The output is the end of the chain computed ahead: the tensor no absorbed node reads.
                    ends = {w for i in ahead[k] for w in info.writes[i]} - {r for i in ahead[k] for r in info.reads[i]}
                    m = ends.pop() if len(ends) == 1 else None
                elif len(anchors[k]) == 1:
                    m = next(iter(anchors[k]))
                elif not anchors[k]:
                    sources = {meaning[r] for r in kern.reads if r in meaning and r not in info.initializers}
                    m = sources.pop() if len(sources) == 1 else None
            if m is not None:
                meaning[t] = m
    return ahead


def _absorbed_forward(kern: Kernel, cover: set[int], info: GraphInfo, op_types: Sequence[str],
                      meaning: dict[str, str], present: set[str]) -> set[int]:
    """Original nodes after ``cover`` that the kernel computed too (a Conv that also does the residual Add).

    The evidence is an input the kernel reads that its cover does not need:
    a node combining it with the cover's result, whose output is gone from
    the optimized graph, was fused in, and so is an activation after that
    whose output is gone too.
    """
    reads = {meaning[t] for t in kern.reads if t in meaning} - set(info.initializers)
    made = {t for i in cover for t in info.writes[i]}
    extra = reads - made - {r for i in cover for r in info.reads[i]}
    if not extra:
        return set()

    def live(i: int) -> list[str]:
        return [r for r in info.reads[i] if r not in info.initializers and info.producer.get(r) not in info.const]

    def gone(i: int) -> bool:
        return i not in cover and i not in info.const and not any(w in present for w in info.writes[i])

    found = {i for t in extra for i in info.consumers.get(t, ())
             if gone(i) and set(live(i)) <= reads | made and any(r in made for r in live(i))}
    frontier = {w for i in found for w in info.writes[i]}
    while frontier:
        step = {i for t in frontier for i in info.consumers.get(t, ())
                if i not in found and gone(i) and op_types[i] in _ACTIVATIONS and len(live(i)) == 1}
        found |= step
        frontier = {w for i in step for w in info.writes[i]}
    return found


def _spread_unanchored(kernels: Sequence[Kernel], direct: list[set[int] | None], order: list[int]) -> list[set[int]]:
    """Covers for every kernel: a kernel without anchors covers what the nearest anchored kernels after it
    cover (its work exists for theirs), or if none, what the kernels before it cover."""
    producer = {t: k for k, kern in enumerate(kernels) for t in kern.writes}
    users: dict[str, list[int]] = defaultdict(list)
    for k, kern in enumerate(kernels):
        for t in kern.reads:
            users[t].append(k)
    downstream: list[set[int]] = [set() for _ in kernels]
    for k in reversed(order):
        if direct[k] is None:
            for t in kernels[k].writes:
                for u in users.get(t, ()):
                    downstream[k] |= direct[u] if direct[u] is not None else downstream[u]
    covers = [d if d is not None else downstream[k] for k, d in enumerate(direct)]
    for k in order:
        if not covers[k]:
            # Nothing anchored reads it (say, a copy of a graph output): it belongs to what it consumed.
            for t in kernels[k].reads:
                if t in producer:
                    covers[k] |= covers[producer[t]]
    return covers


def attribute(kernels: Sequence[Kernel], info: GraphInfo, op_types: Sequence[str], flops: Sequence[float], *,
              initializers: frozenset[str] = frozenset(), ran: Sequence[bool] | None = None) -> Attribution:
    """Relate the optimized graph's ``kernels`` (``initializers``: its initializer names) to original nodes.

    ``op_types[i]`` and ``flops[i]`` describe original node i; flops weigh it when a kernel's time is split;
    ``ran[k]`` says whether kernel k was timed at all (if not, it covers nothing).
    """
    anchors = _anchors(kernels, info)
    order = _topological(kernels)
    folded_tensors = {m for t in initializers if (m := _original_tensor(t, info)) is not None}
    present = set(info.inputs) | set(info.initializers) | folded_tensors | {t for a in anchors for t in a}
    direct = [_absorbed(a, info, present) if a else None for a in anchors]
    forward = _fused_ahead(kernels, anchors, direct, info, op_types, present, order)
    if any(forward):
        # What a kernel computed ahead of its anchors exists now: later kernels start from it.
        present |= {t for f in forward for i in f for t in info.writes[i]}
        direct = [_absorbed(a, info, present) | f if a else None for a, f in zip(anchors, forward)]
    covers = _spread_unanchored(kernels, direct, order)
    timed = list(ran) if ran is not None else [True] * len(kernels)
    shares = []
    for k, cover in enumerate(covers):
        nodes = sorted(cover) if timed[k] else []
        # A floor keeps nodes of unknown size (0 FLOPs) from vanishing entirely.
        w = [max(float(flops[i]), 1.0) if math.isfinite(flops[i]) else 1.0 for i in nodes]
        total = math.fsum(w)
        shares.append(tuple((i, wi / total) for i, wi in zip(nodes, w)))
    covered = {i for s in shares for i, _ in s}
    folded = {i for i in range(len(info.names)) if i not in covered
              and (i in info.const or any(t in folded_tensors for t in info.writes[i]))}
    return Attribution(covers=tuple(frozenset(c) if timed[k] else frozenset() for k, c in enumerate(covers)),
                       shares=tuple(shares), folded=frozenset(folded))


# ---------------------------------------------------------------------------------------------
# The trace: kernel times per run, less what the profiler itself adds


@dataclass(frozen=True)
class ProfilerOverhead:
    """Microseconds onnxruntime's profiler adds to a kernel, beyond what the kernel costs unprofiled.

    A kernel's event spans formatting every input and output shape into the
    trace (``per_tensor_us`` each) and thread-pool bookkeeping, but not the
    executor's own per-node work, which an unprofiled run pays too. Between
    events the profiler records more (``between_us``); that lands inside a
    control-flow kernel's event for every kernel of its bodies. Tiny kernels
    are all overhead: without this correction a model of many small nodes
    would look twice as slow as it runs.
    """

    per_kernel_us: float
    per_tensor_us: float
    between_us: float = 0.0

    def of(self, tensors: int) -> float:
        """Overhead inside the event of a kernel with this many inputs and outputs."""
        return self.per_kernel_us + self.per_tensor_us * tensors

    def nested(self, tensors: int) -> float:
        """Overhead a body kernel adds inside its control-flow kernel's event."""
        return self.of(tensors) + self.between_us


def binned_median(values: np.ndarray) -> float:
    """The median of durations onnxruntime truncated to whole microseconds (v stands for [v, v + 1)).

    Interpolating inside the median's bin removes the half-microsecond bias
    that truncation would give every one of thousands of small kernels.
    """
    v = np.sort(np.asarray(values, dtype=float))
    m = v[(len(v) - 1) // 2]
    below, at = np.count_nonzero(v < m), np.count_nonzero(v == m)
    return float(m + (len(v) / 2 - below) / at)


def _is_kernel(e: dict) -> bool:
    return e.get("cat") == "Node" and str(e.get("name", "")).endswith(_KERNEL_EVENT)


def _tensors(e: dict) -> int:
    args = e.get("args", {})
    return len(args.get("input_type_shape", ())) + len(args.get("output_type_shape", ()))


def _top_level(events: list[dict], overhead: ProfilerOverhead) -> list[tuple[dict, float]]:
    """Kernel events not nested in another, each with the profiler overhead inside it.

    Kernels of If/Loop/Scan bodies run inside the control-flow kernel, whose
    event already spans them (and their overhead).
    """
    out: list[tuple[dict, float]] = []
    open_end = -math.inf
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        if out and e["ts"] < open_end and e["ts"] + e["dur"] <= open_end:
            parent, extra = out[-1]
            out[-1] = (parent, extra + overhead.nested(_tensors(e)))
            continue
        out.append((e, overhead.of(_tensors(e))))
        open_end = e["ts"] + e["dur"]
    return out


@dataclass(frozen=True)
class KernelTimes:
    """Per measured run r and kernel k: microseconds of its events (``raw``), the profiler overhead inside
    them (``overhead``) and how many events there were (``events``).

    The last column is for events no kernel of the graph claims.
    """

    raw: np.ndarray
    overhead: np.ndarray
    events: np.ndarray

    def ran(self) -> list[bool]:
        """Whether each kernel (not the last column) was timed at all."""
        return list(self.events[:, :-1].sum(axis=0) > 0)

    def ms(self) -> np.ndarray:
        """Each column's time per inference in ms: binned median across runs, less the profiler's overhead."""
        est = []
        for c in range(self.raw.shape[1]):
            # A column with events in at most half the runs (stray unmatched events) has median 0.
            if np.count_nonzero(self.events[:, c]) * 2 <= len(self.events):
                est.append(0.0)
            else:
                est.append(max(binned_median(self.raw[:, c]) - float(np.median(self.overhead[:, c])), 0.0))
        return np.array(est) / 1000.0


def kernel_times(trace: list[dict], kernels: Sequence[Kernel], runs: int, overhead: ProfilerOverhead) -> KernelTimes:
    """Kernel times of the last ``runs`` model runs in an onnxruntime trace (earlier runs warm up).

    Events match kernels by name; onnxruntime names an unnamed node's events
    OpType_Index, so those match the unnamed kernels of that op in order.
    """
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace
                   if e.get("cat") == "Session" and e.get("name") == "model_run")[-runs:]
    if len(spans) < runs:
        raise RuntimeError(f"the trace holds {len(spans)} model runs, expected {runs}")
    starts = [s for s, _ in spans]
    by_name: dict[str, int] = {}
    unnamed: dict[str, list[int]] = defaultdict(list)
    for k, kern in enumerate(kernels):
        if kern.name:
            by_name.setdefault(kern.name, k)
        else:
            unnamed[kern.op_type].append(k)
    m = len(kernels)
    raw, over, count = np.zeros((runs, m + 1)), np.zeros((runs, m + 1)), np.zeros((runs, m + 1), dtype=int)
    anonymous: list[dict[str, list[tuple[float, float]]]] = [defaultdict(list) for _ in range(runs)]
    for e, extra in _top_level([e for e in trace if _is_kernel(e)], overhead):
        r = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if r < 0 or e["ts"] > spans[r][1]:
            continue  # a warm-up run
        k = by_name.get(e["name"][: -len(_KERNEL_EVENT)])
        if k is None:
            anonymous[r][str(e.get("args", {}).get("op_name", ""))].append((e["dur"], extra))
        else:
            raw[r, k] += e["dur"]
            over[r, k] += extra
            count[r, k] += 1
    for r, groups in enumerate(anonymous):
        for op, events in groups.items():
            ks = unnamed.get(op, [])
            targets = ks if len(ks) == len(events) else [m] * len(events)
            for k, (dur, extra) in zip(targets, events):
                raw[r, k] += dur
                over[r, k] += extra
                count[r, k] += 1
    return KernelTimes(raw=raw, overhead=over, events=count)


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


def _input_feeds(model: Model, shapes: dict[str, tuple[int, ...]], feeds: dict | None) -> dict[str, np.ndarray]:
    if feeds is None:
        specs = [(i.name, dtype_name(i.type.tensor_type.elem_type), shapes[i.name]) for i in model.inputs]
        return random_feeds(specs)
    for name, shape in shapes.items():
        if name not in feeds:
            raise UsageError(f"the inputs have no array for model input {name!r}")
        if tuple(feeds[name].shape) != tuple(shape):
            raise UsageError(f"input {name!r} has shape {'x'.join(map(str, feeds[name].shape))}, "
                             f"expected {'x'.join(map(str, shape))}")
    return {name: feeds[name] for name in shapes}


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
    import onnxruntime as ort

    folder.mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(folder / "trace")
    if external_folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
    if save_graph:
        opts.optimized_model_filepath = str(folder / "optimized.onnx")
        # Weights go to a side file: only the graph is read back, and big models stay under 2 GB.
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
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


@contextlib.contextmanager
def _ort_errors(model: Model):
    """onnxruntime refusing to load or run the model is a problem with the model or its inputs: one line."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{model.path.name}: onnxruntime cannot run the model ({first})") from None


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

    Raises UsageError for an unknown or unavailable provider, bad counts or bad feeds.
    """
    import onnxruntime as ort

    if runs < 1 or warmup < 0 or threads < 1:
        raise UsageError(f"need runs >= 1, warmup >= 0 and threads >= 1 (got {runs}, {warmup}, {threads})")
    provider = resolve_provider(provider)
    options = dict(provider_options or {})
    shapes = resolve_input_shapes(model, input_shapes)
    inputs = _input_feeds(model, shapes, feeds)
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
    with tempfile.TemporaryDirectory(prefix="onnxsplit-profile-") as tmp, _ort_errors(model):
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
