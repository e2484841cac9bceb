"""The link-aware throughput solver, and the bound check for plans from link-blind solvers."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable, Sequence

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError, OnnxSplitError
from onnxsplit.solve.links.assign import Assignment, assign_devices
from onnxsplit.solve.links.orders import order_bound
from onnxsplit.solve.links.pricing import REL_SLACK, reprice
from onnxsplit.solve.plan import Plan, make_plan

log = logging.getLogger(__name__)


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
    ``lower_bound`` is the best of the bounds of :mod:`onnxsplit.solve.links`, and
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

    if best[1].value > bound * (1 + REL_SLACK) + 1e-12 and time.monotonic() < deadline:
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
