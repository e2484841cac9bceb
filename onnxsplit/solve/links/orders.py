"""A lower bound per order of the devices along a chain (step 3 of :mod:`onnxsplit.solve.links`).

For each order, a DP over ideals prices every hand-off at its cheapest link
from an earlier position or to a later one; the least over all orders bounds
every plan.

A training graph's ideals are those of its forward precedence (units of
:mod:`onnxsplit.solve.training`), and a tensor may run from a later stage
to an earlier one, so its price is argued by membership instead: a stage
holding some but not all of a tensor's ends pays at least the cheapest link
to a position holding another end (a receiver pays its link from the
producer, a sender the dearest link to its receivers, and each of those
positions is earlier, later, or either). Links are symmetric
(:meth:`Devices.pair_link`), so "from" and "to" pick the same links.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.solve.links.pricing import REL_SLACK, LinkTable

log = logging.getLogger(__name__)


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
        # A training graph's coarse tensors only carry cost: ideals follow its forward precedence.
        membership = co.precedence is not None
        prob = Problem(cg, devices, precedence=co.precedence)
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
        # Ends (producer and readers) of each tensor group inside each ideal, for membership pricing.
        e_in = p_in + k_in if membership else None
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
        inner_l, outer_l, recv_l, send_l, both_l = [], [], [], [], []
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
                bad = (banned[k.name][i] - banned[k.name][sub] > 0) | (diff_mem > k.memory * (1 + REL_SLACK))
                c = np.where(bad, math.inf, c)
                per_kind[k.name] = c
                best = np.minimum(best, c)
            if e_in is None:
                recv = p_in[sub] & (k_in[i][None, :] > k_in[sub])
                send = p_in[i][None, :] & ~p_in[sub] & (k_in[i] < fan)[None, :]
                both = None
                cheap_load = best + recv @ cheap + send @ cheap
            else:
                # The stage I \ J holds an end; another end lies earlier (in J) and/or later (outside I).
                held = e_in[i][None, :] > e_in[sub]
                earlier = e_in[sub] > 0
                later = (e_in[i] < fan + 1)[None, :]
                recv = held & earlier & ~later
                send = held & later & ~earlier
                both = held & earlier & later
                cheap_load = best + (recv | send | both) @ cheap
            keep = cheap_load <= upper * (1 + REL_SLACK) + 1e-12
            if not keep.any():
                continue
            cells += int(keep.sum()) * (len(kinds) + 2 * len(self.sets))
            if cells > max_cells:
                raise MemoryError
            inner_l.append(sub[keep])
            outer_l.append(np.full(int(keep.sum()), i))
            recv_l.append(recv[keep] @ columns)
            send_l.append(send[keep] @ columns)
            if both is not None:
                both_l.append(both[keep] @ columns)
            for k in kinds:
                comp_l[k.name].append(per_kind[k.name][keep])
        self.inner = np.concatenate(inner_l) if inner_l else np.zeros(0, np.int64)
        self.outer = np.concatenate(outer_l) if outer_l else np.zeros(0, np.int64)
        self.recv = np.concatenate(recv_l) if recv_l else np.zeros((0, len(self.sets)))
        self.send = np.concatenate(send_l) if send_l else np.zeros((0, len(self.sets)))
        # Training graphs: per pair, tensors with ends both earlier and later, priced over all their links.
        self.both = (np.concatenate(both_l) if both_l else np.zeros((0, len(self.sets)))) if membership else None
        self.comp = {name: (np.concatenate(v) if v else np.zeros(0)) for name, v in comp_l.items()}
        # Pairs grouped by their outer ideal, for one segmented minimum per layer.
        by_outer = np.argsort(self.outer, kind="stable")
        self.inner, self.outer = self.inner[by_outer], self.outer[by_outer]
        self.recv, self.send = self.recv[by_outer], self.send[by_outer]
        if self.both is not None:
            self.both = self.both[by_outer]
        self.comp = {name: v[by_outer] for name, v in self.comp.items()}
        self.heads, self.starts = np.unique(self.outer, return_index=True)
        self._loads: dict[tuple[str, frozenset[int], frozenset[int]], np.ndarray] = {}

    def load(self, devices: Devices, table: LinkTable, device: int, before: frozenset[int],
             after: frozenset[int]) -> np.ndarray:
        """Each pair's load bound on ``device`` with devices ``before`` earlier in the order and ``after`` later.

        A tensor received there costs at least its cheapest link from an earlier
        device, and one sent at least its cheapest to a later device; only the
        set of those links matters, so loads are cached by (kind, link sets).
        In a training graph ``recv`` holds the tensors with other ends only
        earlier, ``send`` those only later, and ``both`` the rest, priced at
        the cheapest link to either side.
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
            if self.both is not None and (into or out):
                cached += self.both[:, self.sets[into | out]]
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
    """The least, over orders of the devices, of the per-order DP bound (step 3 of :mod:`onnxsplit.solve.links`).

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
            if value <= least * (1 + REL_SLACK) and len(chains) < 4:
                chains.append(pairs.stage_of(pairs.chain(devices, table, order)))
    return OrderBound(min(least, upper_bound), len(finished), tuple(chains))
