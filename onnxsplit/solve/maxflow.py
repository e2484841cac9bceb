"""Maximum flow on small networks with float capacities (Dinic's algorithm), for the cut-based bounds.

The value of any feasible flow is at most the minimum cut, so a flow that
stops early, or rounds, still gives a valid lower bound on the cut: the
bounds built on it (:mod:`onnxsplit.solve.cutbound`, stage cores in
:mod:`onnxsplit.solve.window`) stay proofs.
"""

from __future__ import annotations

import math


class FlowNetwork:
    """A flow network with float capacities; :meth:`max_flow` from one node to another (Dinic's algorithm)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.arcs: list[list[int]] = [[] for _ in range(size)]
        self.head: list[int] = []
        self.cap: list[float] = []

    def add(self, a: int, b: int, capacity: float) -> None:
        # Arc 2k runs a -> b, arc 2k+1 is its residual b -> a.
        self.arcs[a].append(len(self.head))
        self.head.append(b)
        self.cap.append(capacity)
        self.arcs[b].append(len(self.head))
        self.head.append(a)
        self.cap.append(0.0)

    def max_flow(self, source: int, sink: int, *, start: tuple[float, list[float]] | None = None
                 ) -> tuple[float, list[float]]:
        """The maximum flow from ``source`` to ``sink`` and the residual capacities it leaves.

        ``start`` is (value, residual capacities) of a flow already pushed
        from a node that ``source`` reaches by an arc of unlimited capacity:
        that flow is a flow from ``source`` too, so the search goes on from
        it. The value is infinite when a path has unlimited capacity.
        """
        arcs, head = self.arcs, self.head
        total, cap = (0.0, list(self.cap)) if start is None else (start[0], list(start[1]))
        # Residual capacities below this are rounding leftovers, not room for flow.
        tiny = 1e-12 * max(1.0, max((c for c in self.cap if math.isfinite(c)), default=1.0))
        while True:
            level = [-1] * self.size
            level[source] = 0
            queue = [source]
            for a in queue:
                for e in arcs[a]:
                    b = head[e]
                    if level[b] < 0 and cap[e] > tiny:
                        level[b] = level[a] + 1
                        queue.append(b)
            if level[sink] < 0:
                return total, cap
            pointer = [0] * self.size
            while True:
                pushed = self._push(source, sink, math.inf, level, pointer, arcs, head, cap, tiny)
                if pushed <= tiny:
                    break
                if math.isinf(pushed):
                    return math.inf, cap
                total += pushed

    @staticmethod
    def _push(source: int, sink: int, limit: float, level: list[int], pointer: list[int], arcs: list[list[int]],
              head: list[int], cap: list[float], tiny: float) -> float:
        """One augmenting path in the level graph (iterative, so deep graphs do not recurse)."""
        path: list[int] = []
        a = source
        while True:
            if a == sink:
                amount = min((cap[e] for e in path), default=limit)
                if math.isfinite(amount):
                    for e in path:
                        cap[e] -= amount
                        cap[e ^ 1] += amount
                return amount
            edges = arcs[a]
            while pointer[a] < len(edges):
                e = edges[pointer[a]]
                b = head[e]
                if cap[e] > tiny and level[b] == level[a] + 1:
                    break
                pointer[a] += 1
            else:
                if not path:
                    return 0.0
                # Dead end: drop it from the level graph and step back.
                level[a] = -1
                e = path.pop()
                a = head[e ^ 1]
                pointer[a] += 1
                continue
            path.append(edges[pointer[a]])
            a = head[edges[pointer[a]]]
