"""Pick and run a solver by name, falling back when the exact one cannot run.

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
import time

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError, OnnxSplitError, UsageError
from onnxsplit.solve.linear import solve_linear
from onnxsplit.solve.plan import Plan, simple_lower_bound

log = logging.getLogger(__name__)

SOLVERS = ("auto", "dp", "ip", "linear", "greedy", "local", "expert")
OBJECTIVES = ("throughput", "latency")


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
    from dataclasses import replace

    return replace(plan, notes=plan.notes + (note,))


def _auto_throughput(graph: CostGraph, devices: Devices, *, time_limit: float) -> Plan:
    from onnxsplit.solve.dp import DPTooLarge, solve_dp

    start = time.perf_counter()
    try:
        return solve_dp(graph, devices, time_limit=time_limit)
    except DPTooLarge as exc:
        reason = str(exc)
    relaxed = _relaxed_dp(graph, devices, time_limit=max(1.0, time_limit - (time.perf_counter() - start)))
    if relaxed is not None:
        return _with_note(relaxed, f"exact DP too large ({reason}); solved with light nodes relaxed")
    log.warning("exact DP could not run (%s); falling back to the integer program with a time limit", reason)
    best = _heuristic(graph, devices)
    best = _with_note(best, f"DP fallback: {reason}")
    left = max(1.0, time_limit - (time.perf_counter() - start))
    try:
        from onnxsplit.solve.ip import solve_ip

        plan = solve_ip(graph, devices, contiguous=True, time_limit=left, warm_start=best)
        return _with_note(plan, f"DP fallback: {reason}") if plan.value <= best.value else best
    except (OnnxSplitError, ImportError) as exc:
        log.warning("integer program fallback failed (%s); returning the %s plan", exc, best.solver)
        return best


def _relaxed_dp(graph: CostGraph, devices: Devices, *, time_limit: float) -> Plan | None:
    """When the exact lattice is too big: a lower bound from the DP with light nodes made free,
    and the better of two real plans (that DP's plan, and the DP's plan with light nodes tied
    to a neighbour), each scored on the real graph. None if neither DP can run."""
    from onnxsplit.solve.dp import DPTooLarge, solve_dp
    from onnxsplit.solve.plan import check_plan, make_plan
    from onnxsplit.solve.relax import attach_light, light_nodes, relax

    light = light_nodes(graph)
    if not light:
        return None
    deadline = time.perf_counter() + time_limit
    try:
        bound_plan = solve_dp(relax(graph, light), devices, time_limit=time_limit)
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
        plan = make_plan(graph, devices, candidate.stage_of, candidate.stage_device, solver="dp-relaxed",
                         lower_bound=bound)
        try:
            check_plan(graph, devices, plan, contiguous=True)
        except OnnxSplitError as exc:  # the light nodes' memory pushed a stage over
            log.info("relaxed plan is not feasible on the real graph: %s", exc)
            continue
        if best is None or plan.value < best.value:
            best = plan
    return best


def solve(
    graph: CostGraph,
    devices: Devices,
    *,
    solver: str = "auto",
    objective: str = "throughput",
    time_limit: float = 60.0,
    contiguous: bool = True,
    expert: str | None = None,
    mip_solver: str = "cbc",
) -> Plan:
    """Run the named solver. Every plan comes back scored from scratch with its lower bound.

    ``mip_solver`` names python-mip's backend for the integer programs: ``cbc``
    (bundled) or ``highs`` (needs the highspy and highsbox packages).
    """
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")
    if time_limit <= 0:
        raise UsageError(f"--time-limit must be positive, got {time_limit}")
    if solver == "expert":
        if expert is None:
            raise UsageError("--solver expert needs --expert SPLIT.json")
        from onnxsplit.solve.greedy import evaluate_expert

        return evaluate_expert(graph, devices, expert)
    check_fits(graph, devices)
    if objective == "latency":
        if solver not in ("auto", "ip"):
            raise UsageError("the latency objective is solved by the integer program (--solver ip or auto)")
        from onnxsplit.solve.latency import solve_latency_ip

        warm = _heuristic(graph, devices)
        return solve_latency_ip(graph, devices, time_limit=time_limit, warm_start=warm, solver_name=mip_solver)
    if solver == "auto":
        return _auto_throughput(graph, devices, time_limit=time_limit)
    if solver == "dp":
        from onnxsplit.solve.dp import solve_dp

        return solve_dp(graph, devices, time_limit=time_limit)
    if solver == "ip":
        from onnxsplit.solve.ip import solve_ip

        warm = _heuristic(graph, devices)
        try:
            from onnxsplit.solve.dp import DPTooLarge, solve_dp

            warm = min(warm, solve_dp(graph, devices, time_limit=time_limit / 4), key=lambda p: p.value)
        except (DPTooLarge, InfeasibleError):
            pass
        return solve_ip(graph, devices, contiguous=contiguous, time_limit=time_limit, warm_start=warm,
                        solver_name=mip_solver)
    if solver == "linear":
        return solve_linear(graph, devices)
    if solver == "greedy":
        from onnxsplit.solve.greedy import solve_greedy

        return solve_greedy(graph, devices)
    from onnxsplit.solve.local import solve_local

    return solve_local(graph, devices, time_limit=time_limit)


__all__ = ["SOLVERS", "OBJECTIVES", "solve", "check_fits", "simple_lower_bound"]
