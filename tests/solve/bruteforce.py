"""Brute-force references for the solver tests: every placement of a tiny graph, scored from scratch.

Independent of the solvers: no ideals, units, bounds or programs, only
enumeration, a plain acyclicity check and the plan module's
:func:`stage_loads` for the load of a placement.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.solve.plan import stage_loads

INF = math.inf


def acyclic(n: int, arcs: set[tuple[int, int]]) -> bool:
    """Whether the graph on 0..n-1 with these arcs has no cycle (Kahn's algorithm, no ordering asked)."""
    indeg = [0] * n
    for _, b in arcs:
        indeg[b] += 1
    ready = [v for v in range(n) if indeg[v] == 0]
    seen = 0
    while ready:
        a = ready.pop()
        seen += 1
        for x, b in arcs:
            if x == a:
                indeg[b] -= 1
                if indeg[b] == 0:
                    ready.append(b)
    return seen == n


def placement_load(graph: CostGraph, devices: Devices, stage_of: Sequence[int], stage_device: Sequence[int]) -> float:
    """Max load of the placement (node v on stage stage_of[v], stage s on device stage_device[s]).

    Inf where a device holds a node its kind cannot run or more memory than it has.
    """
    kinds = devices.expanded()
    if any(math.isinf(graph.compute[kinds[stage_device[s]].name][v]) for v, s in enumerate(stage_of)):
        return INF
    loads = stage_loads(graph, devices, stage_of, stage_device)
    if any(sl.memory > kinds[stage_device[s]].memory for s, sl in enumerate(loads)):
        return INF
    return max(sl.load for sl in loads)


def best_chain_load(
    graph: CostGraph, devices: Devices, assignments: Iterable[Sequence[int]], arcs: Sequence[tuple[int, int]]
) -> float:
    """Least max load over the maps node -> device slot whose slots can be put in a chain.

    A map qualifies when the graph of slots that ``arcs`` (node pairs) cross
    is acyclic; it is scored by :func:`placement_load` with every slot a
    stage of its own. Inf where no map qualifies and fits.
    """
    slots = list(range(devices.count))
    best = INF
    for assign in assignments:
        cross = {(assign[u], assign[v]) for u, v in arcs if assign[u] != assign[v]}
        if acyclic(len(slots), cross):
            best = min(best, placement_load(graph, devices, assign, slots))
    return best
