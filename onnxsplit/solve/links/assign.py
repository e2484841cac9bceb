"""Devices for a fixed chain of stages: every map of stages to devices scored with the real link prices."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve.links.pricing import REL_SLACK, LinkTable


@dataclass(frozen=True)
class Assignment:
    """The best devices found for a chain of stages: ``stage_device[s]``, the max load, and whether proven."""

    stage_device: tuple[int, ...]
    value: float
    exact: bool
    maps: int


class _Scorer:
    """Scores many device maps of one chain of stages at once, with the real link prices."""

    def __init__(self, graph: CostGraph, devices: Devices, stage_of: Sequence[int], table: LinkTable) -> None:
        kinds = devices.expanded()
        self.m = m = max(stage_of, default=-1) + 1
        self.ndev = len(kinds)
        self.table = table
        comp = np.zeros((m, self.ndev))
        mem = np.zeros(m)
        np.add.at(mem, np.asarray(stage_of, dtype=np.int64), np.asarray(graph.memory, dtype=np.float64))
        for name in {k.name for k in kinds}:
            per = np.zeros(m)
            np.add.at(per, np.asarray(stage_of, dtype=np.int64), np.asarray(graph.compute[name], dtype=np.float64))
            for d, k in enumerate(kinds):
                if k.name == name:
                    comp[:, d] = per
        limit = np.array([k.memory * (1 + REL_SLACK) for k in kinds])
        comp[mem[:, None] > limit[None, :]] = math.inf
        self.comp = comp  # (stage, device): compute there, inf where it cannot run or fit
        self.talks = np.array([k.communicates for k in kinds], dtype=np.float64)
        crossing, src_e, dst_e, tid_e = [], [], [], []
        for t in graph.tensors:
            src = stage_of[t.producer]
            dests = sorted({stage_of[c] for c in t.consumers} - {src})
            if not dests:
                continue
            for d in dests:
                src_e.append(src)
                dst_e.append(d)
                tid_e.append(len(crossing))
            crossing.append(t)
        self.src_e = np.array(src_e, dtype=np.int64)
        self.dst_e = np.array(dst_e, dtype=np.int64)
        self.price = table.prices(crossing)  # (tensor, link)
        self.tid_e = np.array(tid_e, dtype=np.int64)
        self.src_t = np.array([stage_of[t.producer] for t in crossing], dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, self.tid_e[1:] != self.tid_e[:-1]]) if len(tid_e) else np.zeros(0, np.int64)
        self.starts = starts

    def loads(self, maps: np.ndarray) -> np.ndarray:
        """(K, m) loads of K device maps (K, m)."""
        k, m = maps.shape
        rows = np.arange(m)[None, :]
        loads = self.comp[rows, maps]
        if len(self.src_e):
            lid = self.table.link_id[maps[:, self.src_e], maps[:, self.dst_e]]
            price = self.price[self.tid_e[None, :], lid]  # (K, edges)
            recv = price * self.talks[maps[:, self.dst_e]]
            for s in range(m):  # m is small: a column sum per stage beats a scatter over K rows
                hit = self.dst_e == s
                if hit.any():
                    loads[:, s] += recv[:, hit].sum(axis=1)
            send = np.maximum.reduceat(price, self.starts, axis=1) * self.talks[maps[:, self.src_t]]
            for s in range(m):
                hit = self.src_t == s
                if hit.any():
                    loads[:, s] += send[:, hit].sum(axis=1)
        return loads


def _maps(scorer: _Scorer, classes: Sequence[Sequence[int]], cap: int) -> Iterator[tuple[int, ...]]:
    """Device maps of the stages, one per class of interchangeable devices, skipping devices a stage cannot use.

    Within a class the lowest unused device is always taken: any other choice
    is that one with two interchangeable devices swapped.
    """
    m = scorer.m
    used = [0] * len(classes)
    current: list[int] = []
    produced = 0

    def walk(s: int) -> Iterator[tuple[int, ...]]:
        nonlocal produced
        if s == m:
            produced += 1
            yield tuple(current)
            return
        for c, members in enumerate(classes):
            if used[c] == len(members) or produced > cap:
                continue
            d = members[used[c]]
            if math.isinf(scorer.comp[s, d]):
                continue
            used[c] += 1
            current.append(d)
            yield from walk(s + 1)
            current.pop()
            used[c] -= 1

    yield from walk(0)


def _local_search(scorer: _Scorer, start: tuple[int, ...]) -> tuple[tuple[int, ...], float]:
    """Best-improvement search over moving one stage to a free device and swapping two stages' devices."""
    def key(loads: np.ndarray) -> tuple[float, float]:
        return float(loads.max(initial=0.0)), float(loads.sum())

    best = start
    best_key = key(scorer.loads(np.array([start]))[0])
    while True:
        neighbours = []
        free = [d for d in range(scorer.ndev) if d not in best]
        for s in range(scorer.m):
            for d in free:
                neighbours.append(best[:s] + (d,) + best[s + 1:])
            for r in range(s + 1, scorer.m):
                swapped = list(best)
                swapped[s], swapped[r] = swapped[r], swapped[s]
                neighbours.append(tuple(swapped))
        if not neighbours:
            break
        loads = scorer.loads(np.array(neighbours))
        keys = [key(row) for row in loads]
        i = min(range(len(keys)), key=keys.__getitem__)
        if keys[i] >= best_key:
            break
        best, best_key = neighbours[i], keys[i]
    return best, best_key[0]


def assign_devices(
    graph: CostGraph,
    devices: Devices,
    stage_of: Sequence[int],
    *,
    start: Sequence[int] = (),
    max_maps: int = 200_000,
) -> Assignment:
    """The devices that minimise the max load of a fixed chain of stages, with per-pair link prices.

    Before: ``stage_of`` numbers stages 0..m-1 (each holding a node) with
    m <= ``devices.count``. Every injective map of stages to devices that can
    run and hold them is scored, one per class of interchangeable devices
    (:meth:`Devices.interchangeable`); past ``max_maps`` maps, a local search
    from ``start`` (a feasible map, such as the DP's) stands in and the
    result says it is not exact. Raises InfeasibleError when no map fits.
    """
    table = LinkTable.of(devices)
    scorer = _Scorer(graph, devices, stage_of, table)
    if scorer.m == 0:
        return Assignment((), 0.0, True, 1)
    classes = devices.interchangeable()
    best: tuple[tuple[int, ...], float] | None = None
    seen = 0
    batch: list[tuple[int, ...]] = []

    def flush() -> None:
        nonlocal best
        if not batch:
            return
        values = scorer.loads(np.array(batch)).max(axis=1)
        i = int(np.argmin(values))
        if best is None or values[i] < best[1]:
            best = (batch[i], float(values[i]))
        batch.clear()

    for candidate in _maps(scorer, classes, max_maps):
        seen += 1
        if seen > max_maps:
            break
        batch.append(candidate)
        if len(batch) >= 8192:
            flush()
    flush()
    exact = seen <= max_maps
    if not exact:
        first = tuple(start) if start else (best[0] if best else ())
        if first:
            found, value = _local_search(scorer, first)
            if best is None or value < best[1]:
                best = (found, value)
    if best is None or math.isinf(best[1]):
        raise InfeasibleError("no assignment of the stages to devices fits their memory and capabilities")
    return Assignment(best[0], best[1], exact, seen)
