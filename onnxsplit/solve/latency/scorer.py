"""The latency scorer: a plan's pieces, their list schedule, and one sample's end-to-end time.

The model (after the paper's latency IP):

* A device that does not communicate (the paper's CPU) has unlimited cores:
  each of its nodes starts as soon as its inputs are ready.
* Every other device runs its nodes as convex *pieces*, one after another;
  a piece is an atomic call lasting its compute plus the transfer time of
  every tensor it receives (producer outside the piece, a consumer inside)
  and sends (producer inside, a consumer outside), and it starts once every
  tensor it receives is ready. Pieces are independent subgraphs, so a tensor
  between two pieces of the same device is paid like any other; with one
  piece per device this is the max-load model's communication.
* A tensor is ready when the piece (or CPU node) producing it finishes.
* Latency is the latest finish.

The scorer cuts each device's node set into as few pieces as it can
greedily, keeping the graph of pieces acyclic (so pieces are convex and no
two calls wait on each other), and list-schedules them.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import PlanError
from onnxsplit.solve.plan import Objective, Plan, plan_from_devices


@dataclass(frozen=True)
class Piece:
    device: int
    nodes: tuple[int, ...]
    start: float
    finish: float


@dataclass(frozen=True)
class Schedule:
    pieces: tuple[Piece, ...]
    finish: tuple[float, ...]  # per node: when its output is ready

    @property
    def latency(self) -> float:
        return max(self.finish, default=0.0)


def _reaches(succ: list[set[int]], src: int, targets: set[int]) -> bool:
    seen = {src}
    stack = [src]
    while stack:
        p = stack.pop()
        if p in targets:
            return True
        for q in succ[p]:
            if q not in seen:
                seen.add(q)
                stack.append(q)
    return False


def cut_pieces(graph: CostGraph, devices: Devices, device_of: list[int]) -> list[tuple[int, list[int]]]:
    """Each device's nodes as few (greedily) pieces as keep the piece graph acyclic.

    Nodes of a quiet device (one that pays no communication) are each their
    own piece. A node joins the most recent piece of its device that it can
    join without closing a cycle: joining piece P adds an edge Q -> P for
    each piece Q feeding the node, which is a cycle exactly when P already
    reaches some such Q.
    """
    kinds = devices.expanded()
    preds = graph.predecessors()
    piece_of = [-1] * graph.n
    pieces: list[tuple[int, list[int]]] = []
    succ: list[set[int]] = []
    by_device: dict[int, list[int]] = {}
    for v in range(graph.n):
        d = device_of[v]
        feeding = {piece_of[u] for u in preds[v]}
        chosen = -1
        if kinds[d].communicates:
            for p in reversed(by_device.get(d, [])):
                if not _reaches(succ, p, feeding - {p}):
                    chosen = p
                    break
        if chosen < 0:
            chosen = len(pieces)
            pieces.append((d, []))
            succ.append(set())
            by_device.setdefault(d, []).append(chosen)
        pieces[chosen][1].append(v)
        piece_of[v] = chosen
        for q in feeding - {chosen}:
            succ[q].add(chosen)
    return pieces


def schedule(
    graph: CostGraph,
    devices: Devices,
    device_of: list[int],
    pieces: list[tuple[int, list[int]]] | None = None,
) -> Schedule:
    """Start and finish of every piece, by list scheduling in order of earliest start."""
    kinds = devices.expanded()
    if pieces is None:
        pieces = cut_pieces(graph, devices, device_of)
    piece_of = [-1] * graph.n
    for i, (_, nodes) in enumerate(pieces):
        for v in nodes:
            piece_of[v] = i
    P = len(pieces)
    duration = [0.0] * P
    for i, (d, nodes) in enumerate(pieces):
        duration[i] = math.fsum(graph.compute[kinds[d].name][v] for v in nodes)
    feeds: list[set[int]] = [set() for _ in range(P)]
    for t in graph.tensors:
        src = piece_of[t.producer]
        dests = {piece_of[c] for c in t.consumers} - {src}
        if not dests:
            continue
        if kinds[pieces[src][0]].communicates:
            duration[src] += t.cost
        for p in dests:
            feeds[p].add(src)
            if kinds[pieces[p][0]].communicates:
                duration[p] += t.cost
    waiting = [len(f) for f in feeds]
    fed: list[list[int]] = [[] for _ in range(P)]
    for p, f in enumerate(feeds):
        for q in f:
            fed[q].append(p)
    ready_at = [0.0] * P
    free_at: dict[int, float] = {}
    start = [0.0] * P
    finish = [0.0] * P
    ready = [(0.0, p) for p in range(P) if waiting[p] == 0]
    heapq.heapify(ready)
    done = 0
    while ready:
        # A device is busy until its last call ends; quiet devices never are.
        _, p = heapq.heappop(ready)
        d = pieces[p][0]
        s = ready_at[p]
        if kinds[d].communicates:
            s = max(s, free_at.get(d, 0.0))
            free_at[d] = s + duration[p]
        start[p], finish[p] = s, s + duration[p]
        done += 1
        for q in fed[p]:
            ready_at[q] = max(ready_at[q], finish[p])
            waiting[q] -= 1
            if waiting[q] == 0:
                heapq.heappush(ready, (ready_at[q], q))
    if done != P:
        raise PlanError("the pieces of this plan wait on each other")
    node_finish = tuple(finish[piece_of[v]] for v in range(graph.n))
    out = tuple(Piece(d, tuple(nodes), start[i], finish[i]) for i, (d, nodes) in enumerate(pieces))
    return Schedule(out, node_finish)


def plan_devices(plan: Plan) -> list[int]:
    return [plan.stage_device[s] for s in plan.stage_of]


def latency_of(graph: CostGraph, devices: Devices, plan: Plan) -> float:
    """End-to-end time of one sample under the plan (see the module docstring)."""
    return schedule(graph, devices, plan_devices(plan)).latency


def latency_plan(
    graph: CostGraph,
    devices: Devices,
    device_of: list[int],
    *,
    solver: str,
    lower_bound: float = 0.0,
    notes: tuple[str, ...] = (),
) -> Plan:
    """A plan whose value is its latency (``loads`` keep the max-load view)."""
    base = plan_from_devices(graph, devices, device_of, solver=solver, notes=notes)
    value = schedule(graph, devices, device_of).latency
    return replace(base, value=value, lower_bound=min(lower_bound, value), objective=Objective.LATENCY)
