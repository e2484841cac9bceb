"""Local search baseline: move one unit at a time while the max load improves.

Like the paper's baseline it is non-contiguous and restarts from random
assignments, but unlike it every move respects memory, the kinds a node can
run on, and co-location groups (a group moves as one unit). On a training
graph the groups are the colour classes, so a backward node always moves with
its forward twin; being non-contiguous, the search needs no precedence, and it
prices every tensor the way the plan scorer does (sender once, each receiving
device once, at its default-link price), whichever way it runs.

A move is taken when it lowers (max load, sum of squared loads)
lexicographically: the second term lets the search walk across plateaus
where several devices share the max, which a pure max-load test cannot.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.solve.greedy import solve_greedy
from onnxsplit.solve.plan import (
    SIMPLE_BOUND_NOTE, Plan, Solver, fits_devices, plan_from_devices, simple_lower_bound,
)
from onnxsplit.solve.units import Units, units_of

log = logging.getLogger(__name__)

# Relative slack below which a change counts as no change (float noise).
_EPS = 1e-12


@dataclass(frozen=True)
class _Problem:
    units: Units
    names: tuple[str, ...]  # kind name of each device
    talks: tuple[bool, ...]  # whether each device pays communication
    capacity: tuple[float, ...]
    allowed: tuple[tuple[int, ...], ...]  # devices each unit may use
    touching: tuple[tuple[int, ...], ...]  # links each unit is an end of


def _problem(graph: CostGraph, devices: Devices) -> _Problem:
    units = units_of(graph, merge_cycles=False)
    expanded = devices.expanded()
    allowed = tuple(
        tuple(
            d
            for d, kind in enumerate(expanded)
            if math.isfinite(units.compute[kind.name][u]) and units.memory[u] <= kind.memory
        )
        for u in range(units.count)
    )
    touching: list[list[int]] = [[] for _ in range(units.count)]
    for i, link in enumerate(units.links):
        for u in (link.producer, *link.consumers):
            touching[u].append(i)
    return _Problem(
        units=units,
        names=tuple(k.name for k in expanded),
        talks=tuple(k.communicates for k in expanded),
        capacity=tuple(k.memory for k in expanded),
        allowed=allowed,
        touching=tuple(tuple(t) for t in touching),
    )


class _State:
    """An assignment with its loads kept up to date move by move."""

    def __init__(self, prob: _Problem, dev: list[int]) -> None:
        self.prob = prob
        self.dev = dev
        D = len(prob.names)
        self.load = [0.0] * D
        self.mem = [0.0] * D
        for u, d in enumerate(dev):
            self.load[d] += prob.units.compute[prob.names[d]][u]
            self.mem[d] += prob.units.memory[u]
        for i in range(len(prob.units.links)):
            for d, amount in self._link(i):
                self.load[d] += amount

    def _link(self, i: int) -> list[tuple[int, float]]:
        """What link i adds to each device's load under the current assignment."""
        link = self.prob.units.links[i]
        src = self.dev[link.producer]
        dests = {self.dev[c] for c in link.consumers}
        dests.discard(src)
        if not dests:
            return []
        talks = self.prob.talks
        out = [(src, link.cost)] if talks[src] else []
        out.extend((d, link.cost) for d in dests if talks[d])
        return out

    def delta(self, u: int, to: int) -> dict[int, float]:
        """Load change per device if u moved to device ``to``."""
        prob = self.prob
        frm = self.dev[u]
        change: dict[int, float] = {}
        change[frm] = -prob.units.compute[prob.names[frm]][u]
        change[to] = change.get(to, 0.0) + prob.units.compute[prob.names[to]][u]
        touched = prob.touching[u]
        for i in touched:
            for d, amount in self._link(i):
                change[d] = change.get(d, 0.0) - amount
        self.dev[u] = to
        for i in touched:
            for d, amount in self._link(i):
                change[d] = change.get(d, 0.0) + amount
        self.dev[u] = frm
        return change

    def apply(self, u: int, to: int, change: dict[int, float]) -> None:
        frm = self.dev[u]
        self.mem[frm] -= self.prob.units.memory[u]
        self.mem[to] += self.prob.units.memory[u]
        self.dev[u] = to
        for d, amount in change.items():
            self.load[d] += amount


def _score(load: list[float]) -> tuple[float, float]:
    return max(load), math.fsum(x * x for x in load)


def _better(new: tuple[float, float], old: tuple[float, float]) -> bool:
    if new[0] < old[0] * (1 - _EPS) - _EPS:
        return True
    return new[0] <= old[0] * (1 + _EPS) + _EPS and new[1] < old[1] * (1 - _EPS) - _EPS


def _climb(state: _State, rng: random.Random, deadline: float) -> None:
    prob = state.prob
    order = list(range(prob.units.count))
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        rng.shuffle(order)
        current = _score(state.load)
        for u in order:
            if time.monotonic() >= deadline:
                log.info("local search: time limit reached inside a pass")
                break
            frm = state.dev[u]
            best = None
            for to in prob.allowed[u]:
                if to == frm or state.mem[to] + prob.units.memory[u] > prob.capacity[to]:
                    continue
                change = state.delta(u, to)
                load = list(state.load)
                for d, amount in change.items():
                    load[d] += amount
                score = _score(load)
                if _better(score, current) and (best is None or _better(score, best[0])):
                    best = (score, to, change)
            if best is not None:
                state.apply(u, best[1], best[2])
                current = best[0]
                improved = True


def _random_start(prob: _Problem, rng: random.Random, *, tries: int = 20) -> list[int] | None:
    """A random assignment that respects memory, or None if tries run out."""
    U = prob.units.count
    for _ in range(tries):
        dev = [-1] * U
        mem = [0.0] * len(prob.names)
        order = list(range(U))
        rng.shuffle(order)
        # Place the biggest units first so random placement rarely runs out of room.
        order.sort(key=lambda u: -prob.units.memory[u])
        for u in order:
            options = [d for d in prob.allowed[u] if mem[d] + prob.units.memory[u] <= prob.capacity[d]]
            if not options:
                break
            d = rng.choice(options)
            dev[u] = d
            mem[d] += prob.units.memory[u]
        else:
            return dev
    return None


def _unit_devices(prob: _Problem, plan: Plan) -> list[int]:
    return [plan.stage_device[plan.stage_of[m[0]]] for m in prob.units.members]


def solve_local(
    graph: CostGraph,
    devices: Devices,
    *,
    seed: int = 0,
    restarts: int = 10,
    time_limit: float = 30.0,
    start: Plan | None = None,
) -> Plan:
    """Hill-climb from ``start`` (or the greedy plan) and from random assignments.

    The first climb starts from ``start`` when given, else from the greedy
    plan; the remaining ``restarts - 1`` from random feasible assignments.
    Returns the best plan found (never worse than ``start``).
    """
    prob = _problem(graph, devices)
    rng = random.Random(seed)
    deadline = time.monotonic() + time_limit
    if start is not None and not fits_devices(graph, devices, start):
        log.warning("local search: the start plan breaks memory, kinds or groups; ignoring it")
        start = None
    if start is None:
        try:
            start = solve_greedy(graph, devices)
        except InfeasibleError:
            start = None
    starts: list[list[int] | None] = [_unit_devices(prob, start) if start is not None else None]
    best: tuple[float, list[int]] | None = None
    for r in range(max(1, restarts)):
        if r > 0 and time.monotonic() >= deadline:
            break
        dev = starts[0] if r == 0 else None
        if dev is None:
            dev = _random_start(prob, rng)
        if dev is None:
            continue
        state = _State(prob, list(dev))
        _climb(state, rng, deadline)
        value = max(state.load)
        log.debug("local search restart %d: %.6g", r, value)
        if best is None or value < best[0]:
            best = (value, list(state.dev))
    if best is None:
        raise InfeasibleError("local search found no assignment that fits the devices' memory and supported operators")
    node_dev = [best[1][prob.units.unit_of[v]] for v in range(graph.n)]
    plan = plan_from_devices(
        graph, devices, node_dev, solver=Solver.LOCAL, lower_bound=simple_lower_bound(graph, devices),
        notes=(SIMPLE_BOUND_NOTE,),
    )
    if start is not None:
        # Incremental loads drift by float noise; never return worse than the start.
        base = plan_from_devices(
            graph,
            devices,
            [start.stage_device[start.stage_of[v]] for v in range(graph.n)],
            solver=Solver.LOCAL,
            lower_bound=plan.lower_bound,
            notes=plan.notes,
        )
        if base.value < plan.value:
            plan = base
    return plan
