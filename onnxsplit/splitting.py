"""split(): the whole `onnxsplit split` job, as a chain of passes over typed values.

    load -> costs (measure, read a profile, or estimate) -> cost graph -> solve (or take a plan) -> cut -> write

Each pass is a function below; ``split`` calls them in that order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnxsplit.costgraph import CostGraph
from onnxsplit.costmodel import Costs, KindTimes, build_costgraph, kind_times, shared_profile
from onnxsplit.devices import Devices, identical_devices
from onnxsplit.errors import PlanError
from onnxsplit.graphinfo import GraphInfo, graph_info
from onnxsplit.manifest import Manifest
from onnxsplit.model import load_model
from onnxsplit.outdir import check_outdir
from onnxsplit.planfile import read_assignment
from onnxsplit.prepared import Loaded, Prepared
from onnxsplit.rewrite.stages import Cut, cut_stages
from onnxsplit.rewrite.write import probe_types, write_split
from onnxsplit.shapes import concrete_types, resolve_input_shapes
from onnxsplit.solve.plan import Plan, make_plan, simple_lower_bound
from onnxsplit.solve.select import solve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitResult:
    outdir: Path
    manifest: Manifest
    plan: Plan
    graph: CostGraph
    devices: Devices
    seconds: float
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Placement:
    """A plan and the cut it makes: ``plan``'s stages are ``cut``'s, in the same order.

    ``plan`` is scored on the prepared cost graph with const nodes counted on
    the stage where they are first copied, so its loads are the manifest's.
    """

    plan: Plan
    cut: Cut


# -- load, costs, cost graph ----------------------------------------------------------------------------------------


def load(model_path: str | os.PathLike, *, input_shapes: dict[str, tuple[int, ...]]) -> Loaded:
    """Load and normalise a model, fix its input shapes, and type every tensor that will be costed.

    Tensors whose size shape inference cannot tell are typed by running the
    model once, so that no hand-off is costed as free.
    """
    model = load_model(model_path)
    shapes = resolve_input_shapes(model, input_shapes)
    types = concrete_types(model, shapes)
    info = graph_info(model)
    unknown = [t for t, p in info.producer.items() if p not in info.const and info.consumers.get(t)
               and (t not in types or types[t].nbytes is None)]
    if unknown:
        log.info("running the model once to size %d tensors shape inference could not", len(unknown))
        types = {**types, **probe_types(model, unknown, shapes)}
    return Loaded(model, info, types, shapes)


def node_times(loaded: Loaded, devices: Devices, *, costs: Costs = "estimate",
               profile_path: str | os.PathLike | None = None, runs: int = 20, warmup: int = 5) -> KindTimes:
    """Milliseconds per node for every device kind.

    A kind with its own profile file uses it; the others share one profile
    (``profile_path``, or measured on the first kind's provider and threads,
    cached), divided by their speed factor. ``costs='estimate'`` uses the
    analytic estimate instead of measuring.
    """
    profile = shared_profile(loaded.model, devices, input_shapes=loaded.shapes, costs=costs,
                             profile_path=profile_path, runs=runs, warmup=warmup)
    return kind_times(loaded.model, loaded.info, loaded.types, devices, profile=profile, input_shapes=loaded.shapes)


def prepare(model_path: str | os.PathLike, devices: Devices, *, input_shapes: dict[str, tuple[int, ...]],
            costs: str = "estimate", profile_path: str | os.PathLike | None = None, runs: int = 20,
            warmup: int = 5) -> Prepared:
    """Load, normalise and cost a model for the given devices.

    costs: 'measure' profiles the model with onnxruntime (cached), 'estimate'
    uses FLOPs and bytes; a profile file overrides both.
    """
    loaded = load(model_path, input_shapes=input_shapes)
    times = node_times(loaded, devices, costs=costs, profile_path=profile_path, runs=runs, warmup=warmup)
    graph = build_costgraph(loaded.model, loaded.info, devices, times, loaded.types)
    return Prepared(loaded.model, loaded.info, loaded.types, loaded.shapes, graph)


# -- solve or take a plan, cut ----------------------------------------------------------------------------------------


def _full_stage_of(info: GraphInfo, cut: Cut) -> tuple[int, ...]:
    """Stage of every node, const nodes counted where they are first copied."""
    stage_of = [-1] * len(info.names)
    for spec in cut.stages:
        for v in spec.own:
            stage_of[v] = spec.index
    for spec in cut.stages:
        for v in spec.nodes:
            if stage_of[v] < 0:
                stage_of[v] = spec.index
    return tuple(max(s, 0) for s in stage_of)


def _cut(prepared: Prepared, stage_of: Sequence[int] | dict[int, int]) -> tuple[Cut, tuple[int, ...]]:
    """The cut of a node -> stage placement (const nodes ignored: the rewrite copies them)."""
    info = prepared.info
    cut = cut_stages(info, {v: stage_of[v] for v in range(len(info.names)) if v not in info.const})
    return cut, _full_stage_of(info, cut)


def place_solved(prepared: Prepared, devices: Devices, solved: Plan) -> Placement:
    """Cut by a plan a solver made for ``prepared.graph``; its bound and notes stay valid."""
    graph = prepared.graph
    cut, full = _cut(prepared, solved.stage_of)
    device_of = [solved.stage_device[solved.stage_of[spec.own[0]]] for spec in cut.stages]
    plan = make_plan(graph, devices, full, device_of, solver=solved.solver, lower_bound=solved.lower_bound,
                     contiguous=solved.contiguous, notes=solved.notes)
    if solved.objective == "latency":
        from onnxsplit.solve.latency import latency_of

        latency = latency_of(graph, devices, plan)
        plan = replace(plan, objective="latency", value=latency, lower_bound=min(solved.lower_bound, latency))
    return Placement(plan, cut)


def _given_stages(prepared: Prepared, devices: Devices,
                  plan: Plan | str | os.PathLike) -> tuple[dict[int, int], list[int] | None]:
    """node -> stage of a given plan, and each stage's device (None: devices in stage order)."""
    graph = prepared.graph
    if isinstance(plan, Plan):
        if len(plan.stage_of) != graph.n:
            raise PlanError(f"the plan places {len(plan.stage_of)} nodes but the model has {graph.n}")
        for v, s in enumerate(plan.stage_of):
            if not 0 <= s < plan.num_stages:
                raise PlanError(f"the plan puts node {graph.names[v]!r} on stage {s}, which has no device")
        bad = [d for d in plan.stage_device if not 0 <= d < devices.count]
        if bad or len(set(plan.stage_device)) != len(plan.stage_device):
            raise PlanError(f"the plan's stage devices {list(plan.stage_device)} are not distinct devices "
                            f"of the {devices.count} given")
        return dict(enumerate(plan.stage_of)), list(plan.stage_device)
    assignment = read_assignment(plan)
    index = {name: v for v, name in enumerate(prepared.info.names)}
    unknown_nodes = sorted(set(assignment) - set(index))
    if unknown_nodes:
        raise PlanError(f"plan {plan}: node {unknown_nodes[0]!r} is not in the model")
    return {index[name]: s for name, s in assignment.items()}, None


def place_given(prepared: Prepared, devices: Devices, plan: Plan | str | os.PathLike) -> Placement:
    """Cut by a plan made elsewhere: a Plan over ``prepared.graph``'s nodes, or a plan file.

    A plan file maps node names to stages and its stages go on devices 0, 1,
    ... in pipeline order; a Plan keeps its stages' devices. Either is scored
    from scratch on this cost graph, with the simple lower bound, since
    whatever bound came with it may have been for other costs.
    """
    stage_of, devices_of_stage = _given_stages(prepared, devices, plan)
    cut, full = _cut(prepared, stage_of)
    if len(cut.stages) > devices.count:
        raise PlanError(f"the plan uses {len(cut.stages)} stages but only {devices.count} devices are given")
    if devices_of_stage is None:
        device_of = list(range(len(cut.stages)))
    else:
        device_of = [devices_of_stage[stage_of[spec.own[0]]] for spec in cut.stages]
    graph = prepared.graph
    scored = make_plan(graph, devices, full, device_of, solver="user",
                       lower_bound=simple_lower_bound(graph, devices), contiguous=False)
    return Placement(scored, cut)


def _fewer_stages(placement: Placement, devices: Devices) -> tuple[str, ...]:
    n = len(placement.cut.stages)
    if n >= devices.count:
        return ()
    return (f"the plan uses {n} of the {devices.count} devices asked for: "
            "more would not lower the bottleneck (or the model has too few nodes)",)


# -- the whole job ----------------------------------------------------------------------------------------------------


def split(
    model_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    devices: Devices | int = 2,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    plan: Plan | str | os.PathLike | None = None,
    solver: str = "auto",
    time_limit: float = 60.0,
    force: bool = False,
    costs: str = "measure",
    profile_path: str | os.PathLike | None = None,
    objective: str = "throughput",
) -> SplitResult:
    """Split a model into stage models, a manifest and a plan, written atomically to ``outdir``.

    ``plan`` skips the solver: a Plan over the model's nodes (node ids of the
    cost graph, in the model's node order) or the path of a plan file (node
    name -> stage, or a plan.json).
    """
    start = time.perf_counter()
    outdir = Path(outdir)
    check_outdir(outdir, force=force)  # refuse before the slow part, and clear stale scratch folders
    if isinstance(devices, int):
        devices = identical_devices(devices)
    prepared = prepare(model_path, devices, input_shapes=input_shapes or {}, costs=costs, profile_path=profile_path)
    if plan is None:
        solved = solve(prepared.graph, devices, solver=solver, objective=objective, time_limit=time_limit)
        placement = place_solved(prepared, devices, solved)
    else:
        placement = place_given(prepared, devices, plan)
    manifest = write_split(prepared, devices, placement.plan, placement.cut, outdir=outdir, force=force)
    return SplitResult(outdir, manifest, placement.plan, prepared.graph, devices, time.perf_counter() - start,
                       _fewer_stages(placement, devices))
