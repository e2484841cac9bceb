"""Stage cores: nodes every good contiguous plan puts on the same stage, so a deep graph's lattice stays small.

On N identical devices, let a contiguous plan have max load at most T and
boundaries ``{} = I_0 <= I_1 <= ... <= I_N = V`` (a device may be empty).
Device p's load is at least its compute, so the p devices before boundary
p hold ``compute(I_p) <= p*T`` and the N-p after it hold
``compute(V \\ I_p) <= (N-p)*T``. An ideal holding node v holds all of v's
ancestors, and one missing v misses all of v's descendants, so:

* v is outside ``I_p`` whenever ``anc(v) > p*T`` (anc: compute of v and its ancestors);
* v is inside ``I_p`` whenever ``desc(v) > (N-p)*T`` (desc: compute of v and its descendants).

A node outside ``I_{p-1}`` and inside ``I_p`` is on device p. Those nodes
form the *core* of stage p; a node on a path between two core nodes is on
device p too. So every contiguous plan with max load at most T respects
the cores as co-location groups, and the exact DP over the graph with the
cores contracted finds the contiguous optimum whenever that optimum is at
most T (for instance T = the value of any contiguous plan). With T close
to the optimum, only nodes near the N-1 boundaries stay free, and the
lattice grows with the boundary regions rather than with the depth of the
model.
"""

from __future__ import annotations

import math

import numpy as np

from onnxsplit.costgraph import CostGraph

# Relative slack on every threshold: float sums must never force a node that a plan within T leaves free.
_SLACK = 1e-9
# Rows of the closure summed at once (rows x nodes/8 float64 temporaries).
_ROWS = 512


def _closure_sums(order_preds: list[list[int]], weights: np.ndarray) -> np.ndarray:
    """For each node (in topological order, with its predecessors), the weight of it and all its ancestors."""
    n = len(order_preds)
    # Python integers as bitsets: one OR per edge, whatever the width.
    reach = [0] * n
    for v, preds in enumerate(order_preds):
        row = 1 << v
        for u in preds:
            row |= reach[u]
        reach[v] = row
    # Weight of every possible byte at every byte position: a set's weight is one gather per byte.
    nbytes = (n + 7) // 8
    padded = np.zeros(nbytes * 8)
    padded[:n] = weights
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(np.float64)
    table = padded.reshape(nbytes, 8) @ bits.T  # (byte position, byte value)
    columns = np.arange(nbytes)
    sums = np.empty(n)
    for start in range(0, n, _ROWS):
        rows = reach[start:start + _ROWS]
        data = np.frombuffer(b"".join(r.to_bytes(nbytes, "little") for r in rows), dtype=np.uint8)
        sums[start:start + len(rows)] = table[columns, data.reshape(len(rows), nbytes)].sum(axis=1)
    return sums


def ancestor_descendant_compute(graph: CostGraph, compute: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(anc, desc): per node, the compute of the node with all its ancestors, and with all its descendants.

    Before: node ids are a topological order (as in every CostGraph).
    Memory: an n x n bit matrix at a time (n = 30,000 nodes: about 110 MB).
    """
    n = graph.n
    anc = _closure_sums(graph.predecessors(), compute)
    # Descendants are ancestors in the reversed graph, whose topological order is the reversed ids.
    succ = graph.successors()
    flipped = [[n - 1 - w for w in succ[n - 1 - v]] for v in range(n)]
    desc = _closure_sums(flipped, compute[::-1].copy())[::-1]
    return anc, desc


def cores_within(anc: np.ndarray, desc: np.ndarray, count: int, bound: float) -> list[list[int]]:
    """The cores of stages 1..count (as 0-based lists) from :func:`ancestor_descendant_compute`'s sums.

    Every contiguous plan on ``count`` identical devices whose max load is
    at most ``bound`` puts each core on one device (see the module
    docstring); nodes in no core are free.
    """
    if count < 1 or not math.isfinite(bound):
        return []
    n = len(anc)
    slack = _SLACK * max(1.0, float(anc.max(initial=0.0)), bound * count)
    cores = []
    for p in range(1, count + 1):
        after_previous = anc > (p - 1) * bound + slack if p > 1 else np.ones(n, dtype=bool)
        inside = desc > (count - p) * bound + slack if p < count else np.ones(n, dtype=bool)
        cores.append([int(v) for v in np.flatnonzero(after_previous & inside)])
    return cores


def stage_cores(graph: CostGraph, compute: np.ndarray, count: int, bound: float) -> list[list[int]]:
    """:func:`cores_within` for ``graph``; ``compute``: every node's time on the devices' kind (finite)."""
    if count < 1 or not math.isfinite(bound):
        return []
    anc, desc = ancestor_descendant_compute(graph, compute)
    return cores_within(anc, desc, count, bound)
