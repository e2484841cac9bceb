"""A bound on the max load from one node's device: the least load of any node set holding it.

Whatever the placement (contiguous or not), the device D that holds node v
pays its compute and every tensor it cuts: a tensor whose producer and
consumers are partly inside D is sent or received by D exactly once. So

    load_k(D) = sum over w in D of compute_k(w) + sum over tensors t cut by D of cost_t

(cost only when kind k communicates), and ``min over D containing v of
load_k(D)`` bounds from below the load of v's device, whichever D the plan
gives it. Dropping memory and contiguity only lowers that minimum, so it is
a valid bound on the max load. The minimum is a minimum s-t cut: v joins
the source, every node pays its compute on an edge to the sink, and each
tensor is a pair of auxiliary nodes (every member -> a, a -> b at the
tensor's cost, b -> every member), so that an edge a -> b is cut exactly
when the tensor's members are split (Lawler's hypergraph cut).

The flow value of any feasible flow is at most the minimum cut, so the value
returned is a proof even though the flow is computed in floating point; a
relative margin covers the rounding of its sum.
"""

from __future__ import annotations

import math
import time
from collections import deque

import numpy as np

from onnxsplit.solve.lattice import Problem
from onnxsplit.solve.maxflow import FlowNetwork

# Most max-flow runs per bound, and seconds: the heaviest candidates come first, so stopping early only weakens it.
MAX_FLOWS = 400
MAX_SECONDS = 0.5
# Nodes around each candidate that enter its flow (the rest are dropped, which keeps the bound valid).
NEAR = 400
# Relative margin for the rounding of a flow's value (sums of at most a few thousand terms).
_ROUNDING = 1e-12


def _tensor_members(prob: Problem) -> list[tuple[int, ...]]:
    """Per tensor of ``prob``, its producer and distinct consumers."""
    members: list[set[int]] = [{int(p)} for p in prob.prod]
    for which, reader in prob.readers:
        for t, c in zip(which.tolist(), reader.tolist()):
            members[t].add(c)
    return [tuple(sorted(m)) for m in members]


def _neighbourhood(members: list[tuple[int, ...]], touching: list[list[int]], v: int, size: int) -> list[int]:
    """Up to ``size`` nodes nearest v (v first), breadth first over shared tensors."""
    seen = {v}
    order = [v]
    queue = deque([v])
    while queue and len(order) < size:
        a = queue.popleft()
        for t in touching[a]:
            for w in members[t]:
                if w not in seen and len(order) < size:
                    seen.add(w)
                    order.append(w)
                    queue.append(w)
    return order


def _least_device(prob: Problem, members: list[tuple[int, ...]], touching: list[list[int]], v: int,
                  hold: np.ndarray, talks: bool, *, size: int) -> float:
    """A lower bound on min over D containing v of load(D) on one kind (``hold``: compute, inf where a node
    cannot sit).

    Only a neighbourhood N of v enters the flow: nodes outside N and the
    tensors touching them are dropped, which only removes non-negative
    terms from every D's load, so the minimum over the rest is still a
    lower bound (equal to the true one when N holds every node).
    """
    if not talks:
        return float(hold[v])
    near = _neighbourhood(members, touching, v, size)
    local = {w: i for i, w in enumerate(near)}
    tensors = sorted({t for w in near for t in touching[w] if all(x in local for x in members[t])})
    n, nt = len(near), len(tensors)
    source, sink = n + 2 * nt, n + 2 * nt + 1
    finite = float(np.where(np.isfinite(hold[near]), hold[near], 0.0).sum() + prob.cost[tensors].sum())
    big = 2.0 * finite + 1.0
    flow = FlowNetwork(n + 2 * nt + 2)
    flow.add(source, 0, big)
    for i, w in enumerate(near[1:], 1):
        flow.add(i, sink, float(hold[w]) if math.isfinite(hold[w]) else big)
    for j, t in enumerate(tensors):
        a, b = n + 2 * j, n + 2 * j + 1
        for w in members[t]:
            flow.add(local[w], a, big)
            flow.add(b, local[w], big)
        flow.add(a, b, float(prob.cost[t]))
    cut, _ = flow.max_flow(source, sink)
    return float(hold[v]) + cut * (1 - _ROUNDING)


def node_bound(prob: Problem, *, max_flows: int = MAX_FLOWS, max_seconds: float = MAX_SECONDS,
               near: int = NEAR) -> float:
    """The largest, over nodes v, of the least load a device holding v can have (see the module docstring).

    Nodes are tried heaviest first (by the load of v alone, an upper bound
    on its value) and the search stops when no untried node can raise the
    bound, or after ``max_flows`` flows or ``max_seconds``; the bound is
    valid at any point. A node no kind can hold is skipped (the solvers
    refuse it before searching). Each flow sees the ``near`` nodes closest
    to v (see :func:`_least_device`).
    """
    n = prob.n
    if n == 0:
        return 0.0
    members = _tensor_members(prob)
    cut_alone = np.zeros(n)  # cost of the tensors a device holding v alone cuts
    touching: list[list[int]] = [[] for _ in range(n)]
    for t, group in enumerate(members):
        for w in group:
            cut_alone[w] += prob.cost[t]
            touching[w].append(t)
    kinds = []
    alone = np.full(n, np.inf)
    for kind in prob.kinds:
        able = (kind.banned == 0) & (prob.memory <= kind.memory * (1 + 1e-12))
        hold = np.where(able, kind.compute, np.inf)
        kinds.append((hold, kind.communicates))
        alone = np.minimum(alone, hold + (cut_alone if kind.communicates else 0.0))
    # Without flows: the node's own compute on the kind where it is cheapest.
    bound = float(np.where(np.isfinite(alone), prob.cheapest, 0.0).max())
    began = time.monotonic()
    flows = 0
    for v in np.argsort(-np.where(np.isfinite(alone), alone, 0.0), kind="stable").tolist():
        if not alone[v] > bound or flows >= max_flows or time.monotonic() - began > max_seconds:
            break
        least = math.inf
        for hold, talks in kinds:
            if math.isfinite(hold[v]):
                least = min(least, _least_device(prob, members, touching, v, hold, talks, size=near))
                flows += talks
        if math.isfinite(least):
            bound = max(bound, least)
    return bound
