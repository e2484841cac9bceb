"""The latency integer program (after the paper's), started from the heuristic and cut by the bounds.

``mip`` is imported inside :func:`solve_latency_ip`, so the scorer, the
bounds and the heuristic load without it.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import replace

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError, PlanError
from onnxsplit.solve.latency.bounds import critical_chain, fastest_times, latency_lower_bound, path_heads
from onnxsplit.solve.latency.heuristic import latency_heuristic
from onnxsplit.solve.latency.scorer import Piece, cut_pieces, latency_plan, plan_devices, schedule
from onnxsplit.solve.plan import Plan, Solver, fits_devices

log = logging.getLogger(__name__)


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
    import mip

    from onnxsplit.solve.ip import crossing, new_model, no_solution, run_model

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

    head = path_heads(graph, fastest_times(graph, devices))
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
    chain = critical_chain(graph, devices)
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
