"""Small graph algorithms shared by the loader, the rewrite and the solvers."""

from __future__ import annotations

import heapq
from typing import Callable, Iterable


def topological_order(nodes: Iterable[int], edges: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Kahn's algorithm, taking the smallest ready node first so the order is deterministic.

    Returns (order, stuck): ``stuck`` lists, sorted, the nodes on or behind a
    cycle (empty for a DAG). Repeated edges are fine; self-loops count as cycles.
    """
    return priority_order(nodes, edges, _own_id)


def _own_id(v: int, step: int) -> int:
    return v


def priority_order(
    nodes: Iterable[int], edges: Iterable[tuple[int, int]], key: Callable[[int, int], float]
) -> tuple[list[int], list[int]]:
    """Kahn's algorithm taking the ready node with the smallest ``(key(node, step), node)`` first.

    ``step`` is how many nodes were already in the order when the node became
    ready (0 for the nodes ready from the start); the key is read once, then.
    Returns (order, stuck) as :func:`topological_order` does.
    """
    nodes = list(nodes)
    succ: dict[int, set[int]] = {v: set() for v in nodes}
    indeg = {v: 0 for v in nodes}
    for u, v in edges:
        if v not in succ[u]:
            succ[u].add(v)
            indeg[v] += 1
    ready = [(key(v, 0), v) for v in nodes if indeg[v] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, u = heapq.heappop(ready)
        order.append(u)
        for v in succ[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(ready, (key(v, len(order)), v))
    return order, sorted(v for v in nodes if indeg[v] > 0)


def latest_first_order(n: int, edges: Iterable[tuple[int, int]]) -> list[int]:
    """A topological order of the DAG on 0..n-1 that puts every node as late as it can go.

    Built from the back: of the nodes whose successors are all placed, the
    largest id goes last. Before: the graph is acyclic (nodes on a cycle are
    left out).
    """
    back, _ = priority_order(range(n), ((v, u) for u, v in edges), _largest_first)
    return back[::-1]


def _largest_first(v: int, step: int) -> int:
    return -v


class UnionFind:
    """Disjoint sets over 0..n-1; the smaller id represents a merged set, so results are deterministic."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            if b < a:
                a, b = b, a
            self.parent[b] = a
        return a
