"""split(): load, cost, solve, cut, write. The whole `onnxsplit split` job."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxsplit.costgraph import CostGraph
from onnxsplit.costmodel import activation_peak, build_costgraph
from onnxsplit.devices import Devices, identical_devices
from onnxsplit.errors import InfeasibleError, PlanError, UsageError
from onnxsplit.graphinfo import GraphInfo, graph_info
from onnxsplit.manifest import FORMAT, VERSION, write_json_atomic
from onnxsplit.model import Model, load_model, tensor_nbytes
from onnxsplit.ortutil import dtype_name, random_feeds, run_with_outputs
from onnxsplit.planfile import plan_document, read_assignment
from onnxsplit.profile.estimate import estimate_times
from onnxsplit.rewrite.extract import copy_tree_atomic, stage_proto, write_stage
from onnxsplit.rewrite.stages import Cut, cut_stages
from onnxsplit.shapes import TensorType, concrete_types, resolve_input_shapes
from onnxsplit.solve.plan import Plan, make_plan, simple_lower_bound, stage_loads
from onnxsplit.solve.select import solve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitResult:
    outdir: Path
    manifest: dict[str, Any]
    plan: Plan
    graph: CostGraph
    devices: Devices
    seconds: float
    warnings: tuple[str, ...] = field(default=())


def _shape_json(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _typed(vi: onnx.ValueInfoProto) -> bool:
    """Has a dtype and a rank: what a stage input or output needs to pass the checker."""
    tt = vi.type.tensor_type
    return bool(tt.elem_type) and tt.HasField("shape")


def _probe(model: Model, names: list[str], input_shapes: dict[str, tuple[int, ...]]) -> dict[str, TensorType]:
    """Find dtype and shape of tensors inference could not type, by running the original once."""
    specs = []
    for vi in model.inputs:
        specs.append((vi.name, dtype_name(vi.type.tensor_type.elem_type), input_shapes[vi.name]))
    values = run_with_outputs(model, names, random_feeds(specs, seed=0))
    return {n: TensorType(onnx.helper.np_dtype_to_tensor_dtype(values[n].dtype), tuple(values[n].shape)) for n in names}


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


@dataclass(frozen=True)
class Prepared:
    """A model with everything the solver and the rewrite need: shapes, dataflow, costs."""

    model: Model
    info: GraphInfo
    types: dict[str, TensorType]
    shapes: dict[str, tuple[int, ...]]
    graph: CostGraph


COSTS = ("measure", "estimate")


def _node_times(model: Model, info: GraphInfo, types: dict[str, TensorType], devices: Devices, *, costs: str,
                profile_path: str | os.PathLike | None, shapes: dict[str, tuple[int, ...]], runs: int,
                warmup: int) -> dict[str, list[float]]:
    """Milliseconds per node for every device kind.

    A kind with its own profile file uses it; the others share one profile
    (``profile_path``, or measured on the first kind's provider and threads,
    cached), divided by their speed factor. ``costs='estimate'`` uses the
    analytic estimate instead of measuring.
    """
    from onnxsplit.profile.cache import cached_profile
    from onnxsplit.profile.store import check_profile, load_profile

    estimate = estimate_times(model, info, types)
    if costs not in COSTS:
        raise UsageError(f"--costs {costs!r}: choose measure or estimate")

    def times_of(profile) -> list[float]:
        by_name = {n.name: n.time_ms for n in profile.nodes}
        return [by_name.get(name, est) for name, est in zip(info.names, estimate)]

    shared: list[float] | None = None
    out: dict[str, list[float]] = {}
    for kind in devices.kinds:
        if kind.profile is not None:
            profile = load_profile(kind.profile)
            check_profile(profile, model, shapes, profile.provider, profile.threads)
            out[kind.name] = times_of(profile)
            continue
        if shared is None:
            if profile_path is not None:
                profile = load_profile(profile_path)
                check_profile(profile, model, shapes, profile.provider, profile.threads)
                shared = times_of(profile)
            elif costs == "measure":
                first = devices.kinds[0]
                shared = times_of(cached_profile(model, input_shapes=shapes, provider=first.provider,
                                                 provider_options=dict(first.provider_options), threads=first.threads,
                                                 runs=runs, warmup=warmup))
            else:
                shared = estimate
        out[kind.name] = [t / kind.speed for t in shared]
    return out


def prepare(model_path: str | os.PathLike, devices: Devices, *, input_shapes: dict[str, tuple[int, ...]],
            costs: str = "estimate", profile_path: str | os.PathLike | None = None, runs: int = 20,
            warmup: int = 5) -> Prepared:
    """Load, normalise and cost a model for the given devices.

    costs: 'measure' profiles the model with onnxruntime (cached), 'estimate'
    uses FLOPs and bytes; a profile file overrides both.
    """
    model = load_model(model_path)
    shapes = resolve_input_shapes(model, input_shapes)
    types = concrete_types(model, shapes)
    info = graph_info(model)
    # Tensors whose size we cannot tell are measured before they are costed.
    unknown = [t for t, p in info.producer.items() if p not in info.const and info.consumers.get(t)
               and (t not in types or types[t].nbytes is None)]
    if unknown:
        log.info("running the model once to size %d tensors shape inference could not", len(unknown))
        types = {**types, **_probe(model, unknown, shapes)}
    times = _node_times(model, info, types, devices, costs=costs, profile_path=profile_path, shapes=shapes,
                        runs=runs, warmup=warmup)
    graph = build_costgraph(model, info, devices, times, types)
    return Prepared(model, info, types, shapes, graph)


def split(
    model_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    devices: Devices | int = 2,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    plan_path: str | os.PathLike | None = None,
    solver: str = "auto",
    time_limit: float = 60.0,
    force: bool = False,
    costs: str = "measure",
    profile_path: str | os.PathLike | None = None,
    objective: str = "throughput",
) -> SplitResult:
    """Split a model into stage models, a manifest and a plan, written atomically to ``outdir``."""
    start = time.perf_counter()
    outdir = Path(outdir)
    if outdir.exists() and not force:
        raise UsageError(f"{outdir} already exists (use --force to replace it)")
    if isinstance(devices, int):
        devices = identical_devices(devices)
    prepared = prepare(model_path, devices, input_shapes=input_shapes or {}, costs=costs, profile_path=profile_path)
    model, info, types, shapes, graph = prepared.model, prepared.info, prepared.types, prepared.shapes, prepared.graph

    warnings: list[str] = []
    if plan_path is not None:
        assignment = read_assignment(plan_path)
        index = {name: v for v, name in enumerate(info.names)}
        unknown_nodes = sorted(set(assignment) - set(index))
        if unknown_nodes:
            raise PlanError(f"--plan names node {unknown_nodes[0]!r}, which is not in the model")
        stage_map = {index[name]: s for name, s in assignment.items() if index[name] not in info.const}
        cut = cut_stages(info, stage_map)
        if len(cut.stages) > devices.count:
            raise PlanError(f"--plan uses {len(cut.stages)} stages but only {devices.count} devices are given")
        full = _full_stage_of(info, cut)
        plan = make_plan(graph, devices, full, list(range(len(cut.stages))), solver="user",
                         lower_bound=simple_lower_bound(graph, devices), contiguous=False)
    else:
        plan = solve(graph, devices, solver=solver, objective=objective, time_limit=time_limit)
        stage_map = {v: plan.stage_of[v] for v in range(graph.n) if v not in info.const}
        cut = cut_stages(info, stage_map)
        full = _full_stage_of(info, cut)
        device_of = [plan.stage_device[plan.stage_of[spec.own[0]]] for spec in cut.stages]
        solved = plan
        plan = make_plan(graph, devices, full, device_of, solver=solved.solver,
                         lower_bound=solved.lower_bound, contiguous=solved.contiguous, notes=solved.notes)
        if solved.objective == "latency":
            from dataclasses import replace

            from onnxsplit.solve.latency import latency_of

            latency = latency_of(graph, devices, plan)
            plan = replace(plan, objective="latency", value=latency, lower_bound=min(solved.lower_bound, latency))
    if len(cut.stages) < devices.count:
        warnings.append(f"the plan uses {len(cut.stages)} of the {devices.count} devices asked for: "
                        "more would not lower the bottleneck (or the model has too few nodes)")

    # Types of everything crossing a stage boundary must be known for the stage models.
    crossing = [n for n in cut.source if cut.source[n] is not None]
    missing = [n for n in crossing if n not in model.value_info or not _typed(model.value_info[n])]
    probed_vi: dict[str, onnx.ValueInfoProto] = {}
    if missing:
        found = _probe(model, missing, shapes)
        # Concrete dims are only right when no input dim is symbolic; otherwise keep the rank alone.
        static = all(d.HasField("dim_value") for i in model.inputs for d in i.type.tensor_type.shape.dim)
        for n, t in found.items():
            shape = list(t.shape) if static else [None] * len(t.shape)
            probed_vi[n] = onnx.helper.make_tensor_value_info(n, t.dtype, shape)

    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    try:
        loads = stage_loads(graph, devices, plan.stage_of, plan.stage_device)
        manifest = _write(model, info, cut, plan, devices, loads, types, shapes, probed_vi, tmp, outdir)
        write_json_atomic(tmp / "plan.json", plan_document(graph, devices, plan))
        copy_tree_atomic(tmp, outdir, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SplitResult(outdir, manifest, plan, graph, devices, time.perf_counter() - start, tuple(warnings))


def _write(model, info, cut, plan, devices, loads, types, shapes, probed_vi, tmp: Path, outdir: Path) -> dict[str, Any]:
    kinds = devices.expanded()
    vi_of = {**{i.name: i for i in model.graph.input}, **model.value_info, **probed_vi}

    def tensor_doc(name: str) -> dict[str, Any]:
        vi = vi_of.get(name)
        t = types.get(name)
        elem = (vi.type.tensor_type.elem_type if vi is not None else 0) or (t.dtype if t else 0)
        return {"name": name, "dtype": dtype_name(elem) if elem else None,
                "shape": _shape_json(vi) if vi is not None else None}

    init_sizes = {t.name: tensor_nbytes(t) for t in model.graph.initializer}
    stages = []
    for spec in cut.stages:
        weights = sum(init_sizes[n] for n in spec.initializers)
        activations = activation_peak(info, types, spec.nodes, spec.inputs, spec.outputs)
        device = kinds[plan.stage_device[spec.index]]
        if weights + activations > device.memory:
            raise InfeasibleError(f"stage {spec.index} needs {weights + activations:.0f} bytes (weights {weights}, "
                                  f"activations {activations}) but its {device.name} device has {device.memory:.0f}")
        filename = f"stage_{spec.index}.onnx"
        proto = stage_proto(model, info, spec, len(cut.stages), probed_vi)
        data = write_stage(model, proto, tmp / filename)
        sl = loads[spec.index]
        stages.append({
            "index": spec.index,
            "file": filename,
            "external_data": data,
            "device": plan.stage_device[spec.index],
            "device_kind": device.name,
            "provider": device.provider,
            "provider_options": devices.provider_options(plan.stage_device[spec.index]),
            "threads": device.threads,
            "nodes": len(spec.own),
            "copied_const_nodes": len(spec.nodes) - len(spec.own),
            "inputs": [{**tensor_doc(n), "from": "graph" if cut.source[n] is None else cut.source[n]} for n in spec.inputs],
            "outputs": [{**tensor_doc(n), "to": list(cut.consumers.get(n, ())),
                         "graph_output": cut.output_stage.get(n) == spec.index} for n in spec.outputs],
            "predicted": {"compute_ms": sl.compute, "receive_ms": sl.receive, "send_ms": sl.send, "load_ms": sl.load},
            "weight_bytes": weights,
            "activation_peak_bytes": activations,
        })
    handoffs = []
    for spec in cut.stages:
        for n in spec.outputs:
            if cut.consumers.get(n):
                t = types.get(n)
                handoffs.append({**tensor_doc(n), "producer": spec.index, "consumers": list(cut.consumers[n]),
                                 "bytes_per_sample": t.nbytes if t is not None else None})
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": {"path": os.path.relpath(model.path, outdir.resolve()), "sha256": model.sha256,
                   "ir_version": model.proto.ir_version},
        "input_shapes": {k: list(v) for k, v in shapes.items()},
        "inputs": [tensor_doc(i.name) for i in model.inputs],
        "outputs": [{**tensor_doc(o.name), "stage": cut.output_stage[o.name]} for o in model.graph.output],
        "stages": stages,
        "handoffs": handoffs,
        "plan": "plan.json",
        "predicted_bottleneck_ms": plan.value,
    }
    write_json_atomic(tmp / "manifest.json", manifest)
    return manifest
