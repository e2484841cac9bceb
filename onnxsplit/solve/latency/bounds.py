"""Lower bounds on single-sample latency: the critical path and the calls along heavy paths.

Every bound here holds for any placement (with at most ``q`` pieces per
communicating device where it says so), so a plan that meets one is optimal.
"""

from __future__ import annotations

import math

import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices


def fastest_times(graph: CostGraph, devices: Devices) -> list[float]:
    """Each node's time at its fastest kind that has devices (0 where none can run it)."""
    best = [min((graph.compute[k.name][v] for k in devices.kinds if k.count), default=0.0) for v in range(graph.n)]
    return [0.0 if math.isinf(c) else c for c in best]


def path_heads(graph: CostGraph, weight: list[float]) -> list[float]:
    """Heaviest path ending at each node, the node's own weight included."""
    head = [0.0] * graph.n
    preds = graph.predecessors()
    for v in range(graph.n):
        head[v] = weight[v] + max((head[u] for u in preds[v]), default=0.0)
    return head


def critical_path(graph: CostGraph, devices: Devices) -> float:
    """Longest path with every node at its fastest kind: no placement beats it.

    Along a path each node computes after its predecessor's output is ready,
    whether the two share an atomic piece or not.
    """
    return max(path_heads(graph, fastest_times(graph, devices)), default=0.0)


def critical_chain(graph: CostGraph, devices: Devices) -> list[int]:
    """The nodes of one longest path at fastest times, in order."""
    return _heaviest_chain(graph, fastest_times(graph, devices))


def _heaviest_chain(graph: CostGraph, weight: list[float]) -> list[int]:
    """The nodes of one path of greatest total node weight, in order."""
    head = path_heads(graph, weight)
    preds = graph.predecessors()
    v = max(range(graph.n), key=head.__getitem__)
    chain = [v]
    while preds[v]:
        v = max(preds[v], key=head.__getitem__)
        chain.append(v)
    return chain[::-1]


def _path_bound(graph: CostGraph, devices: Devices, chain: list[int], *, q: int) -> float:
    """The least time the calls along ``chain`` can take, whatever the rest of the graph does.

    Along a path, calls run one after another. Cut the path into runs: a run
    on a communicating device is (part of) one piece, which computes the
    run's nodes, receives the tensor entering the run and sends the one
    leaving it; a node on a quiet device computes. Minimise the sum over
    runs with each run's own memory within its device's and at most q runs
    per communicating device: every plan pays at least that.
    """
    kinds = [k for k in devices.kinds if k.count]
    talkers = [k for k in kinds if k.communicates]
    quiet = [k for k in kinds if not k.communicates]
    m = len(chain)
    runs = q * sum(k.count for k in talkers)
    into = [0.0] * (m + 1)  # into[j]: transfer from chain[j-1] to chain[j]; 0 at both ends
    for j in range(1, m):
        u, v = chain[j - 1], chain[j]
        into[j] = math.fsum(t.cost for t in graph.tensors if t.producer == u and v in t.consumers)
    edge = np.array(into)
    alone = [min((graph.compute[k.name][v] for k in quiet), default=math.inf) for v in chain]
    prefix = {k.name: np.concatenate([[0.0], np.cumsum([graph.compute[k.name][v] for v in chain])]) for k in talkers}
    memory = np.concatenate([[0.0], np.cumsum([graph.memory[v] for v in chain])])
    best = np.full((m + 1, runs + 1), math.inf)
    best[0, 0] = 0.0
    for i in range(m):
        best[i + 1] = np.minimum(best[i + 1], best[i] + alone[i])
        if not runs:
            continue
        cost = np.full(m - i, math.inf)
        for k in talkers:
            # inf - inf is nan where an unsupported node sits on both sides; nan never wins a minimum.
            with np.errstate(invalid="ignore"):
                work = prefix[k.name][i + 1:] - prefix[k.name][i]
            fits = memory[i + 1:] - memory[i] <= k.memory
            cost = np.fmin(cost, np.where(fits, work, math.inf))
        cost = cost + edge[i] + edge[i + 1:]
        best[i + 1:, 1:] = np.fmin(best[i + 1:, 1:], best[i, :-1][None, :] + cost[:, None])
    return float(np.min(best[m]))


def latency_lower_bound(graph: CostGraph, devices: Devices, *, q: int = 1) -> tuple[float, str]:
    """A latency no placement with at most ``q`` pieces per device beats, and where it comes from.

    The best of: the critical path; the calls along the critical path
    (:func:`_path_bound`), which see the hand-offs memory forces on it; and,
    when every device communicates (so each runs its nodes one after
    another), the total work over the device count.
    """
    bound, source = critical_path(graph, devices), "critical path"
    if graph.n:
        fastest = fastest_times(graph, devices)
        # Memory forces the hand-offs, so a path heavy in memory can bound better than the critical one.
        scale = math.fsum(fastest) / max(math.fsum(graph.memory), 1e-300)
        mixed = [c + scale * m for c, m in zip(fastest, graph.memory)]
        for weight, what in ((fastest, "the critical path"), (list(graph.memory), "the path heaviest in memory"),
                             (mixed, "the path heaviest in time plus memory")):
            along = _path_bound(graph, devices, _heaviest_chain(graph, weight), q=q)
            if along > bound * (1 + 1e-12):
                bound, source = along, f"hand-offs along {what}"
    if all(k.communicates for k in devices.kinds if k.count):
        work = math.fsum(fastest_times(graph, devices)) / devices.count
        if work > bound:
            bound, source = work, "total work / devices"
    return bound, source
