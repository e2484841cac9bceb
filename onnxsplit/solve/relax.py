"""Relaxing light nodes: a provable lower bound and a near-optimal plan when the lattice is too big.

Exported graphs carry shape computations (Shape, Gather, Unsqueeze, Concat
on a handful of int64s) beside the main chain. Each such side branch
multiplies the number of ideals, yet costs next to nothing. Setting the
compute, memory and hand-off cost of these light nodes to zero can only
lower every plan's load, so the exact DP on the relaxed graph gives a lower
bound on the true contiguous optimum; zero-cost nodes fold away, so the
relaxed lattice is small. The same plan, scored on the real graph, is a
feasible contiguous plan whose value is within the light nodes' total cost
of that bound, and the gap is reported.
"""

from __future__ import annotations

from dataclasses import replace

from onnxsplit.costgraph import CostGraph
from onnxsplit.dag import UnionFind

# A tensor this small is a shape, an index or a scalar, not an activation.
LIGHT_BYTES = 256


def light_nodes(graph: CostGraph, *, max_bytes: int = LIGHT_BYTES) -> list[int]:
    """Nodes whose every output is at most ``max_bytes`` and that hold at most that much memory."""
    largest = [0] * graph.n
    for t in graph.tensors:
        largest[t.producer] = max(largest[t.producer], t.nbytes)
    has_output = {t.producer for t in graph.tensors}
    return [v for v in range(graph.n) if v in has_output and largest[v] <= max_bytes and graph.memory[v] <= max_bytes]


def relax(graph: CostGraph, nodes: list[int]) -> CostGraph:
    """The graph with the given nodes made free: no compute, no memory, their tensors cost nothing to move."""
    free = set(nodes)
    compute = {k: tuple(0.0 if v in free else t for v, t in enumerate(times)) for k, times in graph.compute.items()}
    memory = tuple(0.0 if v in free else m for v, m in enumerate(graph.memory))
    tensors = tuple(replace(t, cost=0.0) if t.producer in free else t for t in graph.tensors)
    return replace(graph, compute=compute, memory=memory, tensors=tensors)


def attach_light(graph: CostGraph, nodes: list[int]) -> CostGraph:
    """The graph with each light node tied to a neighbour by a co-location group.

    A light node with one successor goes with it, else one with one
    predecessor goes with that: either way no plan of the grouped graph
    breaks contiguity on the real one, and the side branches stop
    multiplying the ideals. Plans of this graph are plans of the real graph
    (a restriction, so its optimum is an upper bound).
    """
    succ = graph.successors()
    pred = graph.predecessors()
    sets = UnionFind(graph.n)
    for group in graph.groups:
        for v in group[1:]:
            sets.union(v, group[0])
    for v in nodes:
        partner = succ[v][0] if len(succ[v]) == 1 else pred[v][0] if len(pred[v]) == 1 else None
        if partner is not None:
            sets.union(v, partner)
    members: dict[int, list[int]] = {}
    for v in range(graph.n):
        members.setdefault(sets.find(v), []).append(v)
    groups = tuple(tuple(sorted(m)) for m in members.values() if len(m) > 1)
    return replace(graph, groups=tuple(sorted(groups)))
