"""Units: the node sets every solver places as one.

A *unit* is a set of nodes that must share a device: a co-location group, a
single node, or (for contiguous placement) a cycle that contracting groups
creates -- with a -> b -> c and {a, c} a group, b is forced between them.
Working on units keeps every solver inside the group constraints for free.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from onnxsplit.costgraph import CostGraph
from onnxsplit.dag import UnionFind, priority_order


@dataclass(frozen=True)
class Link:
    """Tensors between units, merged when they have the same ends.

    ``consumers`` excludes the producer's own unit; ``cost`` is the summed
    transfer time of the merged tensors (they always cross together).
    """

    producer: int
    consumers: tuple[int, ...]
    cost: float


@dataclass(frozen=True)
class Units:
    unit_of: tuple[int, ...]
    members: tuple[tuple[int, ...], ...]
    compute: Mapping[str, tuple[float, ...]]
    memory: tuple[float, ...]
    edges: tuple[tuple[int, int], ...]
    links: tuple[Link, ...]

    @property
    def count(self) -> int:
        return len(self.members)


def _sccs(n: int, succ: list[set[int]]) -> list[int]:
    """Strongly connected component of each vertex (iterative Tarjan)."""
    index = [-1] * n
    low = [0] * n
    comp = [-1] * n
    on_stack = [False] * n
    stack: list[int] = []
    counter = 0
    ncomp = 0
    adj = [sorted(s) for s in succ]
    for root in range(n):
        if index[root] >= 0:
            continue
        work = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work:
            v, i = work[-1]
            if i < len(adj[v]):
                work[-1] = (v, i + 1)
                w = adj[v][i]
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp[w] = ncomp
                    if w == v:
                        break
                ncomp += 1
    return comp


def units_of(graph: CostGraph, *, merge_cycles: bool) -> Units:
    """Contract co-location groups (and, if asked, the cycles they create).

    Units are numbered by their smallest node; with ``merge_cycles`` the unit
    graph is a DAG, numbered in a topological order (the ready unit with the
    smallest node first, which is the smallest-node order whenever that is
    topological).
    """
    n = graph.n
    sets = UnionFind(n)
    for group in graph.groups:
        for v in group[1:]:
            sets.union(v, group[0])
    roots = sorted({sets.find(v) for v in range(n)})
    rid = {r: i for i, r in enumerate(roots)}
    label = [rid[sets.find(v)] for v in range(n)]
    if merge_cycles:
        succ: list[set[int]] = [set() for _ in roots]
        for u, v in graph.edges():
            if label[u] != label[v]:
                succ[label[u]].add(label[v])
        comp = _sccs(len(roots), succ)
        label = [comp[label[v]] for v in range(n)]
    # Renumber by smallest member so numbering is deterministic (and topological when acyclic).
    first: dict[int, int] = {}
    for v in range(n):
        first.setdefault(label[v], v)
    order = sorted(first, key=first.__getitem__)
    if merge_cycles:
        # A unit's smallest node may follow a node of a unit that feeds it (group {a, d}, c -> d, a < c):
        # order the units topologically, the one with the smallest node first among those ready.
        order, _ = priority_order(order, {(label[u], label[v]) for u, v in graph.edges() if label[u] != label[v]},
                                  lambda u, step: first[u])
    renum = {old: i for i, old in enumerate(order)}
    unit_of = tuple(renum[label[v]] for v in range(n))
    members_l: list[list[int]] = [[] for _ in order]
    for v in range(n):
        members_l[unit_of[v]].append(v)
    members = tuple(tuple(m) for m in members_l)
    compute, memory = part_sums(graph.compute, graph.memory, members)
    edges = tuple(sorted({(unit_of[u], unit_of[v]) for u, v in graph.edges() if unit_of[u] != unit_of[v]}))
    links = merge_links(unit_of, ((t.producer, t.consumers, t.cost) for t in graph.tensors))
    return Units(unit_of, members, compute, memory, edges, links)


def part_sums(
    compute: Mapping[str, Sequence[float]], memory: Sequence[float], parts: Sequence[Sequence[int]]
) -> tuple[dict[str, tuple[float, ...]], tuple[float, ...]]:
    """Compute time per kind and memory of each part, summed over the members it lists.

    Before: every member is an index into ``memory`` and every ``compute``
    row. Sums are exactly rounded (``math.fsum``), so they do not depend on
    the order of the members.
    """
    summed = {k: tuple(math.fsum(row[v] for v in p) for p in parts) for k, row in compute.items()}
    return summed, tuple(math.fsum(memory[v] for v in p) for p in parts)


def merge_links(part_of: Sequence[int], ends: Iterable[tuple[int, Iterable[int], float]]) -> tuple[Link, ...]:
    """The links between parts that tensors ``(producer, consumers, cost)`` make once each end moves to its part.

    A tensor whose readers all sit in its producer's part is dropped; the
    others are merged by (producer part, sorted other reader parts), their
    costs summed (they always cross together). Links come sorted by their ends.
    """
    merged: dict[tuple[int, tuple[int, ...]], list[float]] = defaultdict(list)
    for producer, consumers, cost in ends:
        a = part_of[producer]
        cons = tuple(sorted({part_of[c] for c in consumers} - {a}))
        if cons:
            merged[(a, cons)].append(cost)
    return tuple(Link(a, cons, math.fsum(costs)) for (a, cons), costs in sorted(merged.items()))
