"""The latency heuristic: several topological orders, each cut into runs by a DP, scored by list scheduling."""

from __future__ import annotations

import math

import numpy as np

from onnxsplit.costgraph import CostGraph
from onnxsplit.dag import latest_first_order, priority_order
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve.latency.bounds import fastest_times
from onnxsplit.solve.latency.scorer import latency_plan, plan_devices
from onnxsplit.solve.plan import Plan, Solver, fits_devices


def _orders(graph: CostGraph, devices: Devices) -> list[list[int]]:
    """Priority rules for the list of nodes the heuristic cuts into runs."""
    fastest = fastest_times(graph, devices)
    # Tails: heaviest path from each node to a sink, the critical-path rule of list scheduling.
    tail = [0.0] * graph.n
    succ = graph.successors()
    for v in reversed(range(graph.n)):
        tail[v] = fastest[v] + max((tail[w] for w in succ[v]), default=0.0)
    edges = graph.edges()
    return [
        list(range(graph.n)),
        # Every node as late as it can go, so cheap side inputs sit next to their reader.
        latest_first_order(graph.n, edges),
        priority_order(range(graph.n), edges, lambda v, step: -step)[0],  # depth first: finish a branch first
        priority_order(range(graph.n), edges, lambda v, step: -tail[v])[0],
    ]


def _quiet_choice(graph: CostGraph, devices: Devices) -> list[tuple[float, int]]:
    """Per node, the quiet device (and its time) a run of the heuristic would send it to; groups share one."""
    kinds = devices.expanded()
    quiet = [d for d, k in enumerate(kinds) if not k.communicates]
    first = {}
    for d in quiet:
        first.setdefault(kinds[d].name, d)
    choice = [(math.inf, -1)] * graph.n
    members = [list(g) for g in graph.groups]
    grouped = {v for g in members for v in g}
    members += [[v] for v in range(graph.n) if v not in grouped]
    for group in members:
        options = [(math.fsum(graph.compute[name][v] for v in group), d) for name, d in first.items()]
        if options:
            cost, d = min(options)
            for v in group:
                choice[v] = (graph.compute[kinds[d].name][v], d) if math.isfinite(cost) else (math.inf, -1)
    return choice


def _segment(graph: CostGraph, devices: Devices, order: list[int]) -> list[int] | None:
    """Cut ``order`` into consecutive runs, run k on the k-th communicating device, single nodes on a quiet one.

    Minimises the sum of every run's duration (compute plus its transfers)
    and every quiet node's time: no schedule of the result is slower than
    that sum, and when the graph is one chain it is the latency. Runs never
    split a co-location group and respect memory and supported operators.
    None when no such cut exists.
    """
    kinds = devices.expanded()
    talkers = [d for d, k in enumerate(kinds) if k.communicates]
    n, K = graph.n, len(talkers)
    pos = [0] * n
    for i, v in enumerate(order):
        pos[v] = i
    produced: list[list[int]] = [[] for _ in range(n)]
    read: list[list[int]] = [[] for _ in range(n)]
    last = [max(pos[c] for c in t.consumers) for t in graph.tensors]
    for ti, t in enumerate(graph.tensors):
        produced[t.producer].append(ti)
        for c in t.consumers:
            read[c].append(ti)
    group_of = [-1] * n
    for gi, g in enumerate(graph.groups):
        for v in g:
            group_of[v] = gi
    quiet = _quiet_choice(graph, devices)
    names = sorted({kinds[d].name for d in talkers})
    roomiest = max((kinds[d].memory for d in talkers), default=0.0)
    # seg[name][i][j - i - 1]: duration of the run order[i:j] on that kind (inf where it may not go).
    seg = {name: [] for name in names}
    for i in range(n):
        comm = 0.0
        expiring: dict[int, float] = {}
        counted: set[int] = set()
        groups_open: dict[int, int] = {}
        memory = 0.0
        work = {name: 0.0 for name in names}
        rows = {name: np.full(n - i, math.inf) for name in names}
        for j in range(i, n):
            v = order[j]
            comm -= expiring.pop(j, 0.0)
            for ti in produced[v]:
                if last[ti] > j:
                    comm += graph.tensors[ti].cost
                    expiring[last[ti]] = expiring.get(last[ti], 0.0) + graph.tensors[ti].cost
            for ti in read[v]:
                if pos[graph.tensors[ti].producer] < i and ti not in counted:
                    counted.add(ti)
                    comm += graph.tensors[ti].cost
            memory += graph.memory[v]
            if memory > roomiest:
                break
            g = group_of[v]
            if g >= 0:
                groups_open[g] = groups_open.get(g, 0) + 1
                if groups_open[g] == len(graph.groups[g]):
                    del groups_open[g]
            for name in names:
                work[name] += graph.compute[name][v]
                if not groups_open and math.isfinite(work[name]):
                    rows[name][j - i] = work[name] + comm
        for name in names:
            seg[name].append(rows[name])
    kind_of = [kinds[d].name for d in talkers]
    cap = [kinds[d].memory for d in talkers]
    best = np.full((n + 1, K + 1), math.inf)
    best[0, 0] = 0.0
    parent = np.full((n + 1, K + 1), -1, dtype=np.int64)  # start of the run ending here; -2: quiet node; -3: skip
    prefix_memory = np.concatenate([[0.0], np.cumsum([graph.memory[v] for v in order])])
    for i in range(n + 1):
        for k in range(1, K + 1):
            if best[i, k - 1] < best[i, k]:
                best[i, k], parent[i, k] = best[i, k - 1], -3
        if i == n:
            break
        cost = quiet[order[i]][0]
        for k in range(K + 1):
            if best[i, k] + cost < best[i + 1, k]:
                best[i + 1, k], parent[i + 1, k] = best[i, k] + cost, -2
        for k in range(1, K + 1):
            row = seg[kind_of[k - 1]][i]
            if math.isfinite(cap[k - 1]):
                row = np.where(prefix_memory[i + 1:] - prefix_memory[i] <= cap[k - 1], row, math.inf)
            cand = best[i, k - 1] + row
            target = best[i + 1:, k]
            better = cand < target
            target[better] = cand[better]
            parent[i + 1:, k][better] = i
    k = int(np.argmin(best[n]))
    if math.isinf(best[n, k]):
        return None
    device_of = [-1] * n
    j = n
    while j > 0 or k > 0:
        p = int(parent[j, k])
        if p == -3:
            k -= 1
        elif p == -2:
            device_of[order[j - 1]] = quiet[order[j - 1]][1]
            j -= 1
        else:
            for v in order[p:j]:
                device_of[v] = talkers[k - 1]
            j, k = p, k - 1
    return device_of


def latency_heuristic(graph: CostGraph, devices: Devices, *, candidates: tuple[Plan, ...] = ()) -> Plan:
    """The best latency among list-scheduled plans: runs cut from several topological orders, and ``candidates``.

    Each order (node index, as late as possible, depth first, longest tail
    first) is cut into runs by :func:`_segment`; every plan is scored by
    :func:`schedule`. Candidates that do not fit the devices are skipped.
    Raises InfeasibleError when nothing fits.
    """
    plans = []
    for rule, order in zip(("index", "alap", "depth-first", "longest-tail"), _orders(graph, devices)):
        device_of = _segment(graph, devices, order)
        if device_of is None:
            continue
        plan = latency_plan(graph, devices, device_of, solver=Solver.GREEDY, notes=(f"runs cut from the {rule} order",))
        if fits_devices(graph, devices, plan):
            plans.append(plan)
    for plan in candidates:
        if fits_devices(graph, devices, plan):
            plans.append(latency_plan(graph, devices, plan_devices(plan), solver=plan.solver, notes=plan.notes))
    if not plans:
        raise InfeasibleError("no placement fits the devices' memory and supported operators")
    return min(plans, key=lambda p: p.value)
