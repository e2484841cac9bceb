"""Single-sample latency: a scorer for a given plan and an integer program.

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
import logging
import math
from dataclasses import dataclass, replace

import mip

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import PlanError
from onnxsplit.solve.ip import crossing, new_model, no_solution, run_model
from onnxsplit.solve.plan import Objective, Plan, Solver, fits_devices, plan_from_devices

log = logging.getLogger(__name__)


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


def critical_path(graph: CostGraph, devices: Devices) -> float:
    """Longest path with every node at its fastest kind: no placement beats it.

    Along a path each node computes after its predecessor's output is ready,
    whether the two share an atomic piece or not.
    """
    best = [min((graph.compute[k.name][v] for k in devices.kinds if k.count), default=0.0) for v in range(graph.n)]
    best = [0.0 if math.isinf(c) else c for c in best]
    finish = [0.0] * graph.n
    preds = graph.predecessors()
    for v in range(graph.n):
        finish[v] = best[v] + max((finish[u] for u in preds[v]), default=0.0)
    return max(finish, default=0.0)


def solve_latency_ip(
    graph: CostGraph,
    devices: Devices,
    *,
    q: int = 1,
    time_limit: float = 60.0,
    warm_start: Plan | None = None,
    solver_name: str = "cbc",
    threads: int = 1,
    rel_gap: float = 1e-7,
) -> Plan:
    """Minimise latency with up to ``q`` pieces per communicating device.

    Variables: x[v, s] puts node v in piece slot s (q slots per communicating
    device) or on a quiet device; each slot has a start time and a duration
    (compute plus the transfers crossing its boundary); node finish times
    respect edges with big-M terms; a device's slots run in slot order.
    Co-location groups are kept in one piece. Meant for small graphs; the
    returned value is re-scored with :func:`latency_of`.
    """
    if q < 1:
        raise PlanError(f"q must be at least 1, got {q}")
    kinds = devices.expanded()
    n = graph.n
    preds = graph.predecessors()
    talkers = [d for d, k in enumerate(kinds) if k.communicates]
    quiet = [d for d, k in enumerate(kinds) if not k.communicates]
    slots = [(d, j) for d in talkers for j in range(q)]
    finite = [[c for c in (graph.compute[k.name][v] for k in devices.kinds) if math.isfinite(c)] for v in range(n)]
    # No schedule without idle time lasts longer than every duration in a row.
    transfers = math.fsum(t.cost for t in graph.tensors)
    M = math.fsum(max(c, default=0.0) for c in finite) + (len(slots) + 1) * transfers + 1.0

    model = new_model(solver_name, threads=threads, time_limit=time_limit, rel_gap=rel_gap)

    def allowed(v: int, d: int) -> bool:
        return math.isfinite(graph.compute[kinds[d].name][v]) and graph.memory[v] <= kinds[d].memory

    xs = [[model.add_var(var_type=mip.BINARY, ub=1.0 if allowed(v, d) else 0.0) for d, _ in slots] for v in range(n)]
    xq = [[model.add_var(var_type=mip.BINARY, ub=1.0 if allowed(v, d) else 0.0) for d in quiet] for v in range(n)]
    for v in range(n):
        model += mip.xsum(xs[v]) + mip.xsum(xq[v]) == 1
    for group in graph.groups:
        for v in group[1:]:
            for s in range(len(slots)):
                model += xs[v][s] == xs[group[0]][s]
            for i in range(len(quiet)):
                model += xq[v][i] == xq[group[0]][i]
    for d in talkers + quiet:
        if math.isfinite(kinds[d].memory) and math.fsum(graph.memory) > kinds[d].memory:
            if d in quiet:
                on = [xq[v][quiet.index(d)] for v in range(n)]
            else:
                on = [mip.xsum(xs[v][s] for s, (e, _) in enumerate(slots) if e == d) for v in range(n)]
            model += mip.xsum(graph.memory[v] / kinds[d].memory * on[v] for v in range(n)) <= 1
    F = [model.add_var(lb=0.0, ub=M) for _ in range(n)]
    start = [model.add_var(lb=0.0, ub=M) for _ in slots]
    dur = []
    for s, (d, _) in enumerate(slots):
        name = kinds[d].name
        work = [graph.compute[name][v] * xs[v][s] for v in range(n) if allowed(v, d)]
        comm = []
        for t in graph.tensors:
            if t.cost <= 0:
                continue
            comm.append(t.cost * crossing(model, xs[t.producer][s], [xs[b][s] for b in t.consumers]))
        dur.append(mip.xsum(work + comm))
    # One finish variable per slot keeps the per-node rows short (the duration
    # has a term for every node and tensor).
    fin = [model.add_var(lb=0.0, ub=M) for _ in slots]
    for s in range(len(slots)):
        model += fin[s] == start[s] + dur[s]
    for s, (d, j) in enumerate(slots):
        for v in range(n):
            model += F[v] >= fin[s] - M * (1 - xs[v][s])
            for u in preds[v]:
                # v's piece waits for u unless u is in the same piece.
                model += start[s] >= F[u] - M * (1 - xs[v][s] + xs[u][s])
        if j + 1 < q:
            model += start[s + 1] >= fin[s]
    for v in range(n):
        on_quiet = mip.xsum(xq[v])
        own = mip.xsum(graph.compute[kinds[d].name][v] * xq[v][i] for i, d in enumerate(quiet) if allowed(v, d))
        model += F[v] >= own
        for u in preds[v]:
            model += F[v] >= F[u] + own - M * (1 - on_quiet)
    for v in range(n):
        for u in preds[v]:
            # Implied for integral x; stated so the relaxation sees precedence.
            model += F[v] >= F[u]
    L = model.add_var(lb=critical_path(graph, devices))
    for v in range(n):
        model += L >= F[v]
    model.objective = mip.minimize(L)

    start_values = None
    if warm_start is not None:
        start_values = _latency_start(graph, devices, warm_start, q, slots, quiet, xs, xq)
    outcome = run_model(model, time_limit=time_limit, start=start_values)
    notes = (f"{outcome.status.name.lower()} in {outcome.seconds:.1f} s", f"ip objective {model.objective_value}")
    plan = None
    if model.num_solutions:
        device_of = []
        for v in range(n):
            options = [((xs[v][s].x or 0.0), d) for s, (d, _) in enumerate(slots)]
            options += [((xq[v][i].x or 0.0), d) for i, d in enumerate(quiet)]
            device_of.append(max(options)[1])
        plan = latency_plan(graph, devices, device_of, solver=Solver.IP_LATENCY, lower_bound=outcome.bound, notes=notes)
    if warm_start is not None and fits_devices(graph, devices, warm_start):
        kept = notes + ("warm start kept",)
        base = latency_plan(graph, devices, plan_devices(warm_start), solver=Solver.IP_LATENCY, notes=kept)
        if plan is None or base.value < plan.value:
            plan = replace(base, lower_bound=min(outcome.bound, base.value))
    if plan is None:
        raise no_solution(outcome, "ip-latency")
    return plan


def _latency_start(graph, devices, plan, q, slots, quiet, xs, xq):
    device_of = plan_devices(plan)
    sched = schedule(graph, devices, device_of)
    kinds = devices.expanded()
    per_device: dict[int, list[Piece]] = {}
    for piece in sched.pieces:
        if kinds[piece.device].communicates:
            per_device.setdefault(piece.device, []).append(piece)
    if any(len(p) > q for p in per_device.values()):
        log.warning("warm start needs more than %d pieces on a device; ignoring it", q)
        return None
    slot_of = {}
    for d, ps in per_device.items():
        for j, piece in enumerate(sorted(ps, key=lambda p: p.start)):
            for v in piece.nodes:
                slot_of[v] = slots.index((d, j))
    values = []
    for v in range(graph.n):
        for s in range(len(slots)):
            values.append((xs[v][s], 1.0 if slot_of.get(v) == s else 0.0))
        for i, d in enumerate(quiet):
            values.append((xq[v][i], 1.0 if device_of[v] == d and v not in slot_of else 0.0))
    return values
