"""Optimality-preserving coarsening of a cost graph for the contiguous solvers.

The contiguous solvers work on ideals (down-closed node sets), whose number
grows quickly with parallel branches. Every merge here is one that cannot
change the optimum over contiguous splits, so a plan found on the coarse graph
and expanded back is optimal for the original graph:

* Co-location groups become one node, together with every node on a path
  between two members (in a chain of ideals such a node is squeezed onto the
  group's stage anyway); this is the condensation of the quotient graph.
* Fold into the only consumer (rule A): a node v that costs nothing to run
  where its single consumer w can run, pins no memory (or memory never
  binds), and whose inputs that w does not also read cost no more to move
  than v's outputs. Moving v onto w's stage never raises a load (see
  :func:`_fold_forward_ok`), so some optimum has v beside w.
* Fold into the only producer (rule B): a free node whose inputs all come
  from one node u and whose outputs cost nothing to move. Moving v onto u's
  stage never raises a load either.
* Fold a free node with no tensors (rule C) into any node it is free beside.

A training graph is contracted by :mod:`onnxsplit.solve.training` instead
(colour classes forward and backward apart, orphaned backward nodes) and
folded by its own rule (:func:`onnxsplit.solve.training.fold_units`): the
rules above read tensors as precedence, which backward tensors are not.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.dag import UnionFind, topological_order
from onnxsplit.devices import Devices
from onnxsplit.solve.training import fold_units, training_units, unit_graph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coarsened:
    """A coarse graph and the map back to the original nodes.

    ``members[c]`` lists the original nodes of coarse node c; ``of[v]`` is
    the coarse node holding original node v. ``precedence``, when set, lists
    the coarse edges a chain of ideals must respect; the coarse graph's
    tensors then only carry cost (a training graph's backward tensors run
    against the order). None means the coarse graph's own edges.
    """

    graph: CostGraph
    members: tuple[tuple[int, ...], ...]
    of: tuple[int, ...]
    precedence: tuple[tuple[int, int], ...] | None = None

    def expand(self, coarse_values: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        """Per-coarse-node values (e.g. stages) as per-original-node values."""
        return tuple(coarse_values[c] for c in self.of)


def memory_never_binds(graph: CostGraph, devices: Devices) -> bool:
    """True when no device can be over memory whatever it holds.

    Then memory may be ignored when deciding which moves are harmless.
    """
    for kind in devices.kinds:
        if math.isinf(kind.memory):
            continue
        runnable = math.fsum(m for m, c in zip(graph.memory, graph.compute[kind.name]) if not math.isinf(c))
        if runnable > kind.memory:
            return False
    return True


_Union = UnionFind


def _condense(n: int, edges: list[tuple[int, int]], uf: _Union) -> None:
    """Merge every strongly connected component of the quotient graph.

    A cycle in the quotient means a path leaves a group and comes back; every
    node on it must share the group's stage in a chain of ideals.
    """
    succ: dict[int, set[int]] = {}
    for u, v in edges:
        a, b = uf.find(u), uf.find(v)
        if a != b:
            succ.setdefault(a, set()).add(b)
    reps = sorted({uf.find(v) for v in range(n)})
    # Iterative Tarjan: the graph can be deep enough to break Python's recursion limit.
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    counter = 0
    for root in reps:
        if root in index:
            continue
        work = [(root, iter(sorted(succ.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(succ.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    uf.union(v, w)
                    if w == v:
                        break


@dataclass
class _Node:
    compute: dict[str, float]
    memory: float


@dataclass
class _Tensor:
    producer: int
    consumers: set[int]
    cost: float


class _Folder:
    """Mutable quotient graph on which the folding rules run.

    ``out[r]`` and ``inp[r]`` hold the indices of tensors node r produces
    (with some consumer outside r) and reads; merges update them in place.
    """

    def __init__(self, graph: CostGraph, uf: _Union, *, ignore_memory: bool) -> None:
        self.uf = uf
        self.kinds = graph.kinds
        self.ignore_memory = ignore_memory
        self.nodes: dict[int, _Node] = {}
        for v in range(graph.n):
            r = uf.find(v)
            node = self.nodes.setdefault(r, _Node({k: 0.0 for k in self.kinds}, 0.0))
            for k in self.kinds:
                node.compute[k] += graph.compute[k][v]
            node.memory += graph.memory[v]
        self.tensors: list[_Tensor] = []
        self.out: dict[int, set[int]] = {r: set() for r in self.nodes}
        self.inp: dict[int, set[int]] = {r: set() for r in self.nodes}
        for t in graph.tensors:
            p = uf.find(t.producer)
            cons = {uf.find(c) for c in t.consumers} - {p}
            if not cons:
                continue
            i = len(self.tensors)
            self.tensors.append(_Tensor(p, cons, t.cost))
            self.out[p].add(i)
            for c in cons:
                self.inp[c].add(i)

    def _free_beside(self, v: int, w: int) -> bool:
        """v costs nothing on every kind w can use, and its memory cannot matter."""
        a, b = self.nodes[v], self.nodes[w]
        if any(not math.isinf(b.compute[k]) and a.compute[k] != 0.0 for k in self.kinds):
            return False
        return a.memory == 0.0 or self.ignore_memory

    def _fold_forward_ok(self, v: int) -> int | None:
        """Rule A: the consumer w to fold v into, or None.

        Put v on w's stage when they differ. v's stage stops receiving v's
        inputs and sending its outputs; w's stage stops receiving v's outputs
        (sum y) and may start receiving the inputs w does not read itself
        (sum x' <= y); a producer on v's old stage may start sending such an
        input (<= x') but that stage no longer sends v's outputs (y). Inputs w
        also reads were already on w's stage or sent there. So with x' <= y
        and v free to run beside w, no load rises.
        """
        outs = self.out[v]
        if not outs:
            return None
        consumers = set().union(*(self.tensors[i].consumers for i in outs))
        if len(consumers) != 1:
            return None
        (w,) = consumers
        if not self._free_beside(v, w):
            return None
        x = math.fsum(self.tensors[i].cost for i in self.inp[v] if w not in self.tensors[i].consumers)
        y = math.fsum(self.tensors[i].cost for i in outs)
        return w if x <= y else None

    def _fold_back_ok(self, v: int) -> int | None:
        """Rule B: the producer u to fold v into, or None.

        Put v on u's stage. v's inputs become local there, u's stage sends
        v's outputs, which cost nothing, and v's old stage only loses work.
        """
        producers = {self.tensors[i].producer for i in self.inp[v]}
        if len(producers) != 1:
            return None
        if any(self.tensors[i].cost != 0.0 for i in self.out[v]):
            return None
        (u,) = producers
        return u if self._free_beside(v, u) else None

    def _fold_isolated_ok(self, v: int) -> int | None:
        """Rule C: a free node with no tensors at all can sit beside any node it is free beside."""
        if self.out[v] or self.inp[v]:
            return None
        return next((u for u in sorted(self.nodes) if u != v and self._free_beside(v, u)), None)

    def _merge(self, v: int, into: int) -> int:
        """Merge two nodes; returns the surviving id."""
        r = self.uf.union(v, into)
        gone = v if r == into else into
        a = self.nodes.pop(gone)
        b = self.nodes[r]
        for k in self.kinds:
            b.compute[k] += a.compute[k]
        b.memory += a.memory
        for i in self.out.pop(gone):
            self.tensors[i].producer = r
            self.out[r].add(i)
        for i in self.inp.pop(gone):
            t = self.tensors[i]
            t.consumers.discard(gone)
            t.consumers.add(r)
            self.inp[r].add(i)
        # Tensors between the two are now internal.
        for i in list(self.out[r]):
            t = self.tensors[i]
            if r in t.consumers:
                t.consumers.discard(r)
                self.inp[r].discard(i)
                if not t.consumers:
                    self.out[r].discard(i)
        return r

    def run(self) -> int:
        merged = 0
        todo = sorted(self.nodes, reverse=True)
        queued = set(todo)
        while todo:
            v = todo.pop()
            queued.discard(v)
            node = self.nodes.get(v)
            # Only a node free on some kind can be free beside anything: skip the rest cheaply.
            if node is None or not (0.0 in node.compute.values() and (node.memory == 0.0 or self.ignore_memory)):
                continue
            target = self._fold_forward_ok(v)
            if target is None:
                target = self._fold_back_ok(v)
            if target is None:
                target = self._fold_isolated_ok(v)
            if target is None:
                continue
            r = self._merge(v, target)
            merged += 1
            # The merged node and its neighbours may now satisfy a rule.
            near = {r} | {self.tensors[i].producer for i in self.inp[r]}
            for i in self.out[r]:
                near |= self.tensors[i].consumers
            for u in near - queued:
                todo.append(u)
                queued.add(u)
        return merged


def coarsen(graph: CostGraph, devices: Devices | None = None, *, fold: bool = True) -> Coarsened:
    """Contract co-location groups and fold free nodes, keeping the contiguous optimum.

    ``devices`` lets folding ignore memory when no device can run out of it;
    without it only nodes that pin no memory are folded.
    """
    if graph.training:
        units = training_units(graph)
        if fold:
            units = fold_units(units, ignore_memory=devices is not None and memory_never_binds(graph, devices))
        return Coarsened(unit_graph(graph, units), units.members, units.unit_of, precedence=units.edges)
    uf = _Union(graph.n)
    for group in graph.groups:
        for v in group[1:]:
            uf.union(group[0], v)
    edges = graph.edges()
    if graph.groups:
        _condense(graph.n, edges, uf)
    ignore_memory = devices is not None and memory_never_binds(graph, devices)
    folder = _Folder(graph, uf, ignore_memory=ignore_memory)
    folded = folder.run() if fold else 0

    # Number coarse nodes topologically, smallest original id first on ties.
    reps = sorted(folder.nodes)
    order, stuck = topological_order(reps, [(uf.find(u), uf.find(v)) for u, v in edges if uf.find(u) != uf.find(v)])
    if stuck:  # pragma: no cover - condensation and folds keep it acyclic
        raise AssertionError("coarse graph has a cycle")
    new = {r: i for i, r in enumerate(order)}
    of = tuple(new[uf.find(v)] for v in range(graph.n))
    members: list[list[int]] = [[] for _ in order]
    for v in range(graph.n):
        members[of[v]].append(v)

    # Tensors with the same producer and consumers always cross together: one tensor, costs summed.
    merged_t: dict[tuple[int, tuple[int, ...]], Tensor] = {}
    for t in graph.tensors:
        p = of[t.producer]
        cons = tuple(sorted({of[c] for c in t.consumers} - {p}))
        if not cons:
            continue
        was = merged_t.get((p, cons))
        if was is None:
            merged_t[(p, cons)] = Tensor(t.name, p, cons, nbytes=t.nbytes, cost=t.cost)
        else:
            merged_t[(p, cons)] = Tensor(was.name, p, cons, nbytes=was.nbytes + t.nbytes, cost=was.cost + t.cost)
    tensors = tuple(merged_t[key] for key in sorted(merged_t))
    compute = {k: tuple(folder.nodes[r].compute[k] for r in order) for k in graph.kinds}
    coarse = CostGraph(
        names=tuple(graph.names[members[i][0]] for i in range(len(order))),
        compute=compute,
        memory=tuple(folder.nodes[r].memory for r in order),
        tensors=tensors,
    )
    log.debug("coarsened %d nodes to %d (%d folded)", graph.n, coarse.n, folded)
    return Coarsened(coarse, tuple(tuple(m) for m in members), of)
