"""Greedy and expert baselines, and the unit contraction the other solvers share.

A *unit* is a set of nodes that must share a device: a co-location group, a
single node, or (for contiguous placement) a cycle that contracting groups
creates -- with a -> b -> c and {a, c} a group, b is forced between them.
Working on units keeps every solver inside the group constraints for free.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from onnxsplit.costgraph import CostGraph
from onnxsplit.dag import UnionFind
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError, PlanError
from onnxsplit.solve.plan import Plan, check_plan, make_plan, max_load, simple_lower_bound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    """Tensors between units, merged when they have the same ends.

    ``consumers`` excludes the producer's own unit; ``cost`` is the summed
    transfer time of the merged tensors (they always cross together).
    """

    producer: int
    consumers: tuple[int, ...]
    cost: float


@dataclass(frozen=True)
class Units:
    unit_of: tuple[int, ...]
    members: tuple[tuple[int, ...], ...]
    compute: Mapping[str, tuple[float, ...]]
    memory: tuple[float, ...]
    edges: tuple[tuple[int, int], ...]
    links: tuple[Link, ...]

    @property
    def count(self) -> int:
        return len(self.members)


def _sccs(n: int, succ: list[set[int]]) -> list[int]:
    """Strongly connected component of each vertex (iterative Tarjan)."""
    index = [-1] * n
    low = [0] * n
    comp = [-1] * n
    on_stack = [False] * n
    stack: list[int] = []
    counter = 0
    ncomp = 0
    adj = [sorted(s) for s in succ]
    for root in range(n):
        if index[root] >= 0:
            continue
        work = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work:
            v, i = work[-1]
            if i < len(adj[v]):
                work[-1] = (v, i + 1)
                w = adj[v][i]
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp[w] = ncomp
                    if w == v:
                        break
                ncomp += 1
    return comp


def units_of(graph: CostGraph, *, merge_cycles: bool) -> Units:
    """Contract co-location groups (and, if asked, the cycles they create).

    Units are numbered by their smallest node; with ``merge_cycles`` the unit
    graph is a DAG and that numbering is a topological order (the smallest
    node of a unit precedes the smallest node of every unit it feeds, because
    node ids are topological and units are strongly connected pieces).
    """
    n = graph.n
    sets = UnionFind(n)
    for group in graph.groups:
        for v in group[1:]:
            sets.union(v, group[0])
    roots = sorted({sets.find(v) for v in range(n)})
    rid = {r: i for i, r in enumerate(roots)}
    label = [rid[sets.find(v)] for v in range(n)]
    if merge_cycles:
        succ: list[set[int]] = [set() for _ in roots]
        for u, v in graph.edges():
            if label[u] != label[v]:
                succ[label[u]].add(label[v])
        comp = _sccs(len(roots), succ)
        label = [comp[label[v]] for v in range(n)]
    # Renumber by smallest member so numbering is deterministic (and topological when acyclic).
    first: dict[int, int] = {}
    for v in range(n):
        first.setdefault(label[v], v)
    order = sorted(first, key=first.__getitem__)
    renum = {old: i for i, old in enumerate(order)}
    unit_of = tuple(renum[label[v]] for v in range(n))
    members_l: list[list[int]] = [[] for _ in order]
    for v in range(n):
        members_l[unit_of[v]].append(v)
    members = tuple(tuple(m) for m in members_l)
    compute = {k: tuple(math.fsum(graph.compute[k][v] for v in m) for m in members) for k in graph.kinds}
    memory = tuple(math.fsum(graph.memory[v] for v in m) for m in members)
    edges = tuple(sorted({(unit_of[u], unit_of[v]) for u, v in graph.edges() if unit_of[u] != unit_of[v]}))
    merged: dict[tuple[int, tuple[int, ...]], list[float]] = defaultdict(list)
    for t in graph.tensors:
        a = unit_of[t.producer]
        cons = tuple(sorted({unit_of[c] for c in t.consumers} - {a}))
        if cons:
            merged[(a, cons)].append(t.cost)
    links = tuple(Link(a, cons, math.fsum(costs)) for (a, cons), costs in sorted(merged.items()))
    return Units(unit_of, members, compute, memory, edges, links)


def device_graph_order(graph: CostGraph, device_of: Sequence[int]) -> tuple[list[int], bool]:
    """Used devices in a pipeline order, and whether tensors only flow forward.

    Topological order of the device graph (an edge where a tensor crosses)
    when it is acyclic; otherwise devices ordered by their first node.
    """
    used = sorted(set(device_of))
    succ: dict[int, set[int]] = {d: set() for d in used}
    indeg = {d: 0 for d in used}
    for u, v in graph.edges():
        a, b = device_of[u], device_of[v]
        if a != b and b not in succ[a]:
            succ[a].add(b)
            indeg[b] += 1
    first: dict[int, int] = {}
    for v, d in enumerate(device_of):
        first.setdefault(d, v)
    ready = [(first[d], d) for d in used if indeg[d] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, d = heapq.heappop(ready)
        order.append(d)
        for e in succ[d]:
            indeg[e] -= 1
            if indeg[e] == 0:
                heapq.heappush(ready, (first[e], e))
    if len(order) == len(used):
        return order, True
    return sorted(used, key=first.__getitem__), False


def plan_from_devices(
    graph: CostGraph,
    devices: Devices,
    device_of: Sequence[int],
    *,
    solver: str,
    lower_bound: float = 0.0,
    notes: tuple[str, ...] = (),
) -> Plan:
    """A throughput plan from node -> device, stages in pipeline order where one exists."""
    order, forward = device_graph_order(graph, device_of)
    pos = {d: i for i, d in enumerate(order)}
    stage_of = [pos[device_of[v]] for v in range(graph.n)]
    return make_plan(
        graph, devices, stage_of, order, solver=solver, lower_bound=lower_bound, contiguous=forward, notes=notes
    )


def fits_devices(graph: CostGraph, devices: Devices, plan: Plan) -> bool:
    """Whether a plan (say, a user's warm start) respects memory, kinds and groups."""
    rescored = make_plan(graph, devices, plan.stage_of, plan.stage_device, solver="check", contiguous=False)
    try:
        check_plan(graph, devices, rescored, contiguous=False)
    except PlanError:
        return False
    return True


def _alap_order(units: Units) -> list[int]:
    """A topological order that puts every unit as late as it can go.

    Weights and shape computations then sit next to their consumer instead of
    at the front, so prefixes of the order make far cheaper cuts.
    """
    succ_count = [0] * units.count
    pred: list[list[int]] = [[] for _ in range(units.count)]
    for a, b in units.edges:
        succ_count[a] += 1
        pred[b].append(a)
    ready = [-u for u in range(units.count) if succ_count[u] == 0]
    heapq.heapify(ready)
    rev = []
    while ready:
        u = -heapq.heappop(ready)
        rev.append(u)
        for a in pred[u]:
            succ_count[a] -= 1
            if succ_count[a] == 0:
                heapq.heappush(ready, -a)
    return rev[::-1]


def _cut_costs(units: Units, order: Sequence[int]) -> list[float]:
    """cut[i]: transfer time of links crossing between order[:i+1] and the rest."""
    pos = [0] * units.count
    for i, u in enumerate(order):
        pos[u] = i
    diff = [0.0] * (units.count + 1)
    for link in units.links:
        first, last = pos[link.producer], max(pos[c] for c in link.consumers)
        if last > first:
            diff[first] += link.cost
            diff[last] -= link.cost
    cut, running = [], 0.0
    for i in range(units.count):
        running += diff[i]
        cut.append(running)
    return cut


def _fill(
    units: Units,
    kinds: Sequence,
    order: Sequence[int],
    device_order: Sequence[int],
    target: float,
    window: float,
    cut: Sequence[float],
) -> list[int] | None:
    """Walk units in the given topological order, closing each device near the target load.

    A device may end anywhere its compute lies within ``window`` of the
    target; among those ends the cheapest cut wins (comm on operator graphs
    dwarfs compute). It must end earlier when the next unit does not fit its
    memory or cannot run there. Returns unit -> device, or None when devices
    run out.
    """
    U = units.count
    dev_of = [-1] * U
    s = 0
    for slot, d in enumerate(device_order):
        if s >= U:
            break
        kind = kinds[d]
        last = slot == len(device_order) - 1
        load = mem = 0.0
        ends: list[int] = []  # feasible ends (inclusive) inside the window
        reach = s - 1  # furthest feasible end
        for e in range(s, U):
            c = units.compute[kind.name][order[e]]
            if math.isinf(c) or mem + units.memory[order[e]] > kind.memory:
                break
            load += c
            mem += units.memory[order[e]]
            if not last and load > target * (1 + window) and reach >= s:
                break
            reach = e
            if load >= target * (1 - window):
                ends.append(e)
        if last:
            if reach < U - 1:
                return None
            end = reach
        elif ends:
            end = min(ends, key=lambda e: (cut[e], abs(e - ends[0])))
        else:
            end = reach
        for i in range(s, end + 1):
            dev_of[order[i]] = d
        s = end + 1
    return dev_of if s >= U else None


def solve_greedy(
    graph: CostGraph,
    devices: Devices,
    *,
    slack: Sequence[float] = (1.0, 1.05, 1.1, 1.2, 1.35, 1.5),
    windows: Sequence[float] = (0.0, 0.1, 0.25),
) -> Plan:
    """Fill devices in topological order up to about an equal share of the compute.

    The share is total compute (each node on its fastest kind) over m
    devices, times each factor in ``slack``, for every m up to the device
    count -- fewer than all devices pays when a slow kind (the paper's CPU)
    should take little or nothing -- each device closing at the cheapest cut
    within each ``window`` of that share. Units are walked in two topological
    orders (as soon and as late as possible) and every order of the device
    kinds is tried; the plan with the smallest max load is kept. The result
    is contiguous.
    """
    units = units_of(graph, merge_cycles=True)
    kinds = devices.expanded()
    if units.count == 0:
        return make_plan(graph, devices, [], [], solver="greedy")
    best_unit = [min(units.compute[k.name][u] for k in devices.kinds if k.count) for u in range(units.count)]
    total = math.fsum(c for c in best_unit if not math.isinf(c))
    blocks = [[d for d, k in enumerate(kinds) if k.name == kd.name] for kd in devices.kinds if kd.count]
    best: tuple[float, list[int]] | None = None
    tried: set[tuple[int, ...]] = set()
    orders = [list(range(units.count)), _alap_order(units)]
    cuts = [_cut_costs(units, order) for order in orders]
    # Kind orders grow factorially; a couple of dozen covers every realistic device file.
    perms = list(itertools.islice(itertools.permutations(blocks), 24))
    for perm, (order, cut) in itertools.product(perms, zip(orders, cuts)):
        device_order = [d for block in perm for d in block]
        for m in range(1, devices.count + 1):
            for factor, window in itertools.product(slack, windows):
                dev_of = _fill(units, kinds, order, device_order, total / m * factor, window, cut)
                if dev_of is None or tuple(dev_of) in tried:
                    continue
                tried.add(tuple(dev_of))
                node_dev = [dev_of[units.unit_of[v]] for v in range(graph.n)]
                value = max_load(graph, devices, node_dev, list(range(len(kinds))))
                if best is None or value < best[0]:
                    best = (value, node_dev)
    if best is None:
        raise InfeasibleError("greedy placement found no device order that fits memory and supported kinds")
    return plan_from_devices(graph, devices, best[1], solver="greedy")


def evaluate_expert(graph: CostGraph, devices: Devices, split_path: str | Path) -> Plan:
    """Score a hand-made split in the paper's format.

    The file's accelerator slots go to the ``acc`` devices in order and its
    CPU slots to the ``cpu`` devices in order; stages are put in pipeline
    order when tensors only flow forward between them.
    """
    from onnxsplit.paperformat import load_expert_split

    slot_of, slot_kinds = load_expert_split(split_path, graph)
    expanded = devices.expanded()
    free = {k.name: [d for d, e in enumerate(expanded) if e.name == k.name] for k in devices.kinds}
    slot_device = []
    for slot, kind in enumerate(slot_kinds):
        if not free.get(kind):
            raise PlanError(f"{split_path}: slot {slot} needs a {kind!r} device, and there are no more of them")
        slot_device.append(free[kind].pop(0))
    device_of = [slot_device[slot_of[v]] for v in range(graph.n)]
    return plan_from_devices(graph, devices, device_of, solver="expert", lower_bound=simple_lower_bound(graph, devices))
