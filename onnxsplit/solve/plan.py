"""Plans, how they are scored, and the plan checker.

A plan puts every node on a stage; stages are numbered in pipeline order and
each runs on one device (an index into ``Devices.expanded()``). Scoring
follows the paper's max-load model: a device's load is its compute plus the
time to receive every tensor it reads from another device (once per tensor)
plus the time to send every tensor another device reads (once per tensor);
a device that does not communicate (the paper's CPU) pays neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence, TypeVar

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.dag import priority_order
from onnxsplit.devices import Devices, Link
from onnxsplit.errors import PlanError


_N = TypeVar("_N", bound="_Name")


class _Name(str, Enum):
    """An enum whose members are their names as plain strings (in JSON, f-strings and comparisons)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls: type[_N], value: str) -> _N:
        """The member named ``value``; PlanError (one line, listing the known names) otherwise."""
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise PlanError(f"unknown {cls.__name__.lower()} {value!r} (known: {known})") from None


class Solver(_Name):
    """What made a plan: a solver, a baseline, or the user."""

    DP = "dp"
    DP_RELAXED = "dp-relaxed"
    IP = "ip"
    IP_NONCONTIGUOUS = "ip-noncontiguous"
    IP_LATENCY = "ip-latency"
    LINEAR = "linear"
    GREEDY = "greedy"
    LOCAL = "local"
    EXPERT = "expert"
    USER = "user"


class Objective(_Name):
    """What a plan's ``value`` measures: the max stage load, or one sample's end-to-end time."""

    THROUGHPUT = "throughput"
    LATENCY = "latency"


@dataclass(frozen=True)
class StageLoad:
    compute: float
    receive: float
    send: float
    memory: float

    @property
    def load(self) -> float:
        return self.compute + self.receive + self.send


@dataclass(frozen=True)
class Plan:
    """node -> stage, stage -> device, and what the solver knows of its quality.

    ``value`` is the objective (max load for throughput, end-to-end time for
    latency); ``lower_bound`` is a proven bound on the optimum the solver
    searched (equal to ``value`` when proven optimal).
    """

    stage_of: tuple[int, ...]
    stage_device: tuple[int, ...]
    value: float
    lower_bound: float
    solver: Solver
    objective: Objective = Objective.THROUGHPUT
    loads: tuple[float, ...] = ()
    contiguous: bool = True
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Callers may pass the names as plain strings; store the members so a typo fails here.
        object.__setattr__(self, "solver", Solver.parse(self.solver))
        object.__setattr__(self, "objective", Objective.parse(self.objective))

    @property
    def num_stages(self) -> int:
        return len(self.stage_device)

    @property
    def gap(self) -> float:
        """Relative gap between the plan's value and the lower bound."""
        if self.value <= 0 or math.isinf(self.value):
            return 0.0 if self.value == self.lower_bound else math.inf
        return max(0.0, (self.value - self.lower_bound) / self.value)


def hand_off_ms(tensor: Tensor, link: Link | None) -> float:
    """Time to move ``tensor`` over ``link`` (None: the default link), in milliseconds.

    ``tensor.cost`` is the tensor's price on the default link: the cost graph
    was built with it (or, for the paper's graphs, measured). A ``[[pair]]``
    link prices the tensor's bytes, ``link.ms(nbytes)``. Two exceptions keep
    ``tensor.cost`` on every link: a tensor that costs nothing (the rewrite
    copies its constant producer into each stage that reads it, so no link
    carries it) and a tensor whose size is unknown (``nbytes`` 0, as in the
    paper's graphs): there is nothing to price but the given cost.
    """
    if link is None or tensor.cost == 0 or tensor.nbytes <= 0:
        return tensor.cost
    return link.ms(tensor.nbytes)


def stage_loads(
    graph: CostGraph, devices: Devices, stage_of: tuple[int, ...] | list[int], stage_device: tuple[int, ...] | list[int]
) -> list[StageLoad]:
    """Loads of every stage, recomputed from scratch.

    Each receiving device pays the tensor's price on its own link from the
    sender (:func:`hand_off_ms`); the sender pays once, at the price of its
    slowest link among the receivers: it pushes one copy down each link and
    is busy until the slowest is through (links that run at once, the
    common case of one NIC or one PCIe root per device, would make this
    optimistic; one send per receiver would count the same bytes twice on a
    broadcast). Without ``[[pair]]`` links every price is ``tensor.cost``
    and this is the paper's rule exactly.
    """
    if devices.pairs:
        return _linked_stage_loads(graph, devices, stage_of, stage_device)
    kinds = devices.expanded()
    nstages = len(stage_device)
    compute, memory = _stage_compute_memory(graph, kinds, stage_of, stage_device)
    receive = [0.0] * nstages
    send = [0.0] * nstages
    for t in graph.tensors:
        src = stage_of[t.producer]
        dests = {stage_of[c] for c in t.consumers} - {src}
        if not dests:
            continue
        if kinds[stage_device[src]].communicates:
            send[src] += t.cost
        for d in dests:
            if kinds[stage_device[d]].communicates:
                receive[d] += t.cost
    return [StageLoad(compute[s], receive[s], send[s], memory[s]) for s in range(nstages)]


def _linked_stage_loads(graph: CostGraph, devices: Devices, stage_of, stage_device) -> list[StageLoad]:
    """:func:`stage_loads` with every hand-off priced on the link between its two devices."""
    kinds = devices.expanded()
    nstages = len(stage_device)
    compute, memory = _stage_compute_memory(graph, kinds, stage_of, stage_device)
    receive = [0.0] * nstages
    send = [0.0] * nstages
    links: dict[tuple[int, int], Link | None] = {}
    for t in graph.tensors:
        src = stage_of[t.producer]
        dests = {stage_of[c] for c in t.consumers} - {src}
        if not dests:
            continue
        a = stage_device[src]
        prices = {}
        for d in dests:
            b = stage_device[d]
            if (a, b) not in links:
                links[a, b] = devices.pair_link(a, b)
            prices[d] = hand_off_ms(t, links[a, b])
        if kinds[a].communicates:
            send[src] += max(prices.values())
        for d in dests:
            if kinds[stage_device[d]].communicates:
                receive[d] += prices[d]
    return [StageLoad(compute[s], receive[s], send[s], memory[s]) for s in range(nstages)]


def _stage_compute_memory(graph: CostGraph, kinds, stage_of, stage_device) -> tuple[list[float], list[float]]:
    """Compute time of every stage on its device's kind and the memory of its nodes, summed in node order."""
    compute = [0.0] * len(stage_device)
    memory = [0.0] * len(stage_device)
    for v in range(graph.n):
        s = stage_of[v]
        compute[s] += graph.compute[kinds[stage_device[s]].name][v]
        memory[s] += graph.memory[v]
    return compute, memory


def max_load(graph: CostGraph, devices: Devices, stage_of, stage_device) -> float:
    loads = stage_loads(graph, devices, stage_of, stage_device)
    return max((sl.load for sl in loads), default=0.0)


def make_plan(
    graph: CostGraph,
    devices: Devices,
    stage_of,
    stage_device,
    *,
    solver: Solver | str,
    lower_bound: float = 0.0,
    contiguous: bool = True,
    notes: tuple[str, ...] = (),
) -> Plan:
    """Build a throughput plan, scoring it from scratch.

    Stages that hold no node are dropped and the rest renumbered in order.
    ``solver`` may be a :class:`Solver` or its name; an unknown name raises PlanError.
    """
    used = sorted({stage_of[v] for v in range(graph.n)})
    renumber = {s: i for i, s in enumerate(used)}
    stage_of = tuple(renumber[stage_of[v]] for v in range(graph.n))
    stage_device = tuple(stage_device[s] for s in used)
    loads = tuple(sl.load for sl in stage_loads(graph, devices, stage_of, stage_device))
    value = max(loads, default=0.0)
    return Plan(
        stage_of=stage_of,
        stage_device=stage_device,
        value=value,
        lower_bound=min(lower_bound, value),
        solver=solver,
        loads=loads,
        contiguous=contiguous,
        notes=notes,
    )


def stage_order_violations(graph: CostGraph, stage_of) -> list[tuple[int, int]]:
    """Edges (u, v) whose tensor would flow from a later stage to an earlier one.

    In a training graph only the forward precedence counts (backward tensors flow back by design),
    read between training units: forward edges, and the mirror images of the backward edges of
    classes without a forward node (:mod:`onnxsplit.solve.training`), which bind those classes
    exactly as the contiguous solvers do. A pair is reported as (the latest-staged member of the
    earlier unit, the earliest-staged member of the later one).
    """
    if not graph.training:
        return [(u, v) for u, v in graph.precedence_edges() if stage_of[u] > stage_of[v]]
    from onnxsplit.solve.training import training_units

    units = training_units(graph)
    latest = [max(m, key=lambda v: stage_of[v]) for m in units.members]
    earliest = [min(m, key=lambda v: stage_of[v]) for m in units.members]
    # Classes fused on a precedence cycle must share a stage, like one class.
    split = [(latest[u], earliest[u]) for u in range(units.count) if stage_of[latest[u]] != stage_of[earliest[u]]]
    return split + [(latest[a], earliest[b]) for a, b in units.edges if stage_of[latest[a]] > stage_of[earliest[b]]]


def is_ideal_chain(graph: CostGraph, stage_of) -> bool:
    """True when every stage is the difference of two nested ideals (of the forward graph, for a
    training graph), stages in order."""
    return not stage_order_violations(graph, stage_of)


def check_plan(graph: CostGraph, devices: Devices, plan: Plan, *, contiguous: bool | None = None, rel: float = 1e-9) -> None:
    """Raise PlanError unless the plan is valid and its reported loads are right.

    Checks: every node placed once on an existing stage; each stage on a
    distinct existing device; nodes only on kinds that can run them; memory;
    co-location groups; contiguity (when asked, or when the plan claims it);
    reported loads and value equal to loads recomputed from scratch.
    """
    n = graph.n
    kinds = devices.expanded()
    if len(plan.stage_of) != n:
        raise PlanError(f"plan places {len(plan.stage_of)} nodes, graph has {n}")
    if len(set(plan.stage_device)) != len(plan.stage_device):
        raise PlanError(f"two stages share a device: {plan.stage_device}")
    for s, d in enumerate(plan.stage_device):
        if not 0 <= d < len(kinds):
            raise PlanError(f"stage {s} is on device {d}, which does not exist")
    for v, s in enumerate(plan.stage_of):
        if not 0 <= s < plan.num_stages:
            raise PlanError(f"node {graph.names[v]!r} is on stage {s}, which does not exist")
        kind = kinds[plan.stage_device[s]]
        if math.isinf(graph.compute[kind.name][v]):
            raise PlanError(f"node {graph.names[v]!r} cannot run on a {kind.name} device")
    for group in graph.groups:
        if len({plan.stage_of[v] for v in group}) > 1:
            raise PlanError(f"co-location group {[graph.names[v] for v in group]} is split")
    loads = stage_loads(graph, devices, plan.stage_of, plan.stage_device)
    for s, sl in enumerate(loads):
        kind = kinds[plan.stage_device[s]]
        if sl.memory > kind.memory * (1 + rel):
            raise PlanError(f"stage {s} needs {sl.memory:.0f} bytes, its {kind.name} device has {kind.memory:.0f}")
    if contiguous or (contiguous is None and plan.contiguous):
        bad = stage_order_violations(graph, plan.stage_of)
        if bad:
            u, v = bad[0]
            raise PlanError(f"not contiguous: {graph.names[u]!r} (stage {plan.stage_of[u]}) feeds {graph.names[v]!r} (stage {plan.stage_of[v]})")
    if plan.objective is Objective.THROUGHPUT:
        worst = max((sl.load for sl in loads), default=0.0)
        if not math.isclose(worst, plan.value, rel_tol=rel, abs_tol=1e-12):
            raise PlanError(f"plan reports max load {plan.value}, recomputed {worst}")
        if plan.loads and any(not math.isclose(a, b.load, rel_tol=rel, abs_tol=1e-12) for a, b in zip(plan.loads, loads)):
            raise PlanError("plan's per-stage loads differ from the recomputed ones")
    if plan.lower_bound > plan.value * (1 + rel) + 1e-12:
        raise PlanError(f"lower bound {plan.lower_bound} exceeds the value {plan.value}")


def simple_lower_bound(graph: CostGraph, devices: Devices) -> float:
    """A valid bound on the max load: the best-case average, and the largest node.

    Total compute on the fastest kind divided by the number of devices, and
    the largest single node's time on the kind where it is fastest.
    """
    if graph.n == 0:
        return 0.0
    best = [min(graph.compute[k.name][v] for k in devices.kinds) for v in range(graph.n)]
    return max(math.fsum(best) / devices.count, max(best))


# The note a plan carries when its lower bound is simple_lower_bound's.
SIMPLE_BOUND_NOTE = ("lower bound: all compute at its fastest spread evenly over every device, or the largest node "
                     "(a relaxation that ignores communication, memory and contiguity)")


def device_graph_order(graph: CostGraph, device_of: Sequence[int]) -> tuple[list[int], bool]:
    """Used devices in a pipeline order, and whether tensors only flow forward.

    Topological order of the device graph (an edge where a tensor crosses;
    only forward tensors in a training graph) when it is acyclic; otherwise
    devices ordered by their first node.
    """
    used = sorted(set(device_of))
    first: dict[int, int] = {}
    for v, d in enumerate(device_of):
        first.setdefault(d, v)
    crossing = ((device_of[u], device_of[v]) for u, v in graph.precedence_edges() if device_of[u] != device_of[v])
    order, stuck = priority_order(used, crossing, lambda d, step: first[d])
    if not stuck:
        return order, True
    return sorted(used, key=first.__getitem__), False


def plan_from_devices(
    graph: CostGraph,
    devices: Devices,
    device_of: Sequence[int],
    *,
    solver: Solver | str,
    lower_bound: float = 0.0,
    notes: tuple[str, ...] = (),
) -> Plan:
    """A throughput plan from node -> device, stages in pipeline order where one exists."""
    order, forward = device_graph_order(graph, device_of)
    pos = {d: i for i, d in enumerate(order)}
    stage_of = [pos[device_of[v]] for v in range(graph.n)]
    if forward and graph.training:
        # The device graph sees forward edges only; training units also bind orphaned classes.
        forward = not stage_order_violations(graph, stage_of)
    return make_plan(
        graph, devices, stage_of, order, solver=solver, lower_bound=lower_bound, contiguous=forward, notes=notes
    )


def fits_devices(graph: CostGraph, devices: Devices, plan: Plan) -> bool:
    """Whether a plan (say, a user's warm start) respects memory, kinds and groups."""
    rescored = make_plan(graph, devices, plan.stage_of, plan.stage_device, solver=plan.solver, contiguous=False)
    try:
        check_plan(graph, devices, rescored, contiguous=False)
    except PlanError:
        return False
    return True
