"""Contiguous throughput placement when links differ between pairs of devices.

With ``[[pair]]`` links a hand-off's price depends on which two devices
exchange it (:func:`onnxsplit.solve.plan.hand_off_ms`), so the stages of a
chain and the devices that run them must be chosen together. The ideal DP
is exact only when every device of a kind is alike; here it is used three
ways, and never has to know about links:

1. Bound: the DP on the graph with every tensor priced at its cheapest link
   between any two devices (:func:`reprice`). For any plan, each receive
   and each send costs at least that much, so every load of every plan is
   at least its load under the cheap prices, and the cheap optimum is at
   most the link-aware optimum: a proof.
2. Plans: the stage chains the DP finds under the cheapest, the default and
   the dearest prices, each given its best devices by
   :func:`assign_devices` (every injective map of stages to devices that can
   hold them, one per class of interchangeable devices, scored with the
   real prices; a local search where there are too many maps).
3. Closing the gap (:func:`order_bound`): for a fixed order of all devices
   along the chain, a DP over ideals where the stage at position p receives
   each tensor at its cheapest link from any earlier position and sends it
   at its cheapest to any later one. A plan whose devices appear in that
   order (unused devices inserted anywhere) pays at least that at every
   stage, so the least of these values over all orders (one per class of
   interchangeable devices) is a bound too; when it meets the best plan,
   the plan is optimal. It runs only where the ideals, pairs and orders are
   few enough; otherwise the bound of step 1 stands and ``notes`` say so.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import Devices, Link
from onnxsplit.errors import InfeasibleError, OnnxSplitError
from onnxsplit.solve.plan import Plan, hand_off_ms, make_plan

__all__ = ["Assignment", "LinkTable", "OrderBound", "assign_devices", "link_safe", "order_bound", "order_count", "reprice", "solve_links"]

log = logging.getLogger(__name__)

# Relative slack when comparing a plan with a bound, so rounding never claims or denies a proof wrongly.
_REL = 1e-9


@dataclass(frozen=True)
class LinkTable:
    """The distinct links between devices, and which one joins each pair.

    ``links[0]`` is None, the default link (a tensor's own ``cost``);
    ``link_id[a, b]`` indexes ``links`` for a != b and is -1 on the diagonal.
    ``used`` lists the link indices some pair of distinct devices uses.
    """

    links: tuple[Link | None, ...]
    link_id: np.ndarray
    used: tuple[int, ...]

    @staticmethod
    def of(devices: Devices) -> LinkTable:
        n = devices.count
        links: list[Link | None] = [None]
        link_id = np.full((n, n), -1, dtype=np.int64)
        for a in range(n):
            for b in range(n):
                if a == b:
                    continue
                link = devices.pair_link(a, b)
                if link not in links:
                    links.append(link)
                link_id[a, b] = links.index(link)
        used = tuple(sorted({int(i) for i in link_id.flat if i >= 0}))
        return LinkTable(tuple(links), link_id, used)

    def prices(self, tensors: Sequence[Tensor]) -> np.ndarray:
        """(tensors, links): each tensor's price on each link."""
        out = np.zeros((len(tensors), len(self.links)))
        for i, t in enumerate(tensors):
            for j, link in enumerate(self.links):
                out[i, j] = hand_off_ms(t, link)
        return out


def reprice(graph: CostGraph, devices: Devices, *, dearest: bool = False) -> CostGraph:
    """The graph with every tensor's cost set to its cheapest (or dearest) price between two devices."""
    table = LinkTable.of(devices)
    if not table.used:
        return graph
    prices = table.prices(graph.tensors)[:, list(table.used)]
    pick = prices.max(axis=1) if dearest else prices.min(axis=1)
    tensors = tuple(replace(t, cost=float(c)) for t, c in zip(graph.tensors, pick))
    return replace(graph, tensors=tensors)


# ---------------------------------------------------------------- devices for a fixed chain of stages


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
        limit = np.array([k.memory * (1 + _REL) for k in kinds])
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


# ---------------------------------------------------------------- a bound per order of the devices


@dataclass(frozen=True)
class OrderBound:
    """The least per-order bound and, for the orders that reach it, their stage chains (node -> stage)."""

    bound: float
    orders: int
    chains: tuple[tuple[int, ...], ...]


def order_count(classes: Sequence[Sequence[int]]) -> int:
    """How many orders of all devices differ by more than a swap of interchangeable devices."""
    count = math.factorial(sum(len(c) for c in classes))
    for c in classes:
        count //= math.factorial(len(c))
    return count


class _PairTable:
    """Pairs (J, I) of ideals of the group-contracted graph whose cheap load fits a bound, with their indicators."""

    def __init__(self, graph: CostGraph, devices: Devices, table: LinkTable, upper: float, *,
                 max_ideals: int, max_cells: int, deadline: float) -> None:
        from onnxsplit.solve.coarsen import coarsen
        from onnxsplit.solve.lattice import Problem, enumerate_ideals, unpack_bits

        # Only co-location groups are contracted: folding free nodes is argued with one price per tensor.
        co = coarsen(graph, devices, fold=False)
        cg = co.graph
        self.of = co.of
        prob = Problem(cg, devices)
        bits = enumerate_ideals(prob, max_ideals=max_ideals, deadline=deadline, time_limit=0.0, progress=None)
        member = unpack_bits(bits, cg.n)
        n_ideals = len(bits)
        self.n_ideals = n_ideals
        self.member = member
        # Tensors that always cross together (same coarse producer and readers): one group, prices summed.
        groups: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        prices = table.prices(graph.tensors)
        for t, row in zip(graph.tensors, prices):
            p = co.of[t.producer]
            cons = tuple(sorted({co.of[c] for c in t.consumers} - {p}))
            if cons and row.max() > 0:
                groups[(p, cons)] = groups.get((p, cons), 0) + row
        keys = sorted(groups)
        self.price = np.array([groups[k] for k in keys]).reshape(len(keys), len(table.links))
        cheap = self.price[:, list(table.used)].min(axis=1) if len(keys) else np.zeros(0)
        prod = np.array([k[0] for k in keys], dtype=np.int64)
        p_in = member[:, prod] > 0 if len(keys) else np.zeros((n_ideals, 0), dtype=bool)
        k_in = np.stack([member[:, list(k[1])].sum(axis=1) for k in keys], axis=1) if keys else np.zeros((n_ideals, 0))
        fan = np.array([len(k[1]) for k in keys])
        kinds = [k for k in devices.kinds if k.count > 0]
        self.kinds = kinds
        comp = {k.name: member @ np.where(np.isinf(cg.compute[k.name]), 0.0, cg.compute[k.name]) for k in kinds}
        banned = {k.name: member @ np.isinf(cg.compute[k.name]).astype(np.float64) for k in kinds}
        memory = member @ np.asarray(cg.memory, dtype=np.float64)
        size = member.sum(axis=1)
        self.full = int(np.flatnonzero(size == cg.n)[0])
        self.empty = int(np.flatnonzero(size == 0)[0])
        # Every set of links a device can have to the devices before (or after) it: any non-empty subset
        # of the links it touches. Loads are kept per such set, not per tensor, which keeps pairs small.
        family: set[frozenset[int]] = {frozenset()}
        for d in range(devices.count):
            touched = sorted({int(x) for x in table.link_id[d] if x >= 0})
            for r in range(1, len(touched) + 1):
                family.update(frozenset(c) for c in itertools.combinations(touched, r))
        self.sets = {f: i for i, f in enumerate(sorted(family, key=sorted))}
        columns = np.zeros((len(keys), len(self.sets)))
        for f, i in self.sets.items():
            if f:
                columns[:, i] = self.price[:, sorted(f)].min(axis=1)
        order = np.argsort(size, kind="stable")
        inner_l, outer_l, recv_l, send_l = [], [], [], []
        comp_l: dict[str, list[np.ndarray]] = {k.name: [] for k in kinds}
        cells = 0
        for i in order:
            if time.monotonic() > deadline:
                raise TimeoutError
            sub = np.flatnonzero(((bits & ~bits[i]) == 0).all(axis=1) & (size < size[i]))
            if not len(sub):
                continue
            diff_mem = memory[i] - memory[sub]
            best = np.full(len(sub), math.inf)
            per_kind = {}
            for k in kinds:
                c = comp[k.name][i] - comp[k.name][sub]
                bad = (banned[k.name][i] - banned[k.name][sub] > 0) | (diff_mem > k.memory * (1 + _REL))
                c = np.where(bad, math.inf, c)
                per_kind[k.name] = c
                best = np.minimum(best, c)
            recv = p_in[sub] & (k_in[i][None, :] > k_in[sub])
            send = p_in[i][None, :] & ~p_in[sub] & (k_in[i] < fan)[None, :]
            cheap_load = best + recv @ cheap + send @ cheap
            keep = cheap_load <= upper * (1 + _REL) + 1e-12
            if not keep.any():
                continue
            cells += int(keep.sum()) * (len(kinds) + 2 * len(self.sets))
            if cells > max_cells:
                raise MemoryError
            inner_l.append(sub[keep])
            outer_l.append(np.full(int(keep.sum()), i))
            recv_l.append(recv[keep] @ columns)
            send_l.append(send[keep] @ columns)
            for k in kinds:
                comp_l[k.name].append(per_kind[k.name][keep])
        self.inner = np.concatenate(inner_l) if inner_l else np.zeros(0, np.int64)
        self.outer = np.concatenate(outer_l) if outer_l else np.zeros(0, np.int64)
        self.recv = np.concatenate(recv_l) if recv_l else np.zeros((0, len(self.sets)))
        self.send = np.concatenate(send_l) if send_l else np.zeros((0, len(self.sets)))
        self.comp = {name: (np.concatenate(v) if v else np.zeros(0)) for name, v in comp_l.items()}
        # Pairs grouped by their outer ideal, for one segmented minimum per layer.
        by_outer = np.argsort(self.outer, kind="stable")
        self.inner, self.outer = self.inner[by_outer], self.outer[by_outer]
        self.recv, self.send = self.recv[by_outer], self.send[by_outer]
        self.comp = {name: v[by_outer] for name, v in self.comp.items()}
        self.heads, self.starts = np.unique(self.outer, return_index=True)
        self._loads: dict[tuple[str, frozenset[int], frozenset[int]], np.ndarray] = {}

    def load(self, devices: Devices, table: LinkTable, device: int, before: frozenset[int],
             after: frozenset[int]) -> np.ndarray:
        """Each pair's load bound on ``device`` with devices ``before`` earlier in the order and ``after`` later.

        A tensor received there costs at least its cheapest link from an earlier
        device, and one sent at least its cheapest to a later device; only the
        set of those links matters, so loads are cached by (kind, link sets).
        """
        kind = devices.expanded()[device]
        talks = kind.communicates and len(self.price) > 0
        into = frozenset(int(table.link_id[e, device]) for e in before) if talks else frozenset()
        out = frozenset(int(table.link_id[device, e]) for e in after) if talks else frozenset()
        key = (kind.name, into, out)
        cached = self._loads.get(key)
        if cached is None:
            cached = self.comp[kind.name].copy()
            if into:
                cached += self.recv[:, self.sets[into]]
            if out:
                cached += self.send[:, self.sets[out]]
            self._loads[key] = cached
        return cached

    def layer(self, best: np.ndarray, load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One more position: the best max load covering each ideal, and the pairs' values."""
        vals = np.maximum(best[self.inner], load)
        nxt = best.copy()
        if len(vals):
            nxt[self.heads] = np.minimum(nxt[self.heads], np.minimum.reduceat(vals, self.starts))
        return nxt, vals

    def start(self) -> np.ndarray:
        best = np.full(self.n_ideals, math.inf)
        best[self.empty] = 0.0
        return best

    def chain(self, devices: Devices, table: LinkTable, order: Sequence[int]) -> list[tuple[int, int] | None]:
        """The chain of one order that reaches its bound: per position a pair (J, I), or None if empty."""
        best = self.start()
        history = []
        for q, d in enumerate(order):
            load = self.load(devices, table, d, frozenset(order[:q]), frozenset(order[q + 1:]))
            nxt, vals = self.layer(best, load)
            history.append((vals, best))
            best = nxt
        # Walk back: at each position either the stage is empty or some pair reached the value.
        steps: list[tuple[int, int] | None] = []
        target, at = best[self.full], self.full
        for vals, before in reversed(history):
            if before[at] <= target:
                steps.append(None)
                continue
            j = int(self.inner[np.flatnonzero((self.outer == at) & (vals <= target))[0]])
            steps.append((j, at))
            at = j
        return steps[::-1]

    def stage_of(self, chain: list[tuple[int, int] | None]) -> tuple[int, ...]:
        stage = np.full(self.member.shape[1], -1, dtype=np.int64)
        for q, step in enumerate(chain):
            if step is not None:
                j, i = step
                stage[(self.member[i] > 0) & (self.member[j] == 0)] = q
        return tuple(int(stage[c]) for c in self.of)


def order_bound(
    graph: CostGraph,
    devices: Devices,
    *,
    upper_bound: float,
    max_orders: int = 5040,
    max_ideals: int = 10_000,
    max_cells: int = 30_000_000,
    time_limit: float = 30.0,
) -> OrderBound | None:
    """The least, over orders of the devices, of the per-order DP bound (module docstring, step 3).

    ``upper_bound`` is the max load of a known plan: pairs whose load under
    the cheapest prices exceeds it are skipped, so the result is
    ``min(upper_bound, bound)``, a valid lower bound on the link-aware optimum
    either way. The chains of the orders that reach the bound come back as
    node -> position (positions may be empty). None when there are more
    orders, ideals or pair cells than the limits allow, or time runs out.
    """
    from onnxsplit.solve.lattice import DPTooLarge

    deadline = time.monotonic() + time_limit
    if order_count(devices.interchangeable()) > max_orders:
        log.info("links: more than %d device orders; no per-order bound", max_orders)
        return None
    table = LinkTable.of(devices)
    try:
        pairs = _PairTable(graph, devices, table, upper_bound, max_ideals=max_ideals, max_cells=max_cells,
                           deadline=deadline)
    except (DPTooLarge, MemoryError, TimeoutError) as exc:
        log.info("links: per-order bound skipped (%s)", type(exc).__name__)
        return None
    # Depth first over order prefixes: a prefix's DP layers are shared by every order that starts with it.
    classes = devices.interchangeable()
    everyone = frozenset(range(devices.count))
    used = [0] * len(classes)
    prefix: list[int] = []
    finished: list[tuple[float, tuple[int, ...]]] = []

    def walk(best: np.ndarray) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError
        if len(prefix) == devices.count:
            finished.append((float(best[pairs.full]), tuple(prefix)))
            return
        for c, members in enumerate(classes):
            if used[c] == len(members):
                continue
            d = members[used[c]]
            before = frozenset(prefix)
            load = pairs.load(devices, table, d, before, everyone - before - {d})
            used[c] += 1
            prefix.append(d)
            walk(pairs.layer(best, load)[0])
            prefix.pop()
            used[c] -= 1

    try:
        walk(pairs.start())
    except TimeoutError:
        log.info("links: per-order bound ran out of time")
        return None
    least = min((v for v, _ in finished), default=math.inf)
    chains = []
    if math.isfinite(least):
        for value, order in finished:
            if value <= least * (1 + _REL) and len(chains) < 4:
                chains.append(pairs.stage_of(pairs.chain(devices, table, order)))
    return OrderBound(min(least, upper_bound), len(finished), tuple(chains))


# ---------------------------------------------------------------- the solver


ChainSolver = Callable[[CostGraph, Devices, float], Plan]


def _default_chain_solver(graph: CostGraph, devices: Devices, time_limit: float) -> Plan:
    from onnxsplit.solve.dp import solve_dp

    return solve_dp(graph, devices, time_limit=time_limit)


def _compact(stage_of: Sequence[int]) -> tuple[int, ...]:
    """Stages renumbered 0..m-1 in their order, dropping empty ones."""
    used = {s: i for i, s in enumerate(sorted(set(stage_of)))}
    return tuple(used[s] for s in stage_of)


def solve_links(
    graph: CostGraph,
    devices: Devices,
    *,
    time_limit: float = 60.0,
    solve_chain: ChainSolver = _default_chain_solver,
    max_orders: int = 5040,
    max_maps: int = 200_000,
) -> Plan:
    """The best contiguous plan with every hand-off priced on its own link, and a proven lower bound.

    ``solve_chain(graph, devices, time_limit)`` finds a contiguous plan for
    devices without ``[[pair]]`` links and a lower bound valid for that graph
    (the DP, or the DP with its fallbacks); it raises what it raises (such as
    DPTooLarge) when the first, bounding run cannot be done. Without
    ``[[pair]]`` links this is ``solve_chain`` itself. The plan's
    ``lower_bound`` is the best of the bounds of the module docstring, and
    ``notes`` say which one it is and whether the device maps were searched
    exhaustively.
    """
    if not devices.pairs:
        return solve_chain(graph, devices, time_limit)
    began = time.monotonic()
    deadline = began + time_limit

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    blind = replace(devices, pairs=())
    cheap = solve_chain(reprice(graph, devices), blind, time_limit)
    bound = cheap.lower_bound
    notes = [f"links: lower bound {bound:.6g} from the contiguous optimum with every hand-off at its cheapest link"]
    chains = [_compact(cheap.stage_of)]
    for label, g in (("default", graph), ("dearest", reprice(graph, devices, dearest=True))):
        if time.monotonic() > deadline:
            break
        try:
            chains.append(_compact(solve_chain(g, blind, left()).stage_of))
        except OnnxSplitError as exc:
            log.info("links: no chain under the %s prices: %s", label, exc)

    best: tuple[tuple[int, ...], Assignment] | None = None
    exact = True

    def consider(stage_of: tuple[int, ...], start: Sequence[int] = ()) -> None:
        nonlocal best, exact
        if best is not None and stage_of == best[0]:
            return
        try:
            found = assign_devices(graph, devices, stage_of, start=start, max_maps=max_maps)
        except InfeasibleError:
            return
        exact = exact and found.exact
        if best is None or found.value < best[1].value:
            best = (stage_of, found)

    consider(chains[0], cheap.stage_device)
    for chain in dict.fromkeys(chains[1:]):
        consider(chain)
    if best is None:
        raise InfeasibleError("no contiguous placement fits the devices (memory or unsupported nodes)")

    if best[1].value > bound * (1 + _REL) + 1e-12 and time.monotonic() < deadline:
        refined = order_bound(graph, devices, upper_bound=best[1].value, max_orders=max_orders,
                              time_limit=max(0.0, deadline - time.monotonic()))
        if refined is None:
            notes.append("links: per-order bound not computed (too many device orders, ideals or pairs, or no time)")
        else:
            for chain in refined.chains:
                consider(_compact(chain))
            if refined.bound > bound:
                bound = min(refined.bound, best[1].value)
                notes.append(f"links: lower bound {bound:.6g} from the per-order DP over {refined.orders} device orders")
    stage_of, found = best
    notes.append(f"links: devices of each chain chosen over {found.maps} maps"
                 + ("" if exact else " (a local search where there were too many)"))
    notes.extend(cheap.notes)
    plan = make_plan(graph, devices, stage_of, found.stage_device, solver=cheap.solver, lower_bound=bound,
                     notes=tuple(notes))
    log.info("links: max load %g, bound %g, %.3f s", plan.value, plan.lower_bound, time.monotonic() - began)
    return plan



def link_safe(graph: CostGraph, devices: Devices, plan: Plan) -> Plan:
    """A throughput plan from a link-blind solver, with a lower bound that holds for the link-aware problem.

    A solver that priced every hand-off at ``tensor.cost`` proved its bound
    for those prices. When no ``[[pair]]`` link is cheaper than the default
    for any tensor, every load only grows with links, so the bound stands;
    otherwise it falls back to the compute-only bound, which ignores links.
    """
    if not devices.pairs or plan.objective != "throughput":
        return plan
    cheap = reprice(graph, devices)
    if all(c.cost >= t.cost for t, c in zip(graph.tensors, cheap.tensors)):
        return plan
    from onnxsplit.solve.plan import simple_lower_bound

    bound = simple_lower_bound(graph, devices)
    if plan.lower_bound <= bound:
        return plan
    return replace(plan, lower_bound=bound,
                   notes=plan.notes + ("links: a [[pair]] link is faster than the default one; the bound is the "
                                       "compute-only one",))
