"""Parse onnxruntime's profiling trace: kernel times per run, less what the profiler itself adds.

The profiler's bookkeeping inside each kernel event (a few microseconds,
as much as a small kernel takes) is measured alongside the model's runs
(see :class:`onnxsplit.profile.measure.OverheadProbe`) and subtracted; see
:class:`ProfilerOverhead`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnxsplit.profile.attribute import Kernel

_KERNEL_EVENT = "_kernel_time"


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
