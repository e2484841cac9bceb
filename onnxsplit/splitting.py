"""split(): the whole `onnxsplit split` job, as a chain of passes over typed values.

    load -> costs (measure, read a profile, or estimate) -> cost graph -> solve (or take a plan) -> cut -> write

Each pass is a function below; ``split`` calls them in that order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnxsplit.costgraph import CostGraph
from onnxsplit.costmodel import Costs, KindTimes, build_costgraph, kind_times, shared_profile
from onnxsplit.devices import Devices, identical_devices
from onnxsplit.errors import PlanError, UsageError
from onnxsplit.graphinfo import GraphInfo, graph_info
from onnxsplit.manifest import Manifest
from onnxsplit.model import load_model
from onnxsplit.ortutil import check_runnable
from onnxsplit.outdir import check_outdir
from onnxsplit.phases import DEFAULT_DECODE_WEIGHT, plan_model_phases, prepare_phases
from onnxsplit.planfile import read_assignment
from onnxsplit.prepared import Loaded, Prepared
from onnxsplit.probe import Feeds, feed_shapes, probe_sizes, read_inputs
from onnxsplit.rewrite.stages import Cut, StageSpec, cut_stages
from onnxsplit.rewrite.write import write_split
from onnxsplit.shapefold import static_types
from onnxsplit.shapes import TensorType, concrete_types, resolve_input_shapes
from onnxsplit.solve.plan import Plan, make_plan, simple_lower_bound
from onnxsplit.solve.select import solve
from onnxsplit.state import StatePair
from onnxsplit.stateplace import CacheLimits, check_state_placement, model_state_pairs, pin_state

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


def load(model_path: str | os.PathLike, *, input_shapes: dict[str, tuple[int, ...]],
         inputs: str | os.PathLike | Feeds | None = None) -> Loaded:
    """Load and normalise a model, fix its input shapes, and type every tensor that will be costed.

    ``inputs``: representative inputs (an .npz path or a name -> value
    mapping); their shapes fix the input shapes ``input_shapes`` leaves
    open, and must agree with the ones it gives. Tensors whose size shape
    inference cannot tell are sized by running the model once (on
    ``inputs`` when given), so that no hand-off is costed as free; when
    that run fails they are costed as free, with a warning.
    """
    model = load_model(model_path)
    feeds = read_inputs(model, inputs)
    from_feeds = feed_shapes(model, feeds)
    for name, shape in input_shapes.items():
        if name in from_feeds and tuple(shape) != from_feeds[name]:
            raise UsageError(f"input shape of {name!r}: {'x'.join(map(str, shape))} disagrees with the "
                             f"representative input's {'x'.join(map(str, from_feeds[name]))}")
    shapes = resolve_input_shapes(model, {**from_feeds, **input_shapes})
    types = concrete_types(model, shapes)
    info = graph_info(model)
    unknown = _unsized(info, types)
    if unknown:
        # Shape computations evaluated as constants size most of them without building a session.
        types = {**types, **static_types(model, shapes, types, unknown)}
        unknown = _unsized(info, types)
    if unknown:
        log.info("running the model once to size %d tensors shape inference could not", len(unknown))
        types = {**types, **probe_sizes(model, unknown, shapes=shapes, feeds=feeds)}
    return Loaded(model, info, types, shapes, feeds=feeds)


def _unsized(info: GraphInfo, types: dict[str, TensorType]) -> list[str]:
    """Tensors a hand-off could carry whose size is not known yet."""
    return [t for t, p in info.producer.items() if p not in info.const and info.consumers.get(t)
            and (t not in types or types[t].nbytes is None)]


def node_times(loaded: Loaded, devices: Devices, *, costs: Costs = "estimate",
               profile_path: str | os.PathLike | None = None, runs: int = 20, warmup: int = 5) -> KindTimes:
    """Milliseconds per node for every device kind.

    A kind with its own profile file uses it; the others share one profile
    (``profile_path``, or measured on the first kind's provider and threads,
    on ``loaded.feeds`` when the user gave representative inputs, else on
    random ones and cached), divided by their speed factor. ``costs='estimate'`` uses the
    analytic estimate instead of measuring.
    """
    profile = shared_profile(loaded.model, devices, input_shapes=loaded.shapes, costs=costs,
                             profile_path=profile_path, runs=runs, warmup=warmup, feeds=loaded.feeds)
    return kind_times(loaded.model, loaded.info, loaded.types, devices, profile=profile, input_shapes=loaded.shapes)


def prepare(model_path: str | os.PathLike, devices: Devices, *, input_shapes: dict[str, tuple[int, ...]],
            costs: str = "estimate", profile_path: str | os.PathLike | None = None, runs: int = 20,
            warmup: int = 5, inputs: str | os.PathLike | Feeds | None = None) -> Prepared:
    """Load, normalise and cost a model for the given devices.

    costs: 'measure' profiles the model with onnxruntime (cached), 'estimate'
    uses FLOPs and bytes; a profile file overrides both. ``inputs``:
    representative inputs (see :func:`load`), also profiled on.
    """
    loaded = load(model_path, input_shapes=input_shapes, inputs=inputs)
    if costs == "estimate" and profile_path is None:
        # What measuring would have found by running the model, found without timing it. Kinds that bring
        # their own profile were measured elsewhere: their provider need not be installed here.
        check_runnable(loaded.model, devices, require_installed=all(k.profile is None for k in devices.kinds))
    times = node_times(loaded, devices, costs=costs, profile_path=profile_path, runs=runs, warmup=warmup)
    graph = build_costgraph(loaded.model, loaded.info, devices, times, loaded.types)
    return Prepared(loaded.model, loaded.info, loaded.types, loaded.shapes, graph, feeds=loaded.feeds)


@dataclass(frozen=True)
class Costed:
    """A model costed for the solver: its prepared cost graph (state pairs pinned), the pairs, their cache bytes."""

    prepared: Prepared
    pairs: tuple[StatePair, ...]
    cache_bytes: Mapping[str, int]  # by state input name; empty without a maximum sequence length


def cost_model(model_path: str | os.PathLike, devices: Devices, *, input_shapes: dict[str, tuple[int, ...]],
               costs: str = "measure", profile_path: str | os.PathLike | None = None,
               inputs: str | os.PathLike | Feeds | None = None, phase: str = "auto", prompt_length: int | None = None,
               cache_length: int | None = None, decode_weight: float = DEFAULT_DECODE_WEIGHT,
               state: Sequence[StatePair] = (), max_seq_len: int | None = None,
               max_batch: int | None = None) -> Costed:
    """Everything :func:`split` does before solving: the phase's shapes, the costs, the state pairs pinned.

    ``costgraph`` writes the same graph, so a plan solved on that file
    keeps every state pair on one stage. Options as for :func:`split`.
    """
    if max_batch is not None and max_seq_len is None:
        raise UsageError("a maximum batch for the caches needs a maximum sequence length too")
    phases = plan_model_phases(model_path, given=input_shapes, phase=phase, prompt_length=prompt_length,
                               cache_length=cache_length, decode_weight=decode_weight, state=state,
                               fixed=inputs is not None)
    prepared = prepare_phases(phases, lambda shapes: prepare(model_path, devices, input_shapes=shapes, costs=costs,
                                                             profile_path=profile_path, inputs=inputs))
    pairs = model_state_pairs(prepared.model, prepared.info, declared=state)
    pinned, caches = pin_state(prepared.graph, prepared.model, prepared.info, prepared.shapes, devices, pairs,
                               limits=None if max_seq_len is None else CacheLimits(max_seq_len, max_batch))
    return Costed(replace(prepared, graph=pinned), tuple(pairs), caches)


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
    placed = stage_of.items() if isinstance(stage_of, Mapping) else enumerate(stage_of)
    cut = cut_stages(info, {v: s for v, s in placed if v not in info.const})
    return cut, _full_stage_of(info, cut)


def place_solved(prepared: Prepared, devices: Devices, solved: Plan) -> Placement:
    """Cut by a plan a solver made for ``prepared.graph``; its bound and notes stay valid."""
    graph = prepared.graph
    cut, full = _cut(prepared, solved.stage_of)
    device_of = [_device_of(spec, solved.stage_device) for spec in cut.stages]
    plan = make_plan(graph, devices, full, device_of, solver=solved.solver, lower_bound=solved.lower_bound,
                     contiguous=solved.contiguous, notes=solved.notes)
    if solved.objective == "latency":
        from onnxsplit.solve.latency import latency_of

        latency = latency_of(graph, devices, plan)
        plan = replace(plan, objective="latency", value=latency, lower_bound=min(solved.lower_bound, latency))
    return Placement(plan, cut)


def _device_of(spec: StageSpec, stage_device: Sequence[int]) -> int:
    """The device a plan gave a cut stage (a stage of const nodes only goes where the plan's first stage went)."""
    if spec.label is not None:
        return stage_device[spec.label]
    return stage_device[0] if stage_device else 0


def _node_of(key: str | int, index: Mapping[str, int], count: int, where: str) -> int:
    """A plan file's node reference: a node name, else a node index in topological order; PlanError otherwise."""
    if isinstance(key, str) and key in index:
        return index[key]
    if isinstance(key, int) or key.isdecimal():
        v = int(key)
        if v < count:
            return v
        raise PlanError(f"{where}: node index {v} is out of range (the model has {count} nodes, 0..{count - 1})")
    raise PlanError(f"{where}: node {key!r} is not in the model")


def _given_stages(prepared: Prepared, devices: Devices, plan: Plan | str | os.PathLike,
                  asked: int) -> tuple[dict[int, int], list[int] | None]:
    """node -> stage of a given plan, and each stage's device (None: devices in stage order).

    A plan file's stage numbers must be below ``asked``, the device count the user gave.
    """
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
    names = prepared.info.names
    index = {name: v for v, name in enumerate(names)}
    stage_of: dict[int, int] = {}
    for key, s in assignment.items():
        v = _node_of(key, index, len(names), f"plan {plan}")
        if v in stage_of and stage_of[v] != s:
            raise PlanError(f"plan {plan}: node {names[v]!r} (index {v}) is placed twice, on stages "
                            f"{stage_of[v]} and {s}")
        stage_of[v] = s
        if s >= asked:
            raise PlanError(f"plan {plan}: node {names[v]!r} is on stage {s}, but only {asked} devices are "
                            f"given (stages 0..{asked - 1})")
    return stage_of, None


def place_given(prepared: Prepared, devices: Devices, plan: Plan | str | os.PathLike, *,
                asked: int | None = None) -> Placement:
    """Cut by a plan made elsewhere: a Plan over ``prepared.graph``'s nodes, or a plan file.

    A plan file maps nodes (by name, or by index in the model's topological
    order) to stages numbered below the device count, and its stages go on
    devices 0, 1, ... in pipeline order; a Plan keeps its stages' devices. Either is scored
    from scratch on this cost graph, with the simple lower bound, since
    whatever bound came with it may have been for other costs. ``asked``:
    the device count the user gave, when ``devices`` are capped to it
    (:func:`cap_devices`); a plan file's stage numbers are checked against it.
    """
    stage_of, devices_of_stage = _given_stages(prepared, devices, plan, devices.count if asked is None else asked)
    cut, full = _cut(prepared, stage_of)
    if len(cut.stages) > devices.count:
        raise PlanError(f"the plan uses {len(cut.stages)} stages but only {devices.count} devices are given")
    if devices_of_stage is None:
        device_of = list(range(len(cut.stages)))
    else:
        device_of = [_device_of(spec, devices_of_stage) for spec in cut.stages]
    graph = prepared.graph
    scored = make_plan(graph, devices, full, device_of, solver="user",
                       lower_bound=simple_lower_bound(graph, devices), contiguous=False)
    return Placement(scored, cut)


def _fewer_stages(placement: Placement, count: int) -> tuple[str, ...]:
    n = len(placement.cut.stages)
    if n >= count:
        return ()
    return (f"the plan uses {n} of the {count} devices asked for: "
            "more would not lower the bottleneck (or the model has too few nodes)",)


def cap_devices(devices: Devices, nodes: int) -> Devices:
    """The devices a plan over ``nodes`` nodes can use: at most ``nodes`` of each kind.

    A plan has at most one stage per node, so the devices beyond that many
    of a kind can never hold a stage, and the solvers' work grows with the
    device count. Device numbers stay those of the first ``nodes`` devices
    of each kind; links between two kept devices are kept.
    """
    nodes = max(nodes, 1)
    if all(k.count <= nodes for k in devices.kinds):
        return devices
    kinds = tuple(replace(k, count=min(k.count, nodes), device_ids=k.device_ids[:nodes]) for k in devices.kinds)
    renumber: dict[int, int] = {}
    old = new = 0
    for k, capped in zip(devices.kinds, kinds):
        renumber.update((old + j, new + j) for j in range(capped.count))
        old += k.count
        new += capped.count
    pairs = tuple(((min(renumber[a], renumber[b]), max(renumber[a], renumber[b])), link)
                  for (a, b), link in devices.pairs if a in renumber and b in renumber)
    return replace(devices, kinds=kinds, pairs=pairs)


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
    inputs: str | os.PathLike | Feeds | None = None,
    state: Sequence[StatePair] = (),
    max_seq_len: int | None = None,
    max_batch: int | None = None,
    phase: str = "auto",
    prompt_length: int | None = None,
    cache_length: int | None = None,
    decode_weight: float = DEFAULT_DECODE_WEIGHT,
) -> SplitResult:
    """Split a model into stage models, a manifest and a plan, written atomically to ``outdir``.

    ``plan`` skips the solver: a Plan over the model's nodes (node ids of the
    cost graph, in the model's node order) or the path of a plan file (node
    name or index -> stage, a list of stages in node order, or a plan.json).
    ``inputs``: representative inputs, an .npz path or a mapping of input
    name to value (an array; a list of arrays for a sequence input; None for
    an empty optional). They fix input shapes, are profiled on, and type
    the hand-offs shape inference cannot (models whose values steer an
    ``If``, a ``Loop`` or a ``Reshape`` need them). More devices than the
    model has nodes are capped (:func:`cap_devices`), with a warning.
    ``state``: state pairs to keep beyond those the Optimum/onnxruntime-genai
    names give (see :mod:`onnxsplit.stateplace`): each pair and the layer
    between its ends go on one stage, and the manifest records them.
    ``max_seq_len`` (and ``max_batch``, default: the input shapes' batch):
    count each cache at that size in its stage's memory.
    ``phase``, ``prompt_length``, ``cache_length``, ``decode_weight``: the
    phase of a decoder the costs are for (:mod:`onnxsplit.phases`); the
    manifest's input shapes are the optimised phase's.
    """
    start = time.perf_counter()
    outdir = Path(outdir)
    check_outdir(outdir, force=force)  # refuse before the slow part, and clear stale scratch folders
    if isinstance(devices, int):
        devices = identical_devices(devices)
    costed = cost_model(model_path, devices, input_shapes=input_shapes or {}, costs=costs, profile_path=profile_path,
                        inputs=inputs, phase=phase, prompt_length=prompt_length, cache_length=cache_length,
                        decode_weight=decode_weight, state=state, max_seq_len=max_seq_len, max_batch=max_batch)
    prepared, pairs, caches = costed.prepared, costed.pairs, costed.cache_bytes
    asked = devices.count
    if not isinstance(plan, Plan):  # a Plan names its devices by their index among all of them: keep them all
        devices = cap_devices(devices, prepared.graph.n)
    if plan is None:
        solved = solve(prepared.graph, devices, solver=solver, objective=objective, time_limit=time_limit)
        placement = place_solved(prepared, devices, solved)
    else:
        placement = place_given(prepared, devices, plan, asked=asked)
    check_state_placement(placement.cut, pairs)
    manifest = write_split(prepared, devices, placement.plan, placement.cut, outdir=outdir, force=force,
                           feeds=prepared.feeds, state=pairs, cache_bytes=caches)
    return SplitResult(outdir, manifest, placement.plan, prepared.graph, devices, time.perf_counter() - start,
                       _fewer_stages(placement, asked))
