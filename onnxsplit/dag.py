"""Small graph algorithms shared by the loader, the rewrite and the solvers."""

from __future__ import annotations

import heapq
from typing import Iterable


def topological_order(nodes: Iterable[int], edges: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Kahn's algorithm, taking the smallest ready node first so the order is deterministic.

    Returns (order, stuck): ``stuck`` lists, sorted, the nodes on or behind a
    cycle (empty for a DAG). Repeated edges are fine; self-loops count as cycles.
    """
    nodes = list(nodes)
    succ: dict[int, set[int]] = {v: set() for v in nodes}
    indeg = {v: 0 for v in nodes}
    for u, v in edges:
        if v not in succ[u]:
            succ[u].add(v)
            indeg[v] += 1
    ready = [v for v in nodes if indeg[v] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        u = heapq.heappop(ready)
        order.append(u)
        for v in succ[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(ready, v)
    return order, sorted(v for v in nodes if indeg[v] > 0)


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
