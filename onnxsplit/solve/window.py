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

Counting hand-offs makes the cores bigger (:func:`load_closures`): in a plan
that uses every device the devices before a boundary also send what crosses
it, and those after receive it, so the sums become minimum cuts rather than
closures. :func:`solve_over_cores` runs the exact DP over such cores for
trial bounds between a proven lower bound and a known plan: each trial
either finds the optimum or proves it higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve.maxflow import FlowNetwork
from onnxsplit.solve.plan import Plan, Solver, make_plan

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


def cores_within(anc: np.ndarray, desc: np.ndarray, count: int, bound: float, *, receive: float = 0.0,
                 send: float = 0.0) -> list[list[int]]:
    """The cores of stages 1..count (as 0-based lists) from per-node sums such as :func:`ancestor_descendant_compute`'s.

    Every contiguous plan on ``count`` identical devices whose max load is
    at most ``bound`` puts each core on one device (see the module
    docstring); nodes in no core are free. ``receive`` and ``send`` (default
    0) are what every device but the first must receive and every device
    but the last must send; they, and sums that count hand-offs
    (:func:`load_closures`), hold only for plans that use every device, so
    with them the cores bind only those plans.
    """
    if count < 1 or not math.isfinite(bound):
        return []
    n = len(anc)
    # Infinite sums (a node no boundary can pass) say nothing about the scale of the rounding.
    slack = _SLACK * max(1.0, float(anc[np.isfinite(anc)].max(initial=0.0)), bound * count)
    cores = []
    for p in range(1, count + 1):
        # The p-1 devices before boundary p-1 carry anc(v) plus what devices 2..p-1 receive, if v is inside it.
        before = (p - 1) * bound - max(p - 2, 0) * receive + slack
        after_previous = anc > before if p > 1 else np.ones(n, dtype=bool)
        after = (count - p) * bound - max(count - p - 1, 0) * send + slack
        inside = desc > after if p < count else np.ones(n, dtype=bool)
        cores.append([int(v) for v in np.flatnonzero(after_previous & inside)])
    return cores


def stage_cores(graph: CostGraph, compute: np.ndarray, count: int, bound: float) -> list[list[int]]:
    """:func:`cores_within` for ``graph``; ``compute``: every node's time on the devices' kind (finite)."""
    if count < 1 or not math.isfinite(bound):
        return []
    anc, desc = ancestor_descendant_compute(graph, compute)
    return cores_within(anc, desc, count, bound)


@dataclass(frozen=True)
class LoadClosures:
    """Per-node lower bounds on what the devices on each side of a boundary carry (:func:`load_closures`).

    ``before[v]``: the devices before any boundary that holds v carry at
    least this much compute and hand-off time together; ``after[v]``: the
    devices after any boundary that leaves v out. ``receive`` and ``send``:
    every device but the first receives, and every device but the last
    sends, at least this much, in a plan whose devices are all used.
    """

    before: np.ndarray
    after: np.ndarray
    receive: float = 0.0
    send: float = 0.0


def load_closures(graph: CostGraph, compute: np.ndarray, *, communicates: bool = True,
                  deadline: float = math.inf) -> LoadClosures:
    """Lower bounds for the stage cores of plans that use every device, counting hand-offs.

    In a chain of ideals ``I_1 <= ... <= I_{m-1}`` with every device used,
    each ``I_p`` is neither empty nor the whole graph. The devices before
    boundary p send every tensor made in ``I_p`` and read outside it, and
    the devices after it receive every tensor read outside ``I_p`` and made
    in it, at least once. So ``before[v]`` is the least ``compute(I) +
    out(I)`` over ideals I that hold v, ``out(I)`` being the cost of the
    tensors made in I and read outside; ``after[v]`` the least
    ``compute(U) + in(U)`` over up-sets U (complements of ideals) that hold
    v. When the graph has one sink (one source) the whole graph is not an
    ideal (up-set) that counts, and every device but the last (first) holds
    a node whose every output is sent (input is received): ``send``
    (``receive``) is the least such total over nodes.

    Each sum is a minimum cut: one maximum flow per node and side. When
    ``deadline`` (``time.monotonic()``) passes, the remaining nodes get the
    plain ancestor (descendant) compute, a weaker bound that still holds.
    Without ``communicates`` tensors cost nothing here.
    Before: node ids are a topological order; ``compute`` is finite.
    """
    import time

    n = graph.n
    anc, desc = ancestor_descendant_compute(graph, compute)
    before, after = anc.copy(), desc.copy()
    if not communicates:
        return LoadClosures(before, after)
    tensors = [t for t in graph.tensors if t.consumers]
    preds, succs = graph.predecessors(), graph.successors()
    sinks = [v for v in range(n) if not succs[v]]
    sources = [v for v in range(n) if not preds[v]]
    for side, out in ((0, before), (1, after)):
        net = FlowNetwork(n + len(tensors) + 1)
        drain = n + len(tensors)
        for v in range(n):
            net.add(v, drain, float(compute[v]))
        for i, t in enumerate(tensors):
            x = n + i
            for w in set(t.consumers):
                # An ideal holding a consumer holds the producer; an up-set holding the producer holds the consumer.
                if side == 0:
                    net.add(w, t.producer, math.inf)
                    net.add(x, w, math.inf)
                else:
                    net.add(t.producer, w, math.inf)
                    net.add(w, x, math.inf)
            if side == 0:
                net.add(t.producer, x, t.cost)
            else:
                net.add(x, t.producer, t.cost)
        ends = sinks if side == 0 else sources
        if len(ends) == 1:
            # The set must leave out the graph's only sink (source): it is not the whole graph.
            net.add(ends[0], drain, math.inf)
        # Nodes in topological order (reversed for up-sets): a node's set holds its neighbour's, so the
        # neighbour's flow is a start; each residual is kept until every node that can use it is done.
        order = range(n) if side == 0 else range(n - 1, -1, -1)
        near = preds if side == 0 else succs
        far = succs if side == 0 else preds
        waiting = [len(f) for f in far]
        kept: dict[int, tuple[float, list[float]]] = {}
        for v in order:
            if time.monotonic() > deadline:
                break
            start = max((kept[u] for u in near[v] if u in kept), key=lambda k: k[0], default=None)
            if start is not None and math.isinf(start[0]):
                value, residual = start
            else:
                value, residual = net.max_flow(v, drain, start=start)
            out[v] = max(out[v], value)
            if waiting[v]:
                kept[v] = (value, residual)
            for u in near[v]:
                waiting[u] -= 1
                if waiting[u] == 0:
                    kept.pop(u, None)
    receive = send = 0.0
    if len(sources) == 1 and n > 1:
        inputs = [0.0] * n
        for t in tensors:
            for w in set(t.consumers):
                inputs[w] += t.cost
        receive = min(inputs[v] for v in range(n) if v != sources[0])
    if len(sinks) == 1 and n > 1:
        outputs = [0.0] * n
        for t in tensors:
            outputs[t.producer] += t.cost
        send = min(outputs[v] for v in range(n) if v != sinks[0])
    return LoadClosures(before, after, receive, send)


@dataclass(frozen=True)
class CoredSearch:
    """What :func:`solve_over_cores` established: the optimum when found, and a proven lower bound either way."""

    plan: Plan | None
    lower_bound: float
    notes: tuple[str, ...] = ()


# Trial bounds, as fractions of the way from the proven lower bound to the best plan's value: low trials
# have big cores and small lattices, and each either finds the optimum or proves it higher.
TRIAL_STEPS = (0.02, 0.06, 0.15, 0.35, 0.7, 1.0)


def solve_over_cores(graph: CostGraph, devices: Devices, *, lower_bound: float, upper_bound: float,
                     time_limit: float = 60.0, steps: tuple[float, ...] = TRIAL_STEPS) -> CoredSearch:
    """The exact contiguous optimum when some trial bound's stage cores make the DP's lattice small enough.

    Before: ``lower_bound`` is proven (no contiguous plan is below it) and
    ``upper_bound`` is the value of some contiguous plan; one device kind
    has devices, without per-pair links; the graph is not a training graph
    (otherwise nothing is searched and the bound comes back unchanged).

    For a trial T, a plan with max load at most T uses some number m of
    devices, each of them; it keeps the cores of :func:`cores_within` for m
    devices with the hand-off sums of :func:`load_closures`. So the DP on m
    devices with those cores as co-location groups finds a plan within T
    if there is one using m devices, and the best over every m that can
    hold the compute is the optimum; when none finds a plan, T is a proven
    lower bound. Trials climb from the lower bound to the upper; the first
    lattice too big (higher trials have smaller cores) or the time limit
    ends the search.
    After: ``plan``, when set, is optimal (its lower bound is its value).
    """
    import time

    from onnxsplit.solve.coarsen import coarsen
    from onnxsplit.solve.dp import DPTooLarge, solve_dp

    kinds = [k for k in devices.kinds if k.count > 0]
    if len(kinds) != 1 or devices.pairs or graph.training or graph.n == 0 or not upper_bound > lower_bound:
        return CoredSearch(None, lower_bound)
    kind = kinds[0]
    deadline = time.monotonic() + time_limit
    coarse = coarsen(graph, devices)
    cg = coarse.graph
    compute = np.asarray(cg.compute[kind.name], dtype=np.float64)
    # The flows may take a third of the time; the rest is for the DPs.
    sums = load_closures(cg, compute, communicates=kind.communicates, deadline=time.monotonic() + time_limit / 3)
    total = float(compute.sum())
    proven = lower_bound
    for step in steps:
        trial = upper_bound if step >= 1 else proven + step * (upper_bound - proven)
        if trial <= proven:
            continue
        best: Plan | None = None
        for m in range(1, kind.count + 1):
            # m used devices carry the compute, and each hand-off between them is sent and received.
            if m * trial < total + (m - 1) * (sums.receive + sums.send) - _SLACK * max(1.0, total):
                continue
            cores = cores_within(sums.before, sums.after, m, trial, receive=sums.receive, send=sums.send)
            grouped = replace(cg, groups=_merged(cg.groups, cores, cg.n))
            fewer = replace(devices, kinds=tuple(replace(k, count=m) if k is kind else k for k in devices.kinds))
            left = deadline - time.monotonic()
            if left <= 0:
                return CoredSearch(None, proven, (f"stage cores: time ran out at trial {trial:.10g}",))
            try:
                found = solve_dp(grouped, fewer, time_limit=left, upper_bound=trial)
            except InfeasibleError:  # DPBoundTooLow too: no plan on m devices within the trial
                continue
            except DPTooLarge as exc:
                if exc.lower_bound > trial * (1 + _SLACK):  # its bounded search proved none within the trial
                    continue
                return CoredSearch(None, proven, (f"stage cores: lattice too big at trial {trial:.10g} ({exc})",))
            if best is None or found.value < best.value:
                best = make_plan(graph, devices, coarse.expand(found.stage_of), found.stage_device,
                                 solver=Solver.DP, lower_bound=math.inf)
        if best is not None and best.value <= trial * (1 + _SLACK):
            free = cg.n - sum(len(c) for c in cores_within(sums.before, sums.after, kind.count, trial,
                                                           receive=sums.receive, send=sums.send))
            note = (f"exact over stage cores: {free} of {cg.n} coarse nodes free for plans within {trial:.10g}"
                    f" on {kind.count} devices")
            return CoredSearch(replace(best, notes=best.notes + (note,)), best.value, (note,))
        if best is not None:  # rounding at the trial's edge: neither proven optimal nor proven higher
            break
        proven = trial
    return CoredSearch(None, proven, (f"stage cores: no plan within {proven:.10g}",) if proven > lower_bound else ())


def _merged(groups: tuple[tuple[int, ...], ...], cores: list[list[int]], n: int) -> tuple[tuple[int, ...], ...]:
    """The graph's co-location groups joined with the cores (a node in both ties them together)."""
    from onnxsplit.dag import UnionFind

    sets = UnionFind(n)
    for group in (*groups, *cores):
        for v in group[1:]:
            sets.union(v, group[0])
    members: dict[int, list[int]] = {}
    for v in range(n):
        members.setdefault(sets.find(v), []).append(v)
    return tuple(sorted(tuple(m) for m in members.values() if len(m) > 1))
