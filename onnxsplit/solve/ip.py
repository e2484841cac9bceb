"""Integer programs for max-load placement (python-mip; CBC by default).

Two formulations, both on *units* (see :mod:`onnxsplit.solve.units`):

* contiguous, the "ideal chain": y[u, p] = 1 when unit u is inside ideal p.
  Ideals are nested and down-closed, so stage p (ideal p minus ideal p-1) is
  exactly what the DP searches, and there is no symmetry between identical
  devices -- the reason CBC closes it where a per-device model stalls. For
  a training graph the units and their precedence come from
  :mod:`onnxsplit.solve.training` (only forward edges are precedence).
* non-contiguous: x[u, d] = 1 when unit u is on device d, with the usual
  ordering cuts between identical devices.

A tensor's transfer is charged to a stage through one continuous variable
per (merged tensor, stage) that is at least |in(producer) - in(consumer)|
for every consumer: it touches the stage and crosses its boundary, which is
exactly "sent" or "received" there -- whichever way the tensor runs, so a
training graph's backward tensors need nothing special. Both report the
incumbent re-scored from scratch and the solver's proven bound. HiGHS
(``solver_name="highs"``, needs highspy/highsbox) closes the chain model far
faster than CBC here: measured layer_resnet50 12 s against about 175 s.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Sequence

import mip

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import InfeasibleError, OnnxSplitError, UsageError
from onnxsplit.solve.plan import Plan, Solver, fits_devices, is_ideal_chain, make_plan, plan_from_devices, simple_lower_bound
from onnxsplit.solve.training import training_units
from onnxsplit.solve.units import Units, units_of

log = logging.getLogger(__name__)


class NoSolutionError(OnnxSplitError):
    """The solver stopped (time limit) before it found any feasible plan."""


def crossing(model: mip.Model, source: mip.Var, readers: list[mip.Var]) -> mip.Var:
    """A variable that is 1 when a tensor crosses into or out of a device.

    With binaries saying whether the producer and each reader sit there, it
    is at least |source - reader| for every reader: 1 if any differs.
    """
    c = model.add_var(lb=0.0)
    for r in readers:
        model += c >= source - r
        model += c >= r - source
    return c


def new_model(solver_name: str, *, threads: int, time_limit: float, rel_gap: float) -> mip.Model:
    names = {"cbc": mip.CBC, "highs": mip.HIGHS}
    key = solver_name.lower()
    if key not in names:
        raise UsageError(f"unknown MIP solver {solver_name!r}; choose one of {sorted(names)}")
    model = mip.Model(sense=mip.MINIMIZE, solver_name=names[key])
    model.verbose = 0
    model.threads = threads
    model.max_mip_gap = rel_gap
    model.max_mip_gap_abs = 1e-9
    model.max_seconds = time_limit
    return model


@dataclass(frozen=True)
class Outcome:
    """What the solver left behind, read before the model goes away."""

    status: mip.OptimizationStatus
    bound: float
    seconds: float


def run_model(model: mip.Model, *, time_limit: float, start: list[tuple[mip.Var, float]] | None) -> Outcome:
    if start:
        model.start = start
    began = time.perf_counter()
    status = model.optimize(max_seconds=time_limit)
    seconds = time.perf_counter() - began
    bound = model.objective_bound
    if status == mip.OptimizationStatus.OPTIMAL and model.objective_value is not None:
        # CBC stops within the gap; the bound it proved is what it reports.
        bound = min(bound, model.objective_value)
    if bound is None or math.isnan(bound):
        bound = 0.0
    log.info("MIP %s in %.1f s, objective %s, bound %s", status.name, seconds, model.objective_value, bound)
    return Outcome(status, bound, seconds)


def no_solution(outcome: Outcome, what: str) -> OnnxSplitError:
    if outcome.status in (mip.OptimizationStatus.INFEASIBLE, mip.OptimizationStatus.INT_INFEASIBLE):
        return InfeasibleError(f"{what}: no placement fits the devices' memory and supported operators")
    return NoSolutionError(
        f"{what}: no feasible plan found within the time limit ({outcome.seconds:.0f} s, status {outcome.status.name});"
        " give a warm start or more time"
    )


def _kinds(devices: Devices) -> list[DeviceKind]:
    return [k for k in devices.kinds if k.count > 0]


def _allowed(units: Units, kind: DeviceKind, u: int) -> bool:
    return not math.isinf(units.compute[kind.name][u]) and units.memory[u] <= kind.memory


def _memory_binds(units: Units, kind: DeviceKind) -> bool:
    # A memory row that everything fits under only adds tiny coefficients
    # (bytes over capacity, down to 1e-9), which slow CBC's LP.
    return math.fsum(units.memory) > kind.memory


# ----------------------------------------------------------------------------- contiguous


def _chain_model(graph: CostGraph, devices: Devices, units: Units, model: mip.Model, *, proven: float = 0.0):
    kinds = _kinds(devices)
    P = devices.count
    U = units.count
    # y[u][p] for p < P-1; ideal P-1 is everything, so it needs no variable.
    y = [[model.add_var(var_type=mip.BINARY) for _ in range(P - 1)] for _ in range(U)]

    def Y(u: int, p: int):
        if p < 0:
            return 0
        if p >= P - 1:
            return 1
        return y[u][p]

    def Z(u: int, p: int):
        return Y(u, p) - Y(u, p - 1)

    for u in range(U):
        for p in range(P - 2):
            model += y[u][p] <= y[u][p + 1]
    for a, b in _reduced_edges(units):
        for p in range(P - 1):
            model += y[b][p] <= y[a][p]
    k = [[model.add_var(var_type=mip.BINARY) for _ in kinds] for _ in range(P)]
    for p in range(P):
        model += mip.xsum(k[p]) <= 1
        if p + 1 < P:
            # Empty stages last: any chain can be compacted, so this loses nothing.
            model += mip.xsum(k[p]) >= mip.xsum(k[p + 1])
    for t, kind in enumerate(kinds):
        model += mip.xsum(k[p][t] for p in range(P)) <= kind.count
    for u in range(U):
        # A stage holding u has a kind, and one that can hold u.
        for p in range(P):
            model += Z(u, p) <= mip.xsum(k[p][t] for t, kind in enumerate(kinds) if _allowed(units, kind, u))
    lb = max(simple_lower_bound(graph, devices), kind_bound(units, devices), proven)
    T = model.add_var(lb=lb)
    links = [link for link in units.links if link.cost > 0]
    talk = any(kind.communicates for kind in kinds)
    for p in range(P):
        comm = []
        for link in links if talk else ():
            c = model.add_var(lb=0.0)
            # The link touches stage p and crosses its boundary (sent or received).
            for b in link.consumers:
                model += c >= Z(b, p) - Z(link.producer, p)
                model += c >= Z(link.producer, p) - Z(b, p)
            comm.append(link.cost * c)
        for t, kind in enumerate(kinds):
            # Stage p's load counts only when it is of kind t; the big M is the
            # most that load can be. (Per-kind copies of the membership
            # variables avoid the M but made CBC 2x slower on every graph tried.)
            ok = [u for u in range(U) if _allowed(units, kind, u)]
            load = [units.compute[kind.name][u] * Z(u, p) for u in ok if units.compute[kind.name][u] > 0]
            most = math.fsum(units.compute[kind.name][u] for u in ok)
            if kind.communicates:
                load += comm
                most += math.fsum(link.cost for link in links)
            if load and most > lb:
                model += mip.xsum(load) <= T + (most - lb) * (1 - k[p][t])
            if _memory_binds(units, kind):
                total = math.fsum(units.memory) / kind.memory
                mem = [units.memory[u] / kind.memory * Z(u, p) for u in range(U) if units.memory[u] > 0]
                model += mip.xsum(mem) <= 1 + (total - 1) * (1 - k[p][t])
    model.objective = mip.minimize(T)
    return y, k, kinds


def kind_bound(units: Units, devices: Devices) -> float:
    """The best max load if units could be split fractionally between kinds.

    The relaxation of the chain model spreads a slow kind (the CPU) over every
    position and so only sees the plain average; this bound charges each kind
    its own speed and count. On layer_resnet50 it gives 33.0 against a plain
    28.8 (optimum 33.8), which lets CBC prune more. Exact for one or two
    kinds; with more it falls back to the plain average.
    """
    kinds = _kinds(devices)
    U = units.count
    if U == 0:
        return 0.0
    if len(kinds) == 1:
        kind = kinds[0]
        total = math.fsum(units.compute[kind.name])
        return total / kind.count if math.isfinite(total) else 0.0
    if len(kinds) > 2:
        return 0.0
    a, b = kinds
    ca, cb = units.compute[a.name], units.compute[b.name]
    fixed_a = math.fsum(ca[u] for u in range(U) if math.isinf(cb[u]))
    fixed_b = math.fsum(cb[u] for u in range(U) if math.isinf(ca[u]))
    if math.isinf(fixed_a) or math.isinf(fixed_b):
        return 0.0  # a unit no kind can run; the model itself will say infeasible
    # Units that may go either way, cheapest to move from a to b first.
    free = sorted(
        (u for u in range(U) if math.isfinite(ca[u]) and math.isfinite(cb[u])),
        key=lambda u: (cb[u] / ca[u]) if ca[u] > 0 else math.inf,
    )

    def feasible(T: float) -> bool:
        room_b = b.count * T - fixed_b
        if room_b < 0:
            return False
        load_a = fixed_a
        for u in free:
            if cb[u] <= room_b:
                room_b -= cb[u]
            else:
                share = room_b / cb[u] if cb[u] > 0 else 1.0
                room_b = 0.0
                load_a += ca[u] * (1.0 - share)
        return load_a <= a.count * T

    lo, hi = 0.0, math.fsum(min(ca[u], cb[u]) for u in range(U)) + 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    # lo is infeasible, so it is below the fractional optimum: a valid bound.
    return lo


def _reduced_edges(units: Units) -> list[tuple[int, int]]:
    """Unit edges minus those implied by a longer path (down-closure needs only these)."""
    succ: list[set[int]] = [set() for _ in range(units.count)]
    for a, b in units.edges:
        succ[a].add(b)
    reach: list[int] = [0] * units.count  # bitset of units reachable by a path of length >= 1
    for a in reversed(range(units.count)):
        bits = 0
        for b in succ[a]:
            bits |= (1 << b) | reach[b]
        reach[a] = bits
    out = []
    for a, b in units.edges:
        if not any(c != b and (reach[c] >> b) & 1 for c in succ[a]):
            out.append((a, b))
    return out


def _chain_start(units: Units, devices: Devices, plan: Plan, y, k, kinds) -> list[tuple[mip.Var, float]] | None:
    if not is_ideal_chain_units(units, plan):
        log.warning("warm start is not an ideal chain on the colour classes; ignoring it")
        return None
    expanded = devices.expanded()
    P = devices.count
    stage = [plan.stage_of[m[0]] for m in units.members]
    start: list[tuple[mip.Var, float]] = []
    for u in range(units.count):
        for p in range(P - 1):
            start.append((y[u][p], 1.0 if stage[u] <= p else 0.0))
    names = [kind.name for kind in kinds]
    for p in range(P):
        kind = expanded[plan.stage_device[p]].name if p < plan.num_stages else None
        for t in range(len(kinds)):
            start.append((k[p][t], 1.0 if names[t] == kind else 0.0))
    return start


def is_ideal_chain_units(units: Units, plan: Plan) -> bool:
    for m in units.members:
        if len({plan.stage_of[v] for v in m}) > 1:
            return False
    return all(plan.stage_of[units.members[a][0]] <= plan.stage_of[units.members[b][0]] for a, b in units.edges)


def _read_chain(graph: CostGraph, devices: Devices, units: Units, y, k, kinds) -> tuple[list[int], list[int]]:
    P = devices.count
    expanded = devices.expanded()
    free = {kind.name: [d for d, e in enumerate(expanded) if e.name == kind.name] for kind in kinds}
    stage_device = []
    for p in range(P):
        vals = [k[p][t].x or 0.0 for t in range(len(kinds))]
        t = max(range(len(kinds)), key=vals.__getitem__)
        if vals[t] > 0.5:
            stage_device.append(free[kinds[t].name].pop(0))
        else:
            stage_device.append(-1)
    unit_stage = []
    for u in range(units.count):
        p = next((p for p in range(P - 1) if (y[u][p].x or 0.0) > 0.5), P - 1)
        unit_stage.append(p)
    stage_of = [unit_stage[units.unit_of[v]] for v in range(graph.n)]
    return stage_of, stage_device


# ----------------------------------------------------------------------------- non-contiguous


def _device_model(graph: CostGraph, devices: Devices, units: Units, model: mip.Model, *, symmetry: bool,
                  proven: float = 0.0):
    expanded = devices.expanded()
    D = len(expanded)
    U = units.count
    x = [
        [model.add_var(var_type=mip.BINARY, ub=1.0 if _allowed(units, expanded[d], u) else 0.0) for d in range(D)]
        for u in range(U)
    ]
    for u in range(U):
        model += mip.xsum(x[u]) == 1
    T = model.add_var(lb=max(simple_lower_bound(graph, devices), kind_bound(units, devices), proven))
    for d, kind in enumerate(expanded):
        if _memory_binds(units, kind):
            mem = [(units.memory[u] / kind.memory, x[u][d]) for u in range(U) if units.memory[u] > 0]
            model += mip.xsum(c * v for c, v in mem) <= 1
        comm = []
        if kind.communicates:
            for link in units.links:
                if link.cost <= 0:
                    continue
                comm.append(link.cost * crossing(model, x[link.producer][d], [x[b][d] for b in link.consumers]))
        work = [units.compute[kind.name][u] * x[u][d] for u in range(U) if _allowed(units, kind, u)]
        model += mip.xsum(work + comm) <= T
    if symmetry:
        # Identical devices: order them by their smallest unit. cum[u][d] counts
        # units <= u on d, so "u on d needs a smaller unit on d-1" stays linear in size.
        for block in _blocks(expanded):
            for j in range(1, len(block)):
                prev, cur = block[j - 1], block[j]
                cum = 0
                for u in range(U):
                    model += x[u][cur] <= cum
                    c = model.add_var(lb=0.0)
                    model += c == cum + x[u][prev]
                    cum = c
    model.objective = mip.minimize(T)
    return x


def _blocks(expanded: Sequence[DeviceKind]) -> list[list[int]]:
    out: dict[str, list[int]] = {}
    for d, kind in enumerate(expanded):
        out.setdefault(kind.name, []).append(d)
    return list(out.values())


def _canonical_devices(units: Units, expanded: Sequence[DeviceKind], unit_dev: list[int]) -> list[int]:
    """Relabel identical devices so that each is ordered by its smallest unit."""
    relabel = {}
    for block in _blocks(expanded):
        first = {d: min((u for u in range(units.count) if unit_dev[u] == d), default=math.inf) for d in block}
        for new, old in zip(block, sorted(block, key=lambda d: (first[d], d))):
            relabel[old] = new
    return [relabel[d] for d in unit_dev]


# ----------------------------------------------------------------------------- entry point


def solve_ip(
    graph: CostGraph,
    devices: Devices,
    *,
    contiguous: bool = True,
    time_limit: float = 60.0,
    warm_start: Plan | None = None,
    solver_name: str = "cbc",
    threads: int = 1,
    rel_gap: float = 1e-7,
    symmetry: bool = True,
    lower_bound: float = 0.0,
) -> Plan:
    """Minimise the max load with an integer program.

    ``value`` is the incumbent's max load recomputed from scratch and
    ``lower_bound`` the solver's proven bound (for the non-contiguous model,
    a bound on every placement, contiguous or not). A warm start is passed to
    the solver and is also returned, with the proven bound, should the
    solver end with nothing better.

    ``lower_bound`` is a max load the caller has proven no plan of the
    model's kind (contiguous or not, as asked) can go below; the objective
    starts there, which tightens every node's LP bound.
    """
    label = Solver.IP if contiguous else Solver.IP_NONCONTIGUOUS
    if graph.n == 0:
        return make_plan(graph, devices, [], [], solver=label)
    if contiguous and graph.training:
        units = training_units(graph)
    else:
        # Non-contiguous: a colour class (forward and backward members) is one unit; no edge is precedence.
        units = units_of(graph, merge_cycles=contiguous)
    model = new_model(solver_name, threads=threads, time_limit=time_limit, rel_gap=rel_gap)
    expanded = devices.expanded()
    start = None
    if contiguous:
        y, k, kinds = _chain_model(graph, devices, units, model, proven=lower_bound)
        if warm_start is not None:
            start = _chain_start(units, devices, warm_start, y, k, kinds)
    else:
        x = _device_model(graph, devices, units, model, symmetry=symmetry, proven=lower_bound)
        if warm_start is not None:
            unit_dev = [warm_start.stage_device[warm_start.stage_of[m[0]]] for m in units.members]
            if symmetry:
                unit_dev = _canonical_devices(units, expanded, unit_dev)
            start = [(x[u][d], float(unit_dev[u] == d)) for u in range(units.count) for d in range(len(expanded))]
    log.info("%s: %d units, %d variables, %d constraints", label, units.count, model.num_cols, model.num_rows)
    outcome = run_model(model, time_limit=time_limit, start=start)
    searched = ("ideal-chain integer program (contiguous plans)" if contiguous
                else "per-device integer program (any plan)")
    notes = (f"{outcome.status.name.lower()} in {outcome.seconds:.1f} s",
             f"lower bound: {solver_name.upper()}'s proven bound on the {searched}, never below the kind bound "
             "(each kind's compute spread evenly over its devices)")
    plan: Plan | None = None
    if model.num_solutions:
        if contiguous:
            stage_of, stage_device = _read_chain(graph, devices, units, y, k, kinds)
            plan = make_plan(
                graph, devices, stage_of, stage_device, solver=label, lower_bound=outcome.bound, notes=notes
            )
        else:
            unit_dev = [max(range(len(expanded)), key=lambda d: x[u][d].x or 0.0) for u in range(units.count)]
            node_dev = [unit_dev[units.unit_of[v]] for v in range(graph.n)]
            plan = plan_from_devices(graph, devices, node_dev, solver=label, lower_bound=outcome.bound, notes=notes)
    keep = warm_start is not None and fits_devices(graph, devices, warm_start)
    if keep and contiguous and not is_ideal_chain_units(units, warm_start):
        keep = False  # a contiguous answer must stay contiguous
    if keep and (plan is None or warm_start_value(graph, devices, warm_start) < plan.value):
        # The solver may drop or fail to improve on a start; never hand back worse than it.
        base = make_plan(
            graph,
            devices,
            warm_start.stage_of,
            warm_start.stage_device,
            solver=label,
            contiguous=is_ideal_chain(graph, warm_start.stage_of),
            notes=notes + ("warm start kept",),
        )
        plan = replace(base, lower_bound=min(outcome.bound, base.value))
    if plan is None:
        raise no_solution(outcome, label)
    return plan


def warm_start_value(graph: CostGraph, devices: Devices, plan: Plan) -> float:
    return make_plan(graph, devices, plan.stage_of, plan.stage_device, solver=plan.solver).value
