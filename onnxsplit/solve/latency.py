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
import itertools
import logging
import math
from dataclasses import dataclass, replace

import mip
import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError, PlanError
from onnxsplit.solve.ip import crossing, new_model, no_solution, run_model
from onnxsplit.solve.plan import (
    Objective,
    Plan,
    Solver,
    fits_devices,
    plan_from_devices,
)

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


def _fastest(graph: CostGraph, devices: Devices) -> list[float]:
    """Each node's time at its fastest kind that has devices (0 where none can run it)."""
    best = [min((graph.compute[k.name][v] for k in devices.kinds if k.count), default=0.0) for v in range(graph.n)]
    return [0.0 if math.isinf(c) else c for c in best]


def _heads(graph: CostGraph, weight: list[float]) -> list[float]:
    """Heaviest path ending at each node, the node's own weight included."""
    head = [0.0] * graph.n
    preds = graph.predecessors()
    for v in range(graph.n):
        head[v] = weight[v] + max((head[u] for u in preds[v]), default=0.0)
    return head


def critical_path(graph: CostGraph, devices: Devices) -> float:
    """Longest path with every node at its fastest kind: no placement beats it.

    Along a path each node computes after its predecessor's output is ready,
    whether the two share an atomic piece or not.
    """
    return max(_heads(graph, _fastest(graph, devices)), default=0.0)


def _critical_chain(graph: CostGraph, devices: Devices) -> list[int]:
    """The nodes of one longest path at fastest times, in order."""
    return _heaviest_chain(graph, _fastest(graph, devices))


def _heaviest_chain(graph: CostGraph, weight: list[float]) -> list[int]:
    """The nodes of one path of greatest total node weight, in order."""
    head = _heads(graph, weight)
    preds = graph.predecessors()
    v = max(range(graph.n), key=head.__getitem__)
    chain = [v]
    while preds[v]:
        v = max(preds[v], key=head.__getitem__)
        chain.append(v)
    return chain[::-1]


def _path_bound(graph: CostGraph, devices: Devices, chain: list[int], *, q: int) -> float:
    """The least time the calls along ``chain`` can take, whatever the rest of the graph does.

    Along a path, calls run one after another. Cut the path into runs: a run
    on a communicating device is (part of) one piece, which computes the
    run's nodes, receives the tensor entering the run and sends the one
    leaving it; a node on a quiet device computes. Minimise the sum over
    runs with each run's own memory within its device's and at most q runs
    per communicating device: every plan pays at least that.
    """
    kinds = [k for k in devices.kinds if k.count]
    talkers = [k for k in kinds if k.communicates]
    quiet = [k for k in kinds if not k.communicates]
    m = len(chain)
    runs = q * sum(k.count for k in talkers)
    into = [0.0] * (m + 1)  # into[j]: transfer from chain[j-1] to chain[j]; 0 at both ends
    for j in range(1, m):
        u, v = chain[j - 1], chain[j]
        into[j] = math.fsum(t.cost for t in graph.tensors if t.producer == u and v in t.consumers)
    edge = np.array(into)
    alone = [min((graph.compute[k.name][v] for k in quiet), default=math.inf) for v in chain]
    prefix = {k.name: np.concatenate([[0.0], np.cumsum([graph.compute[k.name][v] for v in chain])]) for k in talkers}
    memory = np.concatenate([[0.0], np.cumsum([graph.memory[v] for v in chain])])
    best = np.full((m + 1, runs + 1), math.inf)
    best[0, 0] = 0.0
    for i in range(m):
        best[i + 1] = np.minimum(best[i + 1], best[i] + alone[i])
        if not runs:
            continue
        cost = np.full(m - i, math.inf)
        for k in talkers:
            # inf - inf is nan where an unsupported node sits on both sides; nan never wins a minimum.
            with np.errstate(invalid="ignore"):
                work = prefix[k.name][i + 1:] - prefix[k.name][i]
            fits = memory[i + 1:] - memory[i] <= k.memory
            cost = np.fmin(cost, np.where(fits, work, math.inf))
        cost = cost + edge[i] + edge[i + 1:]
        best[i + 1:, 1:] = np.fmin(best[i + 1:, 1:], best[i, :-1][None, :] + cost[:, None])
    return float(np.min(best[m]))


def latency_lower_bound(graph: CostGraph, devices: Devices, *, q: int = 1) -> tuple[float, str]:
    """A latency no placement with at most ``q`` pieces per device beats, and where it comes from.

    The best of: the critical path; the calls along the critical path
    (:func:`_path_bound`), which see the hand-offs memory forces on it; and,
    when every device communicates (so each runs its nodes one after
    another), the total work over the device count.
    """
    bound, source = critical_path(graph, devices), "critical path"
    if graph.n:
        fastest = _fastest(graph, devices)
        # Memory forces the hand-offs, so a path heavy in memory can bound better than the critical one.
        scale = math.fsum(fastest) / max(math.fsum(graph.memory), 1e-300)
        mixed = [c + scale * m for c, m in zip(fastest, graph.memory)]
        for weight, what in ((fastest, "the critical path"), (list(graph.memory), "the path heaviest in memory"),
                             (mixed, "the path heaviest in time plus memory")):
            along = _path_bound(graph, devices, _heaviest_chain(graph, weight), q=q)
            if along > bound * (1 + 1e-12):
                bound, source = along, f"hand-offs along {what}"
    if all(k.communicates for k in devices.kinds if k.count):
        work = math.fsum(_fastest(graph, devices)) / devices.count
        if work > bound:
            bound, source = work, "total work / devices"
    return bound, source


# ----------------------------------------------------------------------------- heuristic


def _priority_order(graph: CostGraph, key) -> list[int]:
    """The topological order that always takes the ready node with the smallest ``key(node, step)``."""
    preds = graph.predecessors()
    succ = graph.successors()
    waiting = [len(p) for p in preds]
    ready = [(key(v, 0), v) for v in range(graph.n) if waiting[v] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, v = heapq.heappop(ready)
        order.append(v)
        for w in succ[v]:
            waiting[w] -= 1
            if waiting[w] == 0:
                heapq.heappush(ready, (key(w, len(order)), w))
    return order


def _alap_order(graph: CostGraph) -> list[int]:
    """Every node as late as it can go, so cheap side inputs sit next to their reader."""
    succ = graph.successors()
    preds = graph.predecessors()
    left = [len(s) for s in succ]
    ready = [-v for v in range(graph.n) if left[v] == 0]
    heapq.heapify(ready)
    rev: list[int] = []
    while ready:
        v = -heapq.heappop(ready)
        rev.append(v)
        for u in preds[v]:
            left[u] -= 1
            if left[u] == 0:
                heapq.heappush(ready, -u)
    return rev[::-1]


def _orders(graph: CostGraph, devices: Devices) -> list[list[int]]:
    """Priority rules for the list of nodes the heuristic cuts into runs."""
    fastest = _fastest(graph, devices)
    # Tails: heaviest path from each node to a sink, the critical-path rule of list scheduling.
    tail = [0.0] * graph.n
    succ = graph.successors()
    for v in reversed(range(graph.n)):
        tail[v] = fastest[v] + max((tail[w] for w in succ[v]), default=0.0)
    return [
        list(range(graph.n)),
        _alap_order(graph),
        _priority_order(graph, lambda v, step: -step),  # depth first: finish a branch before the next
        _priority_order(graph, lambda v, step: -tail[v]),
    ]


def _quiet_choice(graph: CostGraph, devices: Devices) -> list[tuple[float, int]]:
    """Per node, the quiet device (and its time) a run of the heuristic would send it to; groups share one."""
    kinds = devices.expanded()
    quiet = [d for d, k in enumerate(kinds) if not k.communicates]
    first = {}
    for d in quiet:
        first.setdefault(kinds[d].name, d)
    choice = [(math.inf, -1)] * graph.n
    members = [list(g) for g in graph.groups]
    grouped = {v for g in members for v in g}
    members += [[v] for v in range(graph.n) if v not in grouped]
    for group in members:
        options = [(math.fsum(graph.compute[name][v] for v in group), d) for name, d in first.items()]
        if options:
            cost, d = min(options)
            for v in group:
                choice[v] = (graph.compute[kinds[d].name][v], d) if math.isfinite(cost) else (math.inf, -1)
    return choice


def _segment(graph: CostGraph, devices: Devices, order: list[int]) -> list[int] | None:
    """Cut ``order`` into consecutive runs, run k on the k-th communicating device, single nodes on a quiet one.

    Minimises the sum of every run's duration (compute plus its transfers)
    and every quiet node's time: no schedule of the result is slower than
    that sum, and when the graph is one chain it is the latency. Runs never
    split a co-location group and respect memory and supported operators.
    None when no such cut exists.
    """
    kinds = devices.expanded()
    talkers = [d for d, k in enumerate(kinds) if k.communicates]
    n, K = graph.n, len(talkers)
    pos = [0] * n
    for i, v in enumerate(order):
        pos[v] = i
    produced: list[list[int]] = [[] for _ in range(n)]
    read: list[list[int]] = [[] for _ in range(n)]
    last = [max(pos[c] for c in t.consumers) for t in graph.tensors]
    for ti, t in enumerate(graph.tensors):
        produced[t.producer].append(ti)
        for c in t.consumers:
            read[c].append(ti)
    group_of = [-1] * n
    for gi, g in enumerate(graph.groups):
        for v in g:
            group_of[v] = gi
    quiet = _quiet_choice(graph, devices)
    names = sorted({kinds[d].name for d in talkers})
    roomiest = max((kinds[d].memory for d in talkers), default=0.0)
    # seg[name][i][j - i - 1]: duration of the run order[i:j] on that kind (inf where it may not go).
    seg = {name: [] for name in names}
    for i in range(n):
        comm = 0.0
        expiring: dict[int, float] = {}
        counted: set[int] = set()
        groups_open: dict[int, int] = {}
        memory = 0.0
        work = {name: 0.0 for name in names}
        rows = {name: np.full(n - i, math.inf) for name in names}
        for j in range(i, n):
            v = order[j]
            comm -= expiring.pop(j, 0.0)
            for ti in produced[v]:
                if last[ti] > j:
                    comm += graph.tensors[ti].cost
                    expiring[last[ti]] = expiring.get(last[ti], 0.0) + graph.tensors[ti].cost
            for ti in read[v]:
                if pos[graph.tensors[ti].producer] < i and ti not in counted:
                    counted.add(ti)
                    comm += graph.tensors[ti].cost
            memory += graph.memory[v]
            if memory > roomiest:
                break
            g = group_of[v]
            if g >= 0:
                groups_open[g] = groups_open.get(g, 0) + 1
                if groups_open[g] == len(graph.groups[g]):
                    del groups_open[g]
            for name in names:
                work[name] += graph.compute[name][v]
                if not groups_open and math.isfinite(work[name]):
                    rows[name][j - i] = work[name] + comm
        for name in names:
            seg[name].append(rows[name])
    kind_of = [kinds[d].name for d in talkers]
    cap = [kinds[d].memory for d in talkers]
    best = np.full((n + 1, K + 1), math.inf)
    best[0, 0] = 0.0
    parent = np.full((n + 1, K + 1), -1, dtype=np.int64)  # start of the run ending here; -2: quiet node; -3: skip
    prefix_memory = np.concatenate([[0.0], np.cumsum([graph.memory[v] for v in order])])
    for i in range(n + 1):
        for k in range(1, K + 1):
            if best[i, k - 1] < best[i, k]:
                best[i, k], parent[i, k] = best[i, k - 1], -3
        if i == n:
            break
        cost = quiet[order[i]][0]
        for k in range(K + 1):
            if best[i, k] + cost < best[i + 1, k]:
                best[i + 1, k], parent[i + 1, k] = best[i, k] + cost, -2
        for k in range(1, K + 1):
            row = seg[kind_of[k - 1]][i]
            if math.isfinite(cap[k - 1]):
                row = np.where(prefix_memory[i + 1:] - prefix_memory[i] <= cap[k - 1], row, math.inf)
            cand = best[i, k - 1] + row
            target = best[i + 1:, k]
            better = cand < target
            target[better] = cand[better]
            parent[i + 1:, k][better] = i
    k = int(np.argmin(best[n]))
    if math.isinf(best[n, k]):
        return None
    device_of = [-1] * n
    j = n
    while j > 0 or k > 0:
        p = int(parent[j, k])
        if p == -3:
            k -= 1
        elif p == -2:
            device_of[order[j - 1]] = quiet[order[j - 1]][1]
            j -= 1
        else:
            for v in order[p:j]:
                device_of[v] = talkers[k - 1]
            j, k = p, k - 1
    return device_of


def latency_heuristic(graph: CostGraph, devices: Devices, *, candidates: tuple[Plan, ...] = ()) -> Plan:
    """The best latency among list-scheduled plans: runs cut from several topological orders, and ``candidates``.

    Each order (node index, as late as possible, depth first, longest tail
    first) is cut into runs by :func:`_segment`; every plan is scored by
    :func:`schedule`. Candidates that do not fit the devices are skipped.
    Raises InfeasibleError when nothing fits.
    """
    plans = []
    for rule, order in zip(("index", "alap", "depth-first", "longest-tail"), _orders(graph, devices)):
        device_of = _segment(graph, devices, order)
        if device_of is None:
            continue
        plan = latency_plan(graph, devices, device_of, solver=Solver.GREEDY, notes=(f"runs cut from the {rule} order",))
        if fits_devices(graph, devices, plan):
            plans.append(plan)
    for plan in candidates:
        if fits_devices(graph, devices, plan):
            plans.append(latency_plan(graph, devices, plan_devices(plan), solver=plan.solver, notes=plan.notes))
    if not plans:
        raise InfeasibleError("no placement fits the devices' memory and supported operators")
    return min(plans, key=lambda p: p.value)


def _max_pieces(graph: CostGraph, devices: Devices, device_of: list[int]) -> int:
    """The most pieces :func:`cut_pieces` gives any communicating device."""
    kinds = devices.expanded()
    count: dict[int, int] = {}
    for d, _ in cut_pieces(graph, devices, device_of):
        if kinds[d].communicates:
            count[d] = count.get(d, 0) + 1
    return max(count.values(), default=0)


def _twins(devices: list[int], kinds: tuple) -> list[tuple[int, int]]:
    """Consecutive pairs of devices of one kind: swapping them changes no plan's latency."""
    return [(a, b) for a, b in itertools.pairwise(devices) if kinds[a] is kinds[b]]


def _canonical(device_of: list[int], twins: list[tuple[int, int]], column_of: dict[int, int]) -> list[int]:
    """The same plan with twin devices ordered by their lowest node and quiet devices on their column."""
    runs: list[list[int]] = []
    for a, b in twins:
        if runs and runs[-1][-1] == a:
            runs[-1].append(b)
        else:
            runs.append([a, b])
    rename = {}
    for run in runs:
        lowest = {d: min((v for v, e in enumerate(device_of) if e == d), default=len(device_of)) for d in run}
        for new, old in zip(run, sorted(run, key=lowest.__getitem__)):
            rename[old] = new
    out = [rename.get(d, d) for d in device_of]
    return [column_of.get(d, d) for d in out]


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

    First :func:`latency_heuristic` (with ``warm_start`` among its
    candidates) gives an incumbent U and :func:`latency_lower_bound` a bound;
    when they meet no integer program is built.

    Variables: x[v, s] puts node v in piece slot s (q slots per communicating
    device) or on a quiet device; each slot has a start time and a duration
    (compute plus the transfers crossing its boundary); node finish times
    respect edges with big-M terms; a device's slots run in slot order.
    Co-location groups are kept in one piece. On top of that, each valid for
    every plan no slower than U (the optimum among them):

    * big-M is U and every time is at most U;
    * a node finishes no earlier than its heaviest path of fastest times;
    * devices of one kind are ordered by their lowest node, a device's slot
      j + 1 is used only after slot j, and quiet devices of a kind whose
      memory never binds are one column (they have unlimited cores);
    * along the critical path, latency is at least the compute of its nodes
      where they run plus the transfers between consecutive nodes in
      different pieces (pieces on a path run one after another);
    * latency is at least every slot's finish.

    The value is re-scored with :func:`latency_of`; the lower bound is the
    better of the solver's dual bound and the simple bound, and ``notes``
    name its source.
    """
    if q < 1:
        raise PlanError(f"q must be at least 1, got {q}")
    kinds = devices.expanded()
    n = graph.n
    preds = graph.predecessors()
    talkers = [d for d, k in enumerate(kinds) if k.communicates]
    quiet = [d for d, k in enumerate(kinds) if not k.communicates]
    simple, simple_source = latency_lower_bound(graph, devices, q=q)

    pool = []
    try:
        pool.append(latency_heuristic(graph, devices))
    except InfeasibleError:
        pass
    if warm_start is not None and fits_devices(graph, devices, warm_start):
        pool.append(latency_plan(graph, devices, plan_devices(warm_start), solver=Solver.IP_LATENCY,
                                 notes=("warm start",)))
    incumbent = min(pool, key=lambda p: p.value, default=None)
    if incumbent is not None and incumbent.value <= simple * (1 + 1e-12) + 1e-12:
        notes = incumbent.notes + (f"optimal: equals the lower bound from {simple_source}; no integer program needed",)
        return replace(incumbent, solver=Solver.IP_LATENCY, lower_bound=min(simple, incumbent.value), notes=notes)
    start_plan = min((p for p in pool if _max_pieces(graph, devices, plan_devices(p)) <= q),
                     key=lambda p: p.value, default=None)

    slots = [(d, j) for d in talkers for j in range(q)]
    finite = [[c for c in (graph.compute[k.name][v] for k in devices.kinds) if math.isfinite(c)] for v in range(n)]
    if start_plan is not None:
        # A little slack so that the start's own times, summed in another order, stay inside.
        horizon = start_plan.value * (1 + 1e-6) + 1e-6
    else:
        # No schedule without idle time lasts longer than every duration in a row.
        transfers = math.fsum(t.cost for t in graph.tensors)
        horizon = math.fsum(max(c, default=0.0) for c in finite) + (len(slots) + 1) * transfers + 1.0
    M = horizon

    # Quiet devices have unlimited cores and pay no transfers: where memory never binds, a kind is one column.
    columns: list[int] = []
    column_of: dict[int, int] = {}
    for d in quiet:
        kind = kinds[d]
        if math.fsum(graph.memory) <= kind.memory and any(kinds[c] is kind for c in columns):
            column_of[d] = next(c for c in columns if kinds[c] is kind)
        else:
            columns.append(d)
    talker_twins = _twins(talkers, kinds)
    column_twins = _twins(columns, kinds)

    model = new_model(solver_name, threads=threads, time_limit=time_limit, rel_gap=rel_gap)

    def allowed(v: int, d: int) -> bool:
        return math.isfinite(graph.compute[kinds[d].name][v]) and graph.memory[v] <= kinds[d].memory

    xs = [[model.add_var(var_type=mip.BINARY, ub=1.0 if allowed(v, d) else 0.0) for d, _ in slots] for v in range(n)]
    xq = [[model.add_var(var_type=mip.BINARY, ub=1.0 if allowed(v, d) else 0.0) for d in columns] for v in range(n)]
    slot_of = {sd: s for s, sd in enumerate(slots)}
    col_of = {d: i for i, d in enumerate(columns)}

    def on_device(v: int, d: int):
        if d in col_of:
            return xq[v][col_of[d]]
        return mip.xsum(xs[v][slot_of[d, j]] for j in range(q))

    for v in range(n):
        model += mip.xsum(xs[v]) + mip.xsum(xq[v]) == 1
    for group in graph.groups:
        for v in group[1:]:
            for s in range(len(slots)):
                model += xs[v][s] == xs[group[0]][s]
            for i in range(len(columns)):
                model += xq[v][i] == xq[group[0]][i]
    for d in talkers + columns:
        if math.isfinite(kinds[d].memory) and math.fsum(graph.memory) > kinds[d].memory:
            model += mip.xsum(graph.memory[v] / kinds[d].memory * on_device(v, d) for v in range(n)) <= 1
    for a, b in talker_twins + column_twins:
        # b holds a node only after a holds a lower one: any plan can be renamed to meet this.
        # seen: how many of the nodes before v sit on a (a running sum, so each row stays short).
        seen = None
        for v in range(n):
            model += on_device(v, b) <= (seen if seen is not None else 0)
            after = model.add_var(lb=0.0)
            model += after == (seen if seen is not None else 0) + on_device(v, a)
            seen = after
    if q > 1:
        for d in talkers:
            used = [model.add_var(var_type=mip.BINARY) for _ in range(q)]
            for j in range(q):
                for v in range(n):
                    model += xs[v][slot_of[d, j]] <= used[j]
                if j:
                    model += used[j] <= used[j - 1]

    head = _heads(graph, _fastest(graph, devices))
    F = [model.add_var(lb=min(head[v], horizon), ub=horizon) for v in range(n)]
    start = [model.add_var(lb=0.0, ub=horizon) for _ in slots]
    fin = [model.add_var(lb=0.0, ub=horizon) for _ in slots]
    for s, (d, _) in enumerate(slots):
        name = kinds[d].name
        work = [graph.compute[name][v] * xs[v][s] for v in range(n) if allowed(v, d)]
        comm = [t.cost * crossing(model, xs[t.producer][s], [xs[b][s] for b in t.consumers])
                for t in graph.tensors if t.cost > 0]
        # One finish variable per slot keeps the per-node rows short.
        model += fin[s] == start[s] + mip.xsum(work + comm)
    for s, (d, j) in enumerate(slots):
        for v in range(n):
            model += F[v] >= fin[s] - M * (1 - xs[v][s])
            for u in preds[v]:
                # v's piece waits for u unless u is in the same piece.
                model += start[s] >= F[u] - M * (1 - xs[v][s] + xs[u][s])
        if j + 1 < q:
            model += start[s + 1] >= fin[s]

    def own_time(v: int):
        return mip.xsum(graph.compute[kinds[d].name][v] * xq[v][i] for i, d in enumerate(columns) if allowed(v, d))

    for v in range(n):
        on_quiet = mip.xsum(xq[v])
        model += F[v] >= own_time(v)
        for u in preds[v]:
            model += F[v] >= F[u] + own_time(v) - M * (1 - on_quiet)
            # Implied for integral x; stated so the relaxation sees precedence.
            model += F[v] >= F[u]
    L = model.add_var(lb=simple, ub=horizon)
    for v in range(n):
        model += L >= F[v]
    for s in range(len(slots)):
        model += L >= fin[s]
    chain = _critical_chain(graph, devices)
    along = []
    for v in chain:
        along.append(own_time(v))
        along += [graph.compute[kinds[d].name][v] * xs[v][s] for s, (d, _) in enumerate(slots) if allowed(v, d)]
    for u, v in itertools.pairwise(chain):
        cost = math.fsum(t.cost for t in graph.tensors if t.producer == u and v in t.consumers)
        if cost > 0:
            for s in range(len(slots)):
                along.append(cost * crossing(model, xs[u][s], [xs[v][s]]))
    model += L >= mip.xsum(along)
    model.objective = mip.minimize(L)

    start_values = None
    if start_plan is not None:
        start_values = _latency_start(graph, devices, start_plan, q, slots, columns, xs, xq,
                                      talker_twins + column_twins, column_of)
    outcome = run_model(model, time_limit=time_limit, start=start_values)
    status = outcome.status.name.lower()
    bound, source = outcome.bound, "the integer program's dual bound"
    if start_plan is not None and outcome.status in (mip.OptimizationStatus.INFEASIBLE,
                                                     mip.OptimizationStatus.INT_INFEASIBLE):
        # A start that fits was given, so infeasibility is numerical trouble: trust only the simple bound.
        log.warning("latency IP reported %s although a plan fits; keeping the simple bound", status)
        bound = -math.inf
    if simple * (1 + 1e-9) >= bound:
        # The relaxation proved no more than the simple bound: name the simple one.
        bound, source = simple, simple_source
    notes = (f"{status} in {outcome.seconds:.1f} s", f"ip objective {model.objective_value}",
             f"bound from {source}")
    plan = None
    if model.num_solutions:
        device_of = []
        for v in range(n):
            options = [((xs[v][s].x or 0.0), d) for s, (d, _) in enumerate(slots)]
            options += [((xq[v][i].x or 0.0), d) for i, d in enumerate(columns)]
            device_of.append(max(options)[1])
        plan = latency_plan(graph, devices, device_of, solver=Solver.IP_LATENCY, notes=notes)
    if incumbent is not None and (plan is None or incumbent.value < plan.value):
        plan = latency_plan(graph, devices, plan_devices(incumbent), solver=Solver.IP_LATENCY,
                            notes=notes + ("heuristic plan kept",))
    if plan is None:
        raise no_solution(outcome, "ip-latency")
    return replace(plan, lower_bound=min(bound, plan.value))


def _latency_start(graph, devices, plan, q, slots, columns, xs, xq, twins, column_of):
    """Values of the binaries for a plan with at most ``q`` pieces per device, renamed to meet the symmetry rows."""
    device_of = _canonical(plan_devices(plan), twins, column_of)
    sched = schedule(graph, devices, device_of)
    kinds = devices.expanded()
    per_device: dict[int, list[Piece]] = {}
    for piece in sched.pieces:
        if kinds[piece.device].communicates:
            per_device.setdefault(piece.device, []).append(piece)
    slot_of = {}
    for d, ps in per_device.items():
        for j, piece in enumerate(sorted(ps, key=lambda p: p.start)):
            for v in piece.nodes:
                slot_of[v] = slots.index((d, j))
    values = []
    for v in range(graph.n):
        for s in range(len(slots)):
            values.append((xs[v][s], 1.0 if slot_of.get(v) == s else 0.0))
        for i, d in enumerate(columns):
            values.append((xq[v][i], 1.0 if device_of[v] == d and v not in slot_of else 0.0))
    return values
