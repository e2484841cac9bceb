"""Training graphs as the contiguous solvers see them (the paper's semantics).

A training graph (:attr:`CostGraph.backward` set) has forward nodes, backward
nodes, and colour classes (:attr:`CostGraph.groups`; a node in no group is a
class of its own) tying each backward node to the forward node it must sit
with. What a contiguous split of it is:

* Only the forward part is split into a chain of ideals; a backward node goes
  to the device of its class's forward nodes wherever that is, so backward
  tensors may run from a later stage to an earlier one.
* The forward members of a class are contracted into one node and the
  backward members into another that rides along with it. A class does not
  pull the nodes on paths between a forward member and a backward one onto
  its device (contracting those paths, as for inference co-location groups,
  would collapse a training graph onto one device).
* A class with backward members only ("orphaned") gets an artificial forward
  node (no time, no memory, runs anywhere) to ride with; for every backward
  tensor from class U to class V where either is orphaned, the forward node
  of V must come no later than that of U (the mirror image of the backward
  edge).
* Cycles of the resulting forward precedence (forward members of one class
  with forward nodes between them, or mirrored edges) are fused: every class
  on such a cycle shares a device in a chain of ideals.
* Loads count every node, forward and backward, on its device and every
  tensor: a device pays a tensor's cost once exactly when it holds some but
  not all of the tensor's endpoints (its producer and readers), which is the
  sender-pays-once, each-receiver-pays-once rule read without a direction.

:func:`training_units` gives the units (one per fused class, forward and
backward members together), their precedence and all their tensors;
:func:`fold_units` merges free units where that provably keeps the optimum;
:func:`unit_graph` gives units as a cost graph for the DP, with each tensor
written from its first endpoint in unit order (its direction does not change
any load).
"""

from __future__ import annotations

import math
from collections import defaultdict

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.dag import UnionFind, topological_order
from onnxsplit.solve.units import Units, _sccs, merge_links, part_sums


def _classes(graph: CostGraph) -> UnionFind:
    classes = UnionFind(graph.n)
    for group in graph.groups:
        for v in group[1:]:
            classes.union(group[0], v)
    return classes


def _forward_precedence(graph: CostGraph, classes: UnionFind) -> set[tuple[int, int]]:
    """Edges between classes (by root) that a chain of ideals keeps in order.

    Forward tensors between classes, and the mirror images of backward
    tensors that touch an orphaned class.
    """
    backward = graph.backward or (False,) * graph.n
    has_forward = {classes.find(v) for v in range(graph.n) if not backward[v]}
    edges: set[tuple[int, int]] = set()
    for t in graph.tensors:
        a = classes.find(t.producer)
        for c in t.consumers:
            b = classes.find(c)
            if a == b:
                continue
            if not backward[c]:
                edges.add((a, b))
            elif backward[t.producer] and (a not in has_forward or b not in has_forward):
                # Backward u -> v where either class is orphaned: forward of v before forward of u.
                edges.add((b, a))
    return edges


def training_units(graph: CostGraph) -> Units:
    """Units of a training graph: fused classes, their forward precedence, and all tensors.

    Before: ``graph`` has node ids in topological order (every CostGraph
    does). After: units are numbered in a topological order of ``edges``
    (smallest forward member first on ties), ``edges`` are the precedence
    pairs between units (no transitive reduction), and ``links`` hold every
    tensor between units merged by (producer unit, consumer units), costs
    summed; a link's consumers may precede its producer.
    """
    n = graph.n
    classes = _classes(graph)
    # Fuse classes on cycles of the forward precedence until none is left (one pass suffices:
    # strongly connected components of the class graph are closed under merging).
    edges = _forward_precedence(graph, classes)
    roots = sorted({classes.find(v) for v in range(n)})
    index = {r: i for i, r in enumerate(roots)}
    succ: list[set[int]] = [set() for _ in roots]
    for a, b in edges:
        succ[index[a]].add(index[b])
    comp = _sccs(len(roots), succ)
    first_of: dict[int, int] = {}
    for r in roots:
        first_of.setdefault(comp[index[r]], r)
    for r in roots:
        classes.union(r, first_of[comp[index[r]]])

    backward = graph.backward or (False,) * n
    # Each unit is keyed by its smallest forward member (an orphaned unit by its smallest member).
    members_of: dict[int, list[int]] = defaultdict(list)
    for v in range(n):
        members_of[classes.find(v)].append(v)
    key = {r: min((v for v in m if not backward[v]), default=m[0]) for r, m in members_of.items()}
    unit_edges = {(key[classes.find(a)], key[classes.find(b)]) for a, b in edges}
    unit_edges = {(a, b) for a, b in unit_edges if a != b}
    order, stuck = topological_order(sorted(key.values()), unit_edges)
    if stuck:  # pragma: no cover - the components above were fused
        raise AssertionError("training units still have a precedence cycle")
    renum = {k: i for i, k in enumerate(order)}
    by_key = {key[r]: m for r, m in members_of.items()}
    members = tuple(tuple(by_key[k]) for k in order)
    unit_of_l = [0] * n
    for u, m in enumerate(members):
        for v in m:
            unit_of_l[v] = u
    unit_of = tuple(unit_of_l)
    compute, memory = part_sums(graph.compute, graph.memory, members)
    prec = tuple(sorted((renum[a], renum[b]) for a, b in unit_edges))
    links = merge_links(unit_of, ((t.producer, t.consumers, t.cost) for t in graph.tensors))
    return Units(unit_of, members, compute, memory, prec, links)


class _Folder:
    """Units as a mutable quotient: precedence both ways, links as endpoint sets."""

    def __init__(self, units: Units, *, ignore_memory: bool) -> None:
        self.kinds = tuple(units.compute)
        self.ignore_memory = ignore_memory
        self.sets = UnionFind(units.count)
        self.compute = {u: {k: units.compute[k][u] for k in self.kinds} for u in range(units.count)}
        self.memory = dict(enumerate(units.memory))
        self.succ: dict[int, set[int]] = {u: set() for u in range(units.count)}
        self.pred: dict[int, set[int]] = {u: set() for u in range(units.count)}
        for a, b in units.edges:
            self.succ[a].add(b)
            self.pred[b].add(a)
        # Links that cost nothing never change a load: leave them out.
        self.ends: list[set[int]] = []
        self.cost: list[float] = []
        self.touching: dict[int, set[int]] = {u: set() for u in range(units.count)}
        for link in units.links:
            if link.cost > 0:
                i = len(self.ends)
                self.ends.append({link.producer, *link.consumers})
                self.cost.append(link.cost)
                for u in self.ends[i]:
                    self.touching[u].add(i)

    def _free_beside(self, v: int, w: int) -> bool:
        """v costs nothing on every kind w can use, and its memory cannot matter."""
        if any(not math.isinf(self.compute[w][k]) and self.compute[v][k] != 0.0 for k in self.kinds):
            return False
        return self.memory[v] == 0.0 or self.ignore_memory

    def _moves_for_free(self, v: int, w: int) -> bool:
        """Whether putting v on w's stage never raises a load (see :func:`fold_units`)."""
        if not self._free_beside(v, w):
            return False
        x = y = 0.0
        for i in self.touching[v]:
            if w not in self.ends[i]:
                x += self.cost[i]
            elif len(self.ends[i]) == 2:
                y += self.cost[i]
        return x <= y

    def target(self, v: int) -> int | None:
        succ, pred = self.succ[v], self.pred[v]
        if succ or pred:
            # Only the sole successor, or the sole predecessor, keeps every precedence edge of v in order.
            options = [next(iter(s)) for s in (succ, pred) if len(s) == 1]
        else:
            options = sorted({u for i in self.touching[v] for u in self.ends[i]} - {v})
        return next((w for w in options if self._moves_for_free(v, w)), None)

    def merge(self, v: int, w: int) -> int:
        r = self.sets.union(v, w)
        gone = v if r == w else w
        for k in self.kinds:
            self.compute[r][k] += self.compute[gone][k]
        self.memory[r] += self.memory.pop(gone)
        del self.compute[gone]
        for mine, theirs in ((self.succ, self.pred), (self.pred, self.succ)):
            for u in mine.pop(gone):
                theirs[u].discard(gone)
                if u != r:
                    theirs[u].add(r)
                    mine[r].add(u)
            mine[r].discard(gone)
            mine[r].discard(r)
        for i in self.touching.pop(gone):
            ends = self.ends[i]
            ends.discard(gone)
            ends.add(r)
            if len(ends) > 1:
                self.touching[r].add(i)
            else:  # internal now: nobody pays it
                self.touching[r].discard(i)
        return r

    def run(self) -> None:
        todo = sorted(self.compute, reverse=True)
        queued = set(todo)
        while todo:
            v = todo.pop()
            queued.discard(v)
            if v not in self.compute or 0.0 not in self.compute[v].values():
                continue
            w = self.target(v)
            if w is None:
                continue
            r = self.merge(v, w)
            near = {r} | self.succ[r] | self.pred[r] | {u for i in self.touching[r] for u in self.ends[i]}
            for u in near - queued:
                todo.append(u)
                queued.add(u)


def fold_units(units: Units, *, ignore_memory: bool) -> Units:
    """Merge each free unit into a neighbour where that never raises a load; the optimum is kept.

    A unit v goes onto the stage of a unit w when: v costs nothing on every
    kind w can run on and pins no memory (or memory never binds,
    ``ignore_memory``); w is v's only precedence successor, or its only
    predecessor, or v has no precedence at all (then the chain stays one of
    ideals); and x <= y, with y the cost of links whose endpoints are just v
    and w and x that of links touching v but not w. Moving v then: w's stage
    stops paying the y links and starts paying at most the x ones; v's old
    stage stops paying the y links and starts paying at most the x ones
    (those whose other endpoints all sat with it); every other stage and
    every link holding w pays no more than before. So some optimum has v
    beside w. Repeats until no unit moves.

    Before: ``units.edges`` is acyclic. After: units are renumbered in a
    topological order of the merged precedence (smallest original node first).
    """
    folder = _Folder(units, ignore_memory=ignore_memory)
    folder.run()
    group = [folder.sets.find(u) for u in range(units.count)]
    firsts: dict[int, int] = {}
    for u in range(units.count):
        firsts[group[u]] = min(firsts.get(group[u], units.members[u][0]), units.members[u][0])
    edges = {(firsts[group[a]], firsts[group[b]]) for a, b in units.edges if group[a] != group[b]}
    order, stuck = topological_order(sorted(firsts.values()), edges)
    if stuck:  # pragma: no cover - each merge is along the only edge on one side
        raise AssertionError("folding made a precedence cycle")
    renum = {f: i for i, f in enumerate(order)}
    new = [renum[firsts[group[u]]] for u in range(units.count)]
    parts: list[list[int]] = [[] for _ in order]
    for u in range(units.count):
        parts[new[u]].append(u)
    members = tuple(tuple(sorted(v for u in p for v in units.members[u])) for p in parts)
    unit_of = tuple(new[u] for u in units.unit_of)
    compute, memory = part_sums(units.compute, units.memory, parts)
    links = merge_links(new, ((link.producer, link.consumers, link.cost) for link in units.links))
    prec = tuple(sorted((renum[a], renum[b]) for a, b in edges))
    return Units(unit_of, members, compute, memory, prec, links)


def unit_graph(graph: CostGraph, units: Units) -> CostGraph:
    """The units as an (inference) cost graph whose tensors only carry cost.

    Each link is written from its first endpoint in unit order so that node
    ids stay a topological order of every tensor; its load is the same either
    way. Precedence is ``units.edges``, not this graph's edges: a caller must
    pass it along (as :class:`~onnxsplit.solve.coarsen.Coarsened` does).
    """
    merged: dict[tuple[int, ...], float] = {}
    names: dict[tuple[int, ...], str] = {}
    for link in units.links:
        ends = tuple(sorted({link.producer, *link.consumers}))
        merged[ends] = merged.get(ends, 0.0) + link.cost
        names.setdefault(ends, f"unit{link.producer}")
    tensors = tuple(Tensor(names[ends], ends[0], ends[1:], cost=cost) for ends, cost in sorted(merged.items()))
    return CostGraph(
        names=tuple(graph.names[m[0]] for m in units.members),
        compute=dict(units.compute),
        memory=units.memory,
        tensors=tensors,
    )
