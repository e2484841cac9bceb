"""Exact contiguous throughput placement: dynamic programming over ideals.

This module is the public API (:func:`solve_dp`, :func:`solve_dp_with_stats`,
:class:`DPStats` and the exceptions :class:`DPTooLarge`, :class:`DPTimeout`,
:class:`DPBoundTooLow`) and the orchestration of a run; the lattice itself
(ideal enumeration, pair scoring, the DP layers, and the derivation of the
communication formula they use) is in :mod:`onnxsplit.solve.lattice`.

A contiguous split is a chain of ideals (down-closed node sets)
``{} = I_0 <= I_1 <= ... <= I_m = V``; device p holds ``I_p \\ I_{p-1}``.
(For a training graph, ideals of the forward precedence over units, see
:mod:`onnxsplit.solve.training`; backward tensors are priced by membership.)
The DP keeps, for every ideal I and every count of devices of each kind, the
best max-load that covers I with those devices, and extends it by one device
holding ``I \\ J`` for every sub-ideal J. Devices of one kind are identical
and the chain may order kinds freely, so counts per kind are the whole state.

Speed comes from (1) :mod:`onnxsplit.solve.coarsen`, which shrinks the ideal
lattice by orders of magnitude without changing the optimum; (2) a first
plan from the same DP over the prefixes of a few topological orders, so
pairs whose load exceeds its value are never stored; (3) only pairs that
can be a device of a chain within that value are scored: their inner ideal
is reachable from {} and their outer ideal reaches V with the devices left,
worked out from both ends (:func:`onnxsplit.solve.pairs.score_pairs`);
(4) per device kind, ideals sorted by that kind's compute, so a block of
ideals only meets a window of candidates (compute alone must fit),
subset-tested as uint64 bitsets, with the matrix product only over tensors
that vary in the block; (5) the DP layers as one gather and one segmented
minimum over the pairs; (6) when the whole lattice or its pairs are too
many, :mod:`onnxsplit.solve.bounded` enumerates only the ideals that can lie
on a chain within the first plan's value (or just below it, or a bisected
bound), which keeps the optimum.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve.bounded import search_below, simple_bound
from onnxsplit.solve.coarsen import Coarsened, coarsen
from onnxsplit.solve.lattice import (
    DPTimeout,
    DPTooLarge,
    Problem,
    Progress,
    enumerate_ideals,
    pack_bits,
    report_progress,
    unpack_bits,
)
from onnxsplit.solve.chain import solve_lattice
from onnxsplit.solve.plan import Plan, Solver, make_plan

__all__ = ["DPBoundTooLow", "DPStats", "DPTimeout", "DPTooLarge", "Progress", "solve_dp", "solve_dp_with_stats"]

log = logging.getLogger(__name__)


# Above this many coarse nodes a lattice too large in full is not searched within a bound either.
BOUNDED_SEARCH_NODES = 4_096


class DPBoundTooLow(InfeasibleError):
    """No contiguous plan reaches the caller's ``upper_bound``."""


@dataclass(frozen=True)
class DPStats:
    """What the DP did, for benchmarks and logs."""

    nodes: int
    coarse_nodes: int
    ideals: int
    pairs: int
    upper_bound: float
    value: float
    seconds: float


def _topological_orders(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    """A few topological orders (of ``edges`` over nodes 0..n-1) whose prefix chains give good first plans.

    The stored order, a depth-first one (finish a branch before starting the
    next, so prefixes cut few tensors), and a depth-first one from the sinks.
    """
    succ: list[list[int]] = [[] for _ in range(n)]
    pred: list[list[int]] = [[] for _ in range(n)]
    for u, v in sorted(set(edges)):
        succ[u].append(v)
        pred[v].append(u)

    def lifo(out: list[list[int]], into: list[list[int]]) -> list[int]:
        indeg = [len(p) for p in into]
        ready = [v for v in reversed(range(n)) if indeg[v] == 0]
        order = []
        while ready:
            v = ready.pop()
            order.append(v)
            for w in reversed(out[v]):
                indeg[w] -= 1
                if indeg[w] == 0:
                    ready.append(w)
        return order

    return [list(range(n)), lifo(succ, pred), lifo(pred, succ)[::-1]]


def _prefix_bits(order: list[int], words: int) -> np.ndarray:
    rows = np.zeros((len(order) + 1, words * 64), dtype=bool)
    for i, v in enumerate(order):
        rows[i + 1 :, v] = True
    return pack_bits(rows)


def _first_plan(prob: Problem, cg: CostGraph, precedence: list[tuple[int, int]], limits: dict) -> tuple[float, tuple]:
    """The best chain of prefixes of a few topological orders (of the precedence edges): a plan to prune with."""
    heuristic, first = math.inf, ()
    for order in _topological_orders(cg.n, precedence):
        found = solve_lattice(prob, _prefix_bits(order, prob.words), heuristic, progress=None, **limits)
        if found.value < heuristic:
            heuristic, first = found.value, found.chain
    return heuristic, first


def _check_capable(graph: CostGraph, devices: Devices, coarse: CostGraph, members: tuple[tuple[int, ...], ...]) -> None:
    """InfeasibleError for a coarse node that no device can hold, naming an original culprit."""
    kinds = [k for k in devices.kinds if k.count > 0]

    def why(g: CostGraph, v: int) -> str | None:
        runs = [k for k in kinds if not math.isinf(g.compute[k.name][v])]
        if not runs:
            return f"cannot run on any available device kind ({', '.join(k.name for k in kinds)})"
        if all(g.memory[v] > k.memory for k in runs):
            return f"needs {g.memory[v]:.0f} bytes; no device that can run it has that much memory"
        return None

    for c in range(coarse.n):
        reason = why(coarse, c)
        if reason is None:
            continue
        for v in members[c]:
            alone = why(graph, v)
            if alone is not None:
                raise InfeasibleError(f"node {graph.names[v]!r} {alone}")
        names = ", ".join(repr(graph.names[v]) for v in members[c][:4])
        more = f" and {len(members[c]) - 4} more" if len(members[c]) > 4 else ""
        raise InfeasibleError(f"nodes that must share a device ({names}{more}) together {reason}")


def _infeasible(prob: Problem) -> InfeasibleError:
    kinds = ", ".join(f"{k.count} {k.name}" for k in prob.kinds)
    return InfeasibleError(f"no contiguous placement on {kinds} satisfies the devices' memory and capability limits")


def solve_dp_with_stats(
    graph: CostGraph,
    devices: Devices,
    *,
    max_ideals: int = 200_000,
    time_limit: float = 120.0,
    upper_bound: float = math.inf,
    progress: Progress | None = None,
    fold: bool = True,
    max_pairs: int = 60_000_000,
) -> tuple[Plan, DPStats]:
    """:func:`solve_dp`, also returning what it did.

    ``fold=False`` keeps free nodes unmerged (groups are always contracted),
    which is only useful for testing that folding changes nothing.
    """
    began = time.monotonic()
    deadline = began + time_limit
    if graph.n == 0:
        plan = make_plan(graph, devices, (), (), solver=Solver.DP, lower_bound=0.0)
        return plan, DPStats(0, 0, 1, 0, upper_bound, 0.0, 0.0)
    coarse = coarsen(graph, devices, fold=fold)
    cg = coarse.graph
    _check_capable(graph, devices, cg, coarse.members)
    report_progress(progress, "coarsen", 1.0)
    precedence = cg.edges() if coarse.precedence is None else list(coarse.precedence)
    prob = Problem(cg, devices, precedence=coarse.precedence)
    limits = dict(max_pairs=max_pairs, deadline=deadline, time_limit=time_limit)
    proven = math.inf  # the plan's own value unless a bounded search proves less
    try:
        bits = enumerate_ideals(prob, max_ideals=max_ideals, deadline=deadline, time_limit=time_limit,
                                progress=progress)
        heuristic, first = _first_plan(prob, cg, precedence, limits) if len(bits) > 4 * (cg.n + 1) else (math.inf, ())
        report_progress(progress, "bound", 1.0)
        bound = min(heuristic, upper_bound)
        log.debug("dp: %d nodes, %d coarse, %d ideals, first bound %g", graph.n, cg.n, len(bits), heuristic)
        found = solve_lattice(prob, bits, bound, progress=progress, **limits)
        nideals = len(bits)
    except DPTimeout:
        raise
    except DPTooLarge as exc:
        if cg.n > BOUNDED_SEARCH_NODES:
            # The prefix chains alone are n x n: past this size the search costs more than it can prove.
            raise DPTooLarge(str(exc), lower_bound=simple_bound(prob)) from exc
        # Too many ideals or pairs in all: search only those that can lie on a chain within a bound.
        heuristic, first = _first_plan(prob, cg, precedence, limits)
        bound = min(heuristic, upper_bound)
        if math.isinf(bound):
            raise DPTooLarge(str(exc), lower_bound=simple_bound(prob)) from exc
        bounded = search_below(prob, bound, reached=bound == heuristic, max_ideals=max_ideals, progress=progress,
                               **limits)
        if not bounded.settled:
            # Hand what was proven and the best plan seen to whoever falls back.
            seen = _chain_plan(graph, devices, coarse, prob, first, lower_bound=bounded.lower_bound) if first else None
            raise type(exc)(f"{exc}; the bounded search proved no plan below {bounded.lower_bound:.10g}",
                            lower_bound=bounded.lower_bound, plan=seen) from exc
        found, nideals = bounded.found, bounded.ideals
        # A chain found is optimal; with none, the first plan is, down to the proven bound.
        proven = math.inf if math.isfinite(found.value) else bounded.lower_bound
        bits = None
        log.debug("dp: bounded search tried %s, %d ideals", bounded.bounds_tried, nideals)
    value, chain, npairs = found.value, found.chain, found.pairs
    if math.isinf(value):
        if math.isinf(bound):
            raise _infeasible(prob)
        if upper_bound < heuristic:
            if bits is not None and math.isinf(heuristic) and math.isinf(
                    solve_lattice(prob, bits, math.inf, progress=None, **limits).value):
                raise _infeasible(prob)
            raise DPBoundTooLow(f"no contiguous plan has max load at most {upper_bound:g}")
        if math.isinf(proven):
            # Only reachable through rounding at the pruning bound; the first plan is still valid.
            log.warning("dp: pruning lost every plan; returning the bound's plan")
        value, chain = heuristic, first

    stage_of, stage_device = _chain_placement(devices, coarse, prob, chain)
    seconds = time.monotonic() - began
    notes = (f"dp: {graph.n} nodes, {cg.n} after coarsening, {nideals} ideals, {npairs} pairs, {seconds:.3f} s",)
    if graph.training:
        notes += ("training graph: the forward part is split into a chain of ideals, backward nodes follow their"
                  " colour class",)
    if math.isfinite(proven) and proven < value:
        notes += (f"dp: no contiguous plan below {proven:.10g} (ideals within that bound searched)",)
    # Proven optimal: the bound is the plan's own (rescored) value, or the bounded search's proof.
    plan = make_plan(graph, devices, stage_of, stage_device, solver=Solver.DP, lower_bound=proven, notes=notes)
    log.info("%s; max load %g", notes[0], plan.value)
    return plan, DPStats(graph.n, cg.n, nideals, npairs, heuristic, plan.value, seconds)


def solve_dp(
    graph: CostGraph,
    devices: Devices,
    *,
    max_ideals: int = 200_000,
    time_limit: float = 120.0,
    upper_bound: float = math.inf,
    progress: Progress | None = None,
) -> Plan:
    """The optimal contiguous throughput plan (minimum max-load over chains of ideals).

    ``progress(phase, fraction)`` is called with phases "coarsen", "ideals",
    "bound" (when a first plan is worth computing), "pairs" and "layers".
    ``upper_bound`` is a max load some plan is known to reach; it prunes.

    Raises :class:`DPTooLarge` (or its :class:`DPTimeout`) when the ideals,
    pairs or time exceed the limits, so a caller can fall back;
    :class:`~onnxsplit.errors.InfeasibleError` when no contiguous placement
    fits; :class:`DPBoundTooLow` when ``upper_bound`` is below the optimum
    (it is a pruning bound some plan is known to reach).
    """
    plan, _ = solve_dp_with_stats(
        graph, devices, max_ideals=max_ideals, time_limit=time_limit, upper_bound=upper_bound, progress=progress
    )
    return plan


def _chain_placement(devices: Devices, coarse: Coarsened, prob: Problem, chain) -> tuple[tuple[int, ...], list[int]]:
    """Node -> stage on the original graph and stage -> device of a chain of coarse ideals ((inner, outer, kind)
    per device); devices of a kind are taken in order."""
    n = coarse.graph.n
    expanded = devices.expanded()
    next_device = {k.name: next(i for i, e in enumerate(expanded) if e.name == k.name) for k in prob.kinds}
    stage_coarse = np.full(n, -1, dtype=np.int64)
    stage_device = []
    for s, (inner, outer, k) in enumerate(chain):
        stage_coarse[unpack_bits((outer & ~inner)[None, :], n)[0] > 0] = s
        stage_device.append(next_device[prob.kinds[k].name])
        next_device[prob.kinds[k].name] += 1
    if (stage_coarse < 0).any():  # pragma: no cover - a chain from {} to V covers every node
        raise AssertionError("DP chain misses nodes")
    return coarse.expand([int(s) for s in stage_coarse]), stage_device


def _chain_plan(graph: CostGraph, devices: Devices, coarse: Coarsened, prob: Problem, chain, *,
                lower_bound: float) -> Plan:
    """The plan of a chain of coarse ideals, scored on ``graph``."""
    stage_of, stage_device = _chain_placement(devices, coarse, prob, chain)
    return make_plan(graph, devices, stage_of, stage_device, solver=Solver.DP, lower_bound=lower_bound,
                     notes=("dp: the best chain of prefixes of a few topological orders",))
