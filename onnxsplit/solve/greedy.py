"""Greedy and expert baselines.

Greedy fills devices along topological orders of the units (see
:mod:`onnxsplit.solve.units`; for a training graph the units and their
forward precedence of :mod:`onnxsplit.solve.training`); expert scores a
hand-made split in the paper's format.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Sequence

from onnxsplit.costgraph import CostGraph
from onnxsplit.dag import latest_first_order
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError, PlanError
from onnxsplit.solve.plan import (
    SIMPLE_BOUND_NOTE, Plan, Solver, make_plan, max_load, plan_from_devices, simple_lower_bound,
)
from onnxsplit.solve.training import training_units
from onnxsplit.solve.units import Units, units_of

log = logging.getLogger(__name__)


def _cut_costs(units: Units, order: Sequence[int]) -> list[float]:
    """cut[i]: transfer time of links crossing between order[:i+1] and the rest.

    A link crosses when it has ends on both sides; its producer need not come
    first (a training graph's backward tensors run against the order).
    """
    pos = [0] * units.count
    for i, u in enumerate(order):
        pos[u] = i
    diff = [0.0] * (units.count + 1)
    for link in units.links:
        ends = [pos[link.producer], *(pos[c] for c in link.consumers)]
        first, last = min(ends), max(ends)
        if last > first:
            diff[first] += link.cost
            diff[last] -= link.cost
    cut, running = [], 0.0
    for i in range(units.count):
        running += diff[i]
        cut.append(running)
    return cut


def _fill(
    units: Units,
    kinds: Sequence,
    order: Sequence[int],
    device_order: Sequence[int],
    target: float,
    window: float,
    cut: Sequence[float],
) -> list[int] | None:
    """Walk units in the given topological order, closing each device near the target load.

    A device may end anywhere its compute lies within ``window`` of the
    target; among those ends the cheapest cut wins (comm on operator graphs
    dwarfs compute). It must end earlier when the next unit does not fit its
    memory or cannot run there. Returns unit -> device, or None when devices
    run out.
    """
    U = units.count
    dev_of = [-1] * U
    s = 0
    for slot, d in enumerate(device_order):
        if s >= U:
            break
        kind = kinds[d]
        last = slot == len(device_order) - 1
        load = mem = 0.0
        ends: list[int] = []  # feasible ends (inclusive) inside the window
        reach = s - 1  # furthest feasible end
        for e in range(s, U):
            c = units.compute[kind.name][order[e]]
            if math.isinf(c) or mem + units.memory[order[e]] > kind.memory:
                break
            load += c
            mem += units.memory[order[e]]
            if not last and load > target * (1 + window) and reach >= s:
                break
            reach = e
            if load >= target * (1 - window):
                ends.append(e)
        if last:
            if reach < U - 1:
                return None
            end = reach
        elif ends:
            end = min(ends, key=lambda e: (cut[e], abs(e - ends[0])))
        else:
            end = reach
        for i in range(s, end + 1):
            dev_of[order[i]] = d
        s = end + 1
    return dev_of if s >= U else None


def solve_greedy(
    graph: CostGraph,
    devices: Devices,
    *,
    slack: Sequence[float] = (1.0, 1.05, 1.1, 1.2, 1.35, 1.5),
    windows: Sequence[float] = (0.0, 0.1, 0.25),
) -> Plan:
    """Fill devices in topological order up to about an equal share of the compute.

    The share is total compute (each node on its fastest kind) over m
    devices, times each factor in ``slack``, for every m up to the device
    count -- fewer than all devices pays when a slow kind (the paper's CPU)
    should take little or nothing -- each device closing at the cheapest cut
    within each ``window`` of that share. Units are walked in two topological
    orders (as soon and as late as possible) and every order of the device
    kinds is tried; the plan with the smallest max load is kept. The result
    is contiguous (for a training graph: in the forward precedence, with each
    backward node beside its colour class, stages in the order they were filled).
    """
    units = training_units(graph) if graph.training else units_of(graph, merge_cycles=True)
    kinds = devices.expanded()
    if units.count == 0:
        return make_plan(graph, devices, [], [], solver=Solver.GREEDY)
    best_unit = [min(units.compute[k.name][u] for k in devices.kinds if k.count) for u in range(units.count)]
    total = math.fsum(c for c in best_unit if not math.isinf(c))
    blocks = [[d for d, k in enumerate(kinds) if k.name == kd.name] for kd in devices.kinds if kd.count]
    best: tuple[float, list[int]] | None = None
    tried: set[tuple[int, ...]] = set()
    # As late as it can go: weights and shape computations then sit next to their consumer instead of
    # at the front, so prefixes of the order make far cheaper cuts.
    orders = [list(range(units.count)), latest_first_order(units.count, units.edges)]
    cuts = [_cut_costs(units, order) for order in orders]
    # Kind orders grow factorially; a couple of dozen covers every realistic device file.
    perms = list(itertools.islice(itertools.permutations(blocks), 24))
    for perm, (order, cut) in itertools.product(perms, zip(orders, cuts)):
        device_order = [d for block in perm for d in block]
        for m in range(1, devices.count + 1):
            for factor, window in itertools.product(slack, windows):
                dev_of = _fill(units, kinds, order, device_order, total / m * factor, window, cut)
                if dev_of is None or tuple(dev_of) in tried:
                    continue
                tried.add(tuple(dev_of))
                node_dev = [dev_of[units.unit_of[v]] for v in range(graph.n)]
                value = max_load(graph, devices, node_dev, list(range(len(kinds))))
                if best is None or value < best[0]:
                    best = (value, node_dev, device_order)
    if best is None:
        raise InfeasibleError("greedy placement found no device order that fits memory and supported kinds")
    if graph.training:
        # Stages in the order the devices were filled: that order also keeps the mirrored backward
        # edges of orphaned classes, which the device graph of forward tensors does not see.
        pos = {d: i for i, d in enumerate(best[2])}
        return make_plan(graph, devices, [pos[d] for d in best[1]], list(best[2]), solver=Solver.GREEDY)
    return plan_from_devices(graph, devices, best[1], solver=Solver.GREEDY)


def evaluate_expert(graph: CostGraph, devices: Devices, split_path: str | Path) -> Plan:
    """Score a hand-made split in the paper's format.

    The file's accelerator slots go to the ``acc`` devices in order and its
    CPU slots to the ``cpu`` devices in order; stages are put in pipeline
    order when tensors only flow forward between them (forward tensors, for
    a training graph). A training split may name forward nodes only: each
    backward node then goes with its colour class, as the paper's scorer does.
    """
    from onnxsplit.paperformat import load_expert_split

    slot_of, slot_kinds = load_expert_split(split_path, graph)
    expanded = devices.expanded()
    free = {k.name: [d for d, e in enumerate(expanded) if e.name == k.name] for k in devices.kinds}
    slot_device = []
    for slot, kind in enumerate(slot_kinds):
        if not free.get(kind):
            raise PlanError(f"{split_path}: slot {slot} needs a {kind!r} device, and there are no more of them")
        slot_device.append(free[kind].pop(0))
    device_of = [slot_device[slot_of[v]] for v in range(graph.n)]
    return plan_from_devices(graph, devices, device_of, solver=Solver.EXPERT, lower_bound=simple_lower_bound(graph, devices),
                             notes=(SIMPLE_BOUND_NOTE,))
