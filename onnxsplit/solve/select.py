"""Pick and run a solver by name (:data:`REGISTRY`), falling back when the exact one cannot run.

``auto`` (the default) runs the exact ideal-lattice DP. When the lattice is
too large or time runs out it takes the best of the linear-order DP and the
greedy plan, gives it to the ideal-chain integer program as a warm start
under the same time limit, and returns the integer program's incumbent with
its proven lower bound (or the heuristic plan with the simple bound).
Solver modules are imported when used: the integer programs need python-mip.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Callable, Mapping

from onnxsplit.choices import OBJECTIVES, SOLVERS
from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError, OnnxSplitError, UsageError
from onnxsplit.solve.linear import solve_linear
from onnxsplit.solve.plan import Objective, Plan, Solver, simple_lower_bound

log = logging.getLogger(__name__)


def check_fits(graph: CostGraph, devices: Devices) -> None:
    """Name the first node that no device can hold or run, before any solver searches."""
    for v in range(graph.n):
        kinds = [k for k in devices.kinds if k.count > 0 and math.isfinite(graph.compute[k.name][v])]
        if not kinds:
            raise InfeasibleError(f"node {graph.names[v]!r} cannot run on any device kind")
        if all(graph.memory[v] > k.memory for k in kinds):
            biggest = max(k.memory for k in kinds)
            raise InfeasibleError(f"node {graph.names[v]!r} needs {graph.memory[v]:.0f} bytes of memory; "
                                  f"the largest device that can run it has {biggest:.0f} bytes")
    total = sum(graph.memory)
    capacity = sum(k.memory * k.count for k in devices.kinds)
    if total > capacity:
        raise InfeasibleError(f"the model needs {total:.0f} bytes of memory, the devices have {capacity:.0f} in all")


def _heuristic(graph: CostGraph, devices: Devices) -> Plan:
    """The better of the linear-order DP and greedy (whichever can place the graph)."""
    from onnxsplit.solve.greedy import solve_greedy

    plans = []
    for name, run in (("linear", solve_linear), ("greedy", solve_greedy)):
        try:
            plans.append(run(graph, devices))
        except OnnxSplitError as exc:
            log.info("%s baseline found no plan: %s", name, exc)
    if not plans:
        raise InfeasibleError("no contiguous placement fits the devices (memory or unsupported nodes)")
    return min(plans, key=lambda p: p.value)


def _with_note(plan: Plan, note: str) -> Plan:
    return replace(plan, notes=plan.notes + (note,))


# Relative difference under which a plan's value and a proven bound are the same number (as the DP's proofs).
_CLOSED = 1e-8


def _proven(plan: Plan, bound: float, note: str) -> Plan:
    """``plan`` with the best proven bound it has (never above its value) and a note."""
    return _with_note(replace(plan, lower_bound=min(max(plan.lower_bound, bound), plan.value)), note)


# Graphs up to this many nodes get the exact search over stage cores when the DP's lattice is too big.
CORED_EXACT_NODES = 5_000
# Graphs up to this many nodes whose best plan is still more than this gap from the best bound go on to the
# ideal-chain integer program, warm-started, for the rest of the time limit.
IP_PROOF_NODES = 1_000
IP_PROOF_GAP = 0.01
# ...for at most this many seconds of the time limit when the relaxed plan is already in hand.
IP_PROOF_SECONDS = 40.0


def _auto_throughput(graph: CostGraph, devices: Devices, *, time_limit: float) -> Plan:
    """The exact DP; when it cannot finish, the best plan seen with the best bound proven on the way.

    Every bound gathered is a proof for the contiguous problem: the DP's
    bounded search, the simple bound, and the DP on the graph with light
    nodes made free. A plan that meets the best of them is returned as
    optimal. Then, on graphs of at most :data:`CORED_EXACT_NODES` nodes, the DP over stage cores
    (:func:`~onnxsplit.solve.window.solve_over_cores`), for trial bounds
    between that bound and the best plan, either returns the optimum or
    raises the bound. Otherwise the relaxed DP's plan (or the DP's own first plan,
    when better) is returned with that bound, unless the graph is small
    (:data:`IP_PROOF_NODES`) and the gap above :data:`IP_PROOF_GAP`, or there is
    no relaxed plan: then the ideal-chain integer program starts from the best
    plan and the bound, for the rest of the time limit (at most
    :data:`IP_PROOF_SECONDS` when a relaxed plan is in hand).
    """
    from onnxsplit.solve.dp import DPTooLarge, solve_dp
    from onnxsplit.solve.window import solve_over_cores

    start = time.perf_counter()

    def left() -> float:
        return max(1.0, time_limit - (time.perf_counter() - start))

    try:
        return solve_dp(graph, devices, time_limit=time_limit)
    except DPTooLarge as exc:
        reason, bound, seen = str(exc), exc.lower_bound, exc.plan
    bound = max(bound, simple_lower_bound(graph, devices))
    relaxed = _relaxed_dp(graph, devices, time_limit=left())
    if relaxed is not None:
        bound = max(bound, relaxed.lower_bound)
    # On a tie the relaxed DP's plan is kept: its label says how it was found.
    plans = [p for p in (relaxed, seen) if p is not None]
    best = min(plans, key=lambda p: p.value) if plans else None
    if best is not None and bound >= best.value * (1 - _CLOSED):
        return _proven(best, bound, f"exact DP too large ({reason}); this plan meets a proven lower bound")
    if best is None:
        best = _heuristic(graph, devices)
    # Stage cores for bounds between the proven one and the best plan: the optimum, or a higher bound.
    # Their minimum cuts are a Python max-flow per node: on graphs past CORED_EXACT_NODES they cost
    # more than the relaxed plan's small gap is worth.
    if graph.n <= CORED_EXACT_NODES:
        cored = solve_over_cores(graph, devices, lower_bound=bound, upper_bound=best.value, time_limit=left() / 2)
        if cored.plan is not None and cored.plan.value <= best.value:
            return _proven(cored.plan, cored.lower_bound, f"exact DP too large ({reason}); solved over stage cores")
        bound = max(bound, cored.lower_bound)
    if bound >= best.value * (1 - _CLOSED):
        return _proven(best, bound, f"exact DP too large ({reason}); stage cores prove this plan optimal")
    # A small graph is worth the integer program's proof (the README's quick start: about 20 s to prove
    # what the relaxed DP finds in 3); a big one or a small gap keeps the relaxed answer.
    worth_proving = graph.n <= IP_PROOF_NODES and best.value > 0 and (best.value - bound) / best.value > IP_PROOF_GAP
    if relaxed is not None and not worth_proving:
        how = "solved with light nodes relaxed" if best is relaxed else "the DP's first plan beat the relaxed DP's"
        return _proven(best, bound, f"exact DP too large ({reason}); {how}; lower bound: the best of the"
                                    " bounded ideal search, the simple and min-cut bounds, and the exact DP with"
                                    " light nodes made free (no compute, memory or hand-off cost), a relaxation")
    if relaxed is None:
        log.warning("exact DP could not run (%s); falling back to the integer program with a time limit", reason)
    else:
        log.info("proving the relaxed plan with the integer program: %s", reason)
    heuristic = _heuristic(graph, devices)
    best = heuristic if heuristic.value < best.value else best
    best = _proven(best, bound, f"DP fallback: {reason}")
    try:
        from onnxsplit.solve.ip import solve_ip

        budget = left() if relaxed is None else min(left(), IP_PROOF_SECONDS)
        plan = solve_ip(graph, devices, contiguous=True, time_limit=budget, warm_start=best, lower_bound=bound)
        return _proven(plan, bound, f"DP fallback: {reason}") if plan.value <= best.value else best
    except (OnnxSplitError, ImportError) as exc:
        log.warning("integer program fallback failed (%s); returning the %s plan", exc, best.solver)
        return best


# Above this many nodes that are not light, the full relaxed lattice is not enumerated: light nodes fold
# away in the relaxation, so this is about the size of the relaxed coarse graph.
RELAXED_LATTICE_NODES = 2_000


def _relaxed_dp(graph: CostGraph, devices: Devices, *, time_limit: float) -> Plan | None:
    """When the exact lattice is too big: a real contiguous plan and a proven lower bound. None if no DP can run.

    The bound is the optimum of a relaxation, so it holds for every
    contiguous plan: light nodes (:func:`~onnxsplit.solve.relax.light_nodes`)
    get no compute, no memory and free hand-offs, which lowers every plan's
    load and frees no capacity a real plan could not use, so the relaxed
    optimum is at most the real one. It is never below the simple bound
    (average compute, largest node), taken when higher.

    Small relaxed lattices are enumerated whole; the plan is the better of
    the relaxed DP's plan and the DP with light nodes tied to a neighbour,
    both scored on the real graph. Bigger ones, on devices of one kind, are
    solved over stage cores (:func:`~onnxsplit.solve.relax.solve_cored`):
    the plan is the exact optimum with light nodes tied to a neighbour (a
    restriction, so a real plan), and the relaxed optimum is computed, also
    exactly, only when it can beat the simple bound.
    """
    from onnxsplit.solve.dp import DPTooLarge, solve_dp
    from onnxsplit.solve.plan import check_plan, make_plan
    from onnxsplit.solve.relax import attach_light, light_nodes, one_kind, relax

    light = light_nodes(graph)
    if not light:
        return None
    deadline = time.perf_counter() + time_limit
    relaxed = relax(graph, light)
    if one_kind(devices) is not None and graph.n - len(light) > RELAXED_LATTICE_NODES:
        return _cored_relaxed(graph, devices, light, relaxed, deadline=deadline)
    try:
        bound_plan = solve_dp(relaxed, devices, time_limit=time_limit)
    except (DPTooLarge, InfeasibleError) as exc:
        log.info("relaxed DP could not run: %s", exc)
        return None
    bound = max(bound_plan.lower_bound, simple_lower_bound(graph, devices))
    candidates = [bound_plan]
    try:
        candidates.append(solve_dp(attach_light(graph, light), devices,
                                   time_limit=max(1.0, deadline - time.perf_counter())))
    except (DPTooLarge, InfeasibleError) as exc:
        log.info("DP with light nodes attached could not run: %s", exc)
    best = None
    for candidate in candidates:
        plan = make_plan(graph, devices, candidate.stage_of, candidate.stage_device, solver=Solver.DP_RELAXED,
                         lower_bound=bound)
        try:
            check_plan(graph, devices, plan, contiguous=True)
        except OnnxSplitError as exc:  # the light nodes' memory pushed a stage over
            log.info("relaxed plan is not feasible on the real graph: %s", exc)
            continue
        if best is None or plan.value < best.value:
            best = plan
    return best


def _cored_relaxed(graph: CostGraph, devices: Devices, light: list[int], relaxed: CostGraph, *,
                   deadline: float) -> Plan | None:
    """:func:`_relaxed_dp` for big graphs on one device kind: both DPs over stage cores."""
    from onnxsplit.solve.dp import DPTooLarge
    from onnxsplit.solve.plan import check_plan, make_plan
    from onnxsplit.solve.relax import attach_light, solve_cored

    def left() -> float:
        return max(1.0, deadline - time.perf_counter())

    try:
        tied = solve_cored(attach_light(graph, light), devices, time_limit=left())
    except (DPTooLarge, InfeasibleError) as exc:
        log.info("DP with light nodes attached could not run over stage cores: %s", exc)
        return None
    bound = simple_lower_bound(graph, devices)
    source = "average compute per device"
    # The tied plan is a plan of the relaxed graph too: its relaxed value caps the relaxed optimum.
    within = make_plan(relaxed, devices, tied.stage_of, tied.stage_device, solver=Solver.DP_RELAXED).value
    if within > bound:
        try:
            relaxed_opt = solve_cored(relaxed, devices, bound=within, time_limit=left()).value
            if relaxed_opt > bound:
                bound, source = relaxed_opt, "relaxed DP optimum (light nodes free)"
        except (DPTooLarge, InfeasibleError) as exc:
            log.info("relaxed DP could not run over stage cores: %s", exc)
    else:
        source += "; the relaxed DP cannot beat it"
    plan = make_plan(graph, devices, tied.stage_of, tied.stage_device, solver=Solver.DP_RELAXED, lower_bound=bound,
                     notes=(f"plan: exact DP with {len(light)} light nodes tied to a neighbour, over stage cores",
                            f"lower bound: {source}"))
    try:
        check_plan(graph, devices, plan, contiguous=True)
    except OnnxSplitError as exc:
        log.info("tied plan is not feasible on the real graph: %s", exc)
        return None
    return plan


@dataclass(frozen=True)
class SolveOptions:
    """What every solver may be asked, beyond the graph and the devices.

    ``mip_solver`` names python-mip's backend for the integer programs: ``cbc``
    (bundled) or ``highs`` (needs the highspy and highsbox packages).
    ``expert`` is the split file the ``expert`` solver scores.
    """

    objective: Objective = Objective.THROUGHPUT
    time_limit: float = 60.0
    contiguous: bool = True
    expert: str | os.PathLike | None = None
    mip_solver: str = "cbc"


SolverFn = Callable[[CostGraph, Devices, SolveOptions], Plan]


@dataclass(frozen=True)
class SolverEntry:
    """A solver by name: the function, the objectives it handles, and whether to check fit first."""

    run: SolverFn
    objectives: frozenset[Objective] = frozenset({Objective.THROUGHPUT})
    check_fits: bool = True


def _latency_if_asked(graph: CostGraph, devices: Devices, options: SolveOptions) -> Plan | None:
    """The latency integer program, warm-started by a heuristic; None when the objective is throughput."""
    if options.objective is not Objective.LATENCY:
        return None
    from onnxsplit.solve.latency import solve_latency_ip

    warm = _heuristic(graph, devices)
    return solve_latency_ip(graph, devices, time_limit=options.time_limit, warm_start=warm,
                            solver_name=options.mip_solver)


def _run_auto(graph: CostGraph, devices: Devices, options: SolveOptions) -> Plan:
    latency = _latency_if_asked(graph, devices, options)
    if latency is not None:
        return latency
    if devices.pairs:  # hand-offs priced per pair of devices: stages and devices are chosen together
        from onnxsplit.solve.links import solve_links

        return solve_links(graph, devices, time_limit=options.time_limit,
                           solve_chain=lambda g, d, t: _auto_throughput(g, d, time_limit=t))
    return _auto_throughput(graph, devices, time_limit=options.time_limit)


def _run_dp(graph: CostGraph, devices: Devices, options: SolveOptions) -> Plan:
    from onnxsplit.solve.dp import solve_dp

    if devices.pairs:
        from onnxsplit.solve.links import solve_links

        return solve_links(graph, devices, time_limit=options.time_limit)
    return solve_dp(graph, devices, time_limit=options.time_limit)


def _run_ip(graph: CostGraph, devices: Devices, options: SolveOptions) -> Plan:
    latency = _latency_if_asked(graph, devices, options)
    if latency is not None:
        return latency
    from onnxsplit.solve.dp import DPTooLarge, solve_dp
    from onnxsplit.solve.ip import solve_ip

    warm = _heuristic(graph, devices)
    try:
        warm = min(warm, solve_dp(graph, devices, time_limit=options.time_limit / 4), key=lambda p: p.value)
    except (DPTooLarge, InfeasibleError):
        pass
    return solve_ip(graph, devices, contiguous=options.contiguous, time_limit=options.time_limit, warm_start=warm,
                    solver_name=options.mip_solver)


def _run_linear(graph: CostGraph, devices: Devices, options: SolveOptions) -> Plan:
    return solve_linear(graph, devices)


def _run_greedy(graph: CostGraph, devices: Devices, options: SolveOptions) -> Plan:
    from onnxsplit.solve.greedy import solve_greedy

    return solve_greedy(graph, devices)


def _run_local(graph: CostGraph, devices: Devices, options: SolveOptions) -> Plan:
    from onnxsplit.solve.local import solve_local

    return solve_local(graph, devices, time_limit=options.time_limit)


def _run_expert(graph: CostGraph, devices: Devices, options: SolveOptions) -> Plan:
    """Score the expert split's max load (whatever the objective: the split is given, not searched)."""
    if options.expert is None:
        raise UsageError("the expert solver needs an expert split file")
    from onnxsplit.solve.greedy import evaluate_expert

    return evaluate_expert(graph, devices, options.expert)


_BOTH = frozenset(Objective)

# Name -> solver. "auto" and "ip" also solve for latency (the latency integer program).
REGISTRY: Mapping[str, SolverEntry] = MappingProxyType({
    "auto": SolverEntry(_run_auto, _BOTH),
    "dp": SolverEntry(_run_dp),
    "ip": SolverEntry(_run_ip, _BOTH),
    "linear": SolverEntry(_run_linear),
    "greedy": SolverEntry(_run_greedy),
    "local": SolverEntry(_run_local),
    "expert": SolverEntry(_run_expert, _BOTH, check_fits=False),
})


def solve(
    graph: CostGraph,
    devices: Devices,
    *,
    solver: str = "auto",
    objective: Objective | str = Objective.THROUGHPUT,
    time_limit: float = 60.0,
    contiguous: bool = True,
    expert: str | os.PathLike | None = None,
    mip_solver: str = "cbc",
) -> Plan:
    """Run the solver named in :data:`REGISTRY`. Every plan comes back scored from scratch with its lower bound.

    Raises UsageError for an unknown solver or objective, an objective the
    solver does not handle, or a time limit that is not positive;
    InfeasibleError when a node fits no device (checked before searching,
    except for the expert split, which is scored as given).
    """
    entry = REGISTRY.get(solver)
    if entry is None:
        raise UsageError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")
    objective = Objective(objective)
    if not time_limit > 0:
        raise UsageError(f"the time limit must be positive, got {time_limit}")
    if objective not in entry.objectives:
        able = ", ".join(name for name, e in REGISTRY.items() if objective in e.objectives and e.check_fits)
        raise UsageError(f"the {objective} objective is solved by the integer program (solver {able}), not {solver!r}")
    options = SolveOptions(objective=objective, time_limit=time_limit, contiguous=contiguous, expert=expert,
                           mip_solver=mip_solver)
    if entry.check_fits:
        check_fits(graph, devices)
    plan = entry.run(graph, devices, options)
    if devices.pairs and solver not in ("auto", "dp"):
        from onnxsplit.solve.links import link_safe

        plan = link_safe(graph, devices, plan)
    return plan


__all__ = ["OBJECTIVES", "REGISTRY", "SOLVERS", "SolveOptions", "SolverEntry", "check_fits", "solve"]
