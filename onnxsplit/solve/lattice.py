"""The ideal lattice behind :mod:`onnxsplit.solve.dp`: the problem as arrays, and its ideals.

Public interface, in the order a run uses it:

* :class:`Problem` -- a (coarse) cost graph and the device kinds that exist, as arrays;
* :func:`enumerate_ideals` -- every ideal as a little-endian uint64 bitset row
  (:func:`pack_bits` / :func:`unpack_bits` convert to and from boolean rows);
* :func:`onnxsplit.solve.pairs.score_pairs` -- the (ideal, sub-ideal) pairs whose load fits a bound;
* :func:`onnxsplit.solve.chain.solve_lattice` -- the best chain of ideals whose every load is within
  a bound;
* :class:`DPTooLarge` / :class:`DPTimeout`, raised when a run would exceed its
  limits, and :func:`report_progress` for the optional progress callback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import OnnxSplitError

if TYPE_CHECKING:
    from onnxsplit.solve.plan import Plan

Progress = Callable[[str, float], None]

# Ideals per chunk when building per-ideal rows, and the most memory those rows may take.
CHUNK = 8192
MAX_ROW_BYTES = 2 * 2**30
# The most memory the bitsets of all ideals may take (a deep graph's rows are wide).
MAX_IDEAL_BYTES = 256 * 2**20


class DPTooLarge(OnnxSplitError):
    """The DP would need too many ideals, pairs or memory; fall back to another solver.

    What the run proved before it gave up travels with it, so a fallback
    starts from there: ``lower_bound`` is a max load no contiguous plan can go
    below (0.0 when nothing was proven) and ``plan`` the best contiguous plan
    it saw on the caller's graph (None when it saw none).
    """

    def __init__(self, message: str, *, lower_bound: float = 0.0, plan: Plan | None = None) -> None:
        super().__init__(message)
        self.lower_bound = lower_bound
        self.plan = plan


class DPTimeout(DPTooLarge):
    """The DP ran out of its time limit."""


@dataclass(frozen=True)
class KindArrays:
    name: str
    count: int
    memory: float
    communicates: bool
    compute: np.ndarray  # per coarse node, inf replaced by 0
    banned: np.ndarray  # 1.0 where the node cannot run on this kind


class Problem:
    """The coarse graph as arrays, and the device kinds that exist.

    Before: node ids of ``graph`` are a topological order of ``precedence``
    (by default the graph's own edges) and every device kind with a device
    has compute times in it. ``kinds`` lists only kinds with at least one
    device, in the order of ``devices.kinds``; ``words`` is the number of
    uint64 words of an ideal's bitset.

    Tensors come in two sorts. A *forward* tensor's readers are all direct
    successors of its producer in the precedence (every tensor of an
    inference graph): ``prod``, ``cost``, ``fanout`` and ``readers``. Any
    other tensor (a training graph's backward tensors) is priced by
    membership only: ``gcost``, ``gsize`` (its number of endpoints, producer
    and readers) and ``gends`` (slot j lists (tensor, its j-th endpoint)).
    """

    def __init__(self, graph: CostGraph, devices: Devices, *,
                 precedence: Sequence[tuple[int, int]] | None = None) -> None:
        n = graph.n
        self.n = n
        self.words = max(1, (n + 63) // 64)
        self.kinds: list[KindArrays] = []
        for kind in devices.kinds:
            if kind.count <= 0:
                continue
            if kind.name not in graph.compute:
                raise ValueError(f"the cost graph has no compute times for device kind {kind.name!r}")
            # Windows and pruning rely on sums growing with the set: CostGraph guarantees
            # non-negative, non-NaN times, memory and costs.
            c = np.asarray(graph.compute[kind.name], dtype=np.float64)
            banned = np.isinf(c)
            self.kinds.append(
                KindArrays(kind.name, kind.count, kind.memory, kind.communicates, np.where(banned, 0.0, c), banned.astype(np.float64))
            )
        self.memory = np.asarray(graph.memory, dtype=np.float64)
        # Cheapest compute over kinds: a lower bound on any device's load, used to window candidates.
        cheapest = np.min([np.where(k.banned > 0, np.inf, k.compute) for k in self.kinds], axis=0)
        # A node no kind can run is refused before solving; 0 keeps the sums finite meanwhile.
        self.cheapest = np.where(np.isinf(cheapest), 0.0, cheapest)
        edges = graph.edges() if precedence is None else sorted(set(precedence))
        priced = [t for t in graph.tensors if t.cost > 0 and t.consumers]
        if precedence is None:
            tensors, general = priced, []
        else:
            direct = set(edges)
            tensors = [t for t in priced if all((t.producer, c) in direct for c in t.consumers)]
            general = [t for t in priced if not all((t.producer, c) in direct for c in t.consumers)]
        self.prod = np.array([t.producer for t in tensors], dtype=np.int64)
        self.cost = np.array([t.cost for t in tensors], dtype=np.float64)
        self.fanout = np.array([len(t.consumers) for t in tensors], dtype=np.int64)
        # Readers by slot: slot j lists (tensor, its j-th consumer) for tensors with more than j.
        self.readers = _slots([t.consumers for t in tensors])
        ends = [(t.producer, *t.consumers) for t in general]
        self.gcost = np.array([t.cost for t in general], dtype=np.float64)
        self.gsize = np.array([len(e) for e in ends], dtype=np.int64)
        self.gends = _slots(ends)
        # Per node, (word, bits) of its predecessors, for growing ideals.
        preds: list[set[int]] = [set() for _ in range(n)]
        for u, v in edges:
            if not u < v:
                raise ValueError(f"precedence edge {u}->{v} goes against the node order")
            preds[v].add(u)
        self.pred_masks: list[list[tuple[int, np.uint64]]] = []
        for pred in preds:
            words: dict[int, int] = {}
            for u in pred:
                words[u >> 6] = words.get(u >> 6, 0) | 1 << (u & 63)
            self.pred_masks.append([(w, np.uint64(m)) for w, m in sorted(words.items())])

    @property
    def columns(self) -> int:
        """Rows of the communication matrices: one per (forward tensor, reader) and per (other tensor, endpoint)."""
        return int(self.fanout.sum() + self.gsize.sum())


def _slots(lists: Sequence[Sequence[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Slot j: (indices of the lists longer than j, their j-th entries).

    One pass over the entries (a graph with one node read by thousands must
    not cost slots x lists): entries are sorted by slot, then by list index.
    """
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    total = int(lengths.sum())
    if total == 0:
        return []
    owner = np.repeat(np.arange(len(lists), dtype=np.int64), lengths)
    slot = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    entry = np.fromiter((v for x in lists for v in x), dtype=np.int64, count=total)
    order = np.lexsort((owner, slot))
    owner, slot, entry = owner[order], slot[order], entry[order]
    bounds = np.searchsorted(slot, np.arange(int(lengths.max()) + 1))
    return [(owner[a:b], entry[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def pack_bits(rows: np.ndarray) -> np.ndarray:
    """Boolean rows (N, 64*W) as little-endian uint64 bitsets (N, W)."""
    return np.ascontiguousarray(np.packbits(rows, axis=1, bitorder="little")).view("<u8")


def unpack_bits(bits: np.ndarray, n: int) -> np.ndarray:
    """Bitsets (N, W) as 0/1 float rows over the first ``n`` nodes (N, n)."""
    return np.unpackbits(np.ascontiguousarray(bits).view(np.uint8), axis=1, bitorder="little")[:, :n].astype(np.float64)


def report_progress(progress: Progress | None, phase: str, fraction: float) -> None:
    """Call the optional progress callback."""
    if progress is not None:
        progress(phase, fraction)


def check_time(deadline: float, time_limit: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise DPTimeout(f"the DP ran past its time limit of {time_limit:g} s while {what}")


def enumerate_ideals(
    prob: Problem, *, max_ideals: int, deadline: float, time_limit: float, progress: Progress | None
) -> np.ndarray:
    """All ideals as bitsets, grown node by node in topological order.

    After node v the rows are the ideals of nodes 0..v; each gains a copy
    with v added when v's predecessors are all in it. Counts only grow, so
    the cap can be enforced as soon as it is passed.
    """
    masks = prob.pred_masks
    cap = 1024
    bits = np.zeros((cap, prob.words), dtype="<u8")
    row_bytes = prob.words * 8
    count = 1
    for v in range(prob.n):
        # Words past v's are still zero in every row: copy only the ones that can be set.
        used = (v >> 6) + 1
        cur = bits[:count, :used]
        if masks[v]:
            ok = None
            for w, m in masks[v]:
                hit = (cur[:, w] & m) == m
                ok = hit if ok is None else ok & hit
            src = cur[ok]
        else:
            src = cur
        grown = len(src)
        if count + grown > max_ideals:
            raise DPTooLarge(
                f"the coarse graph has more than {max_ideals} ideals (passed it at node {v + 1} of {prob.n});"
                " use a solver that does not enumerate ideals"
            )
        if (count + grown) * row_bytes > MAX_IDEAL_BYTES:
            raise DPTooLarge(
                f"the ideals of a {prob.n}-node coarse graph need more than {MAX_IDEAL_BYTES / 2**20:.0f} MiB"
                f" (passed it at node {v + 1}); use a solver that does not enumerate ideals"
            )
        if count + grown > cap:
            cap = max(2 * cap, count + grown)
            bigger = np.zeros((cap, prob.words), dtype="<u8")
            bigger[:count] = bits[:count]
            bits = bigger
        bits[count : count + grown, :used] = src
        bits[count : count + grown, v >> 6] |= np.uint64(1 << (v & 63))
        count += grown
        if v % 32 == 31:
            check_time(deadline, time_limit, "enumerating ideals")
            report_progress(progress, "ideals", (v + 1) / prob.n)
    check_time(deadline, time_limit, "enumerating ideals")
    report_progress(progress, "ideals", 1.0)
    return bits[:count].copy()
