"""What the plan report shows, gathered from the split folder's typed files.

:func:`gather_report` reads the checked manifest, the checked plan.json and
its refine rounds, the original model's operators and dataflow, every
node's time (a profile file, the cached measurement ``split`` made, or the
analytic estimate) and, optionally, a ``bench --json`` file. The result is
a frozen :class:`ReportData`; drawing and the page read nothing else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onnxsplit.errors import UsageError

if TYPE_CHECKING:
    from onnxsplit.devices import Devices
    from onnxsplit.manifest import Manifest
    from onnxsplit.model import Model
    from onnxsplit.profile.store import Profile
    from onnxsplit.refine import Round
    from onnxsplit.runtime.bench import BenchResult
    from onnxsplit.solve.plan import Plan


@dataclass(frozen=True)
class NodeRow:
    """One operator of the original model as the report shows it."""

    index: int  # topological position in the normalised model
    name: str
    op_type: str
    stage: int  # the stage the plan put it on (a constant node: where it is first copied)
    time_ms: float  # per request on its stage's device kind
    source: str  # where the time comes from: measured, fused, folded, estimated
    fused_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Edge:
    """A tensor from one operator to another (a node reading one tensor twice gives one edge)."""

    producer: int
    consumer: int
    tensor: str


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows; the values are the files' own, unrounded.

    ``device_memory`` is each stage's device memory in bytes (``math.inf``:
    unlimited), or None when the devices were not given: a split folder
    does not record them.
    """

    outdir: Path
    manifest: Manifest
    plan: Plan
    rounds: tuple[Round, ...]
    nodes: tuple[NodeRow, ...]
    edges: tuple[Edge, ...]
    graph_inputs: tuple[str, ...]
    input_reads: tuple[tuple[str, int], ...]  # (model input, node reading it)
    graph_outputs: Mapping[str, int] = field(repr=False)  # graph output -> node that writes it
    times_from: str = ""  # one phrase: where node times come from
    device_memory: tuple[float, ...] | None = None
    bench: BenchResult | None = None
    bench_path: Path | None = None

    @property
    def bottleneck(self) -> int:
        """The stage with the largest predicted load (the first such stage on a tie)."""
        return max(self.manifest.stages, key=lambda s: (s.predicted.load_ms, -s.index)).index

    @property
    def handoff_bytes(self) -> dict[str, int | None]:
        return {h.name: h.bytes_per_sample for h in self.manifest.handoffs}


def _stage_of_nodes(plan_path: Path, names: tuple[str, ...]) -> list[int]:
    """Each model node's stage, by name, from plan.json's assignment (already checked by ``load_plan``)."""
    from onnxsplit.errors import PlanError
    from onnxsplit.planfile import read_assignment

    assignment = read_assignment(plan_path)
    missing = [n for n in names if n not in assignment]
    if missing:
        raise PlanError(f"{plan_path}: assignment: does not place node {missing[0]!r} of the source model")
    return [int(assignment[n]) for n in names]


def _reference_devices(manifest: Manifest) -> Devices:
    """One device kind as the split measured on: the provider, options and threads of its first device."""
    from onnxsplit.devices import DeviceKind, Devices

    first = min(manifest.stages, key=lambda s: s.device)
    kind = DeviceKind(first.device_kind, 1, provider=first.provider,
                      provider_options=tuple(sorted((str(k), str(v)) for k, v in first.provider_options.items())),
                      threads=first.threads)
    return Devices((kind,))


def _node_times(model: Model, manifest: Manifest, devices: Devices | None, *, costs: str,
                profile_path: str | os.PathLike | None) -> tuple[dict[str, tuple[float, ...]], Profile | None, str]:
    """Node times (ms, node order) per device kind name, the profile they came from (None: estimated), and a phrase.

    The profile is the one ``split`` used with the same options: a cache hit
    right after a split with ``costs="measure"``.
    """
    from onnxsplit.costmodel import kind_times, shared_profile
    from onnxsplit.graphinfo import graph_info
    from onnxsplit.shapes import concrete_types

    shapes = {k: tuple(v) for k, v in manifest.input_shapes.items()}
    measured_on = devices if devices is not None else _reference_devices(manifest)
    profile = shared_profile(model, measured_on, input_shapes=shapes, costs=costs, profile_path=profile_path)
    types = concrete_types(model, shapes) if profile is None else {}
    times = kind_times(model, graph_info(model), types, measured_on, profile=profile, input_shapes=shapes)
    by_kind = {k.kind: k.times_ms for k in times.kinds}
    if profile_path is not None:
        phrase = f"profile {profile_path}"
    elif profile is not None:
        phrase = f"measured with onnxruntime ({profile.provider}, {profile.threads} threads)"
    else:
        phrase = "estimated from FLOPs and bytes"
    return by_kind, profile, phrase


def _device_memory(manifest: Manifest, devices: Devices | None) -> tuple[float, ...] | None:
    if devices is None:
        return None
    kinds = devices.expanded()
    for s in manifest.stages:
        if s.device >= len(kinds):
            raise UsageError(f"the split puts stage {s.index} on device {s.device}, but only {len(kinds)} devices "
                             "are given")
        if kinds[s.device].name != s.device_kind:
            raise UsageError(f"the split puts stage {s.index} on a {s.device_kind!r} device, but device {s.device} "
                             f"of the devices given is a {kinds[s.device].name!r}")
    return tuple(float(kinds[s.device].memory) for s in manifest.stages)


def _load_bench(path: Path, manifest: Manifest) -> BenchResult:
    from onnxsplit.runtime.benchfile import load_bench

    result = load_bench(path)
    if len(result.stages) != len(manifest.stages):
        raise UsageError(f"{path}: measured {len(result.stages)} stages, but the split in {manifest.folder} has "
                         f"{len(manifest.stages)}: the bench file is of another split")
    return result


def gather_report(outdir: str | os.PathLike, *, bench: str | os.PathLike | None = None,
                  model_path: str | os.PathLike | None = None, profile_path: str | os.PathLike | None = None,
                  costs: str = "measure", devices: Devices | None = None) -> ReportData:
    """Read everything the report shows.

    Before: ``outdir`` is a split folder; ``model_path`` (default: where the
    manifest says) is the model it was split from, same digest. After: the
    values are checked (UsageError, PlanError, ModelError naming the file and
    field otherwise); node times cover every node of the model.
    """
    from onnxsplit.graphinfo import graph_info
    from onnxsplit.manifest import load_manifest
    from onnxsplit.model import check_source, load_model
    from onnxsplit.planfile import load_plan
    from onnxsplit.refine import load_rounds

    outdir = Path(outdir)
    manifest = load_manifest(outdir)
    plan_path = manifest.plan_path()
    if not plan_path.is_file():
        raise UsageError(f"{outdir}: not a split folder (no {manifest.plan_file})")
    plan = load_plan(plan_path)
    if plan.num_stages != len(manifest.stages):
        raise UsageError(f"{plan_path}: {plan.num_stages} stages, but {outdir / 'manifest.json'} has "
                         f"{len(manifest.stages)}")
    rounds = load_rounds(plan_path)
    bench_result = _load_bench(Path(bench), manifest) if bench is not None else None
    memory = _device_memory(manifest, devices)

    source = check_source(model_path if model_path is not None else manifest.source_path(), manifest.source.sha256,
                          what=f"{outdir} was split from")
    model = load_model(source)
    info = graph_info(model)
    stage_of = _stage_of_nodes(plan_path, info.names)
    by_kind, profile, phrase = _node_times(model, manifest, devices, costs=costs, profile_path=profile_path)
    fallback = next(iter(by_kind.values()))
    kind_of_stage = [s.device_kind for s in manifest.stages]
    rows = []
    for v, node in enumerate(model.graph.node):
        s = stage_of[v]
        times = by_kind.get(kind_of_stage[s], fallback)
        if profile is not None:
            nt = profile.node(node.name)
            source_of, fused = nt.source, nt.fused_with
        else:
            source_of, fused = "estimated", ()
        rows.append(NodeRow(v, node.name, node.op_type, s, float(times[v]), source_of, tuple(fused)))

    edges: list[Edge] = []
    for v, reads in enumerate(info.reads):
        for tensor in dict.fromkeys(reads):
            p = info.producer.get(tensor)
            if p is not None:
                edges.append(Edge(p, v, tensor))
    inputs = set(info.inputs)
    input_reads = tuple((t, v) for v, reads in enumerate(info.reads) for t in dict.fromkeys(reads) if t in inputs)
    outputs = {name: info.producer[name] for name in info.outputs if name in info.producer}
    return ReportData(outdir=outdir, manifest=manifest, plan=plan, rounds=tuple(rounds), nodes=tuple(rows),
                      edges=tuple(edges), graph_inputs=info.inputs, input_reads=input_reads,
                      graph_outputs=outputs, times_from=phrase,
                      device_memory=memory, bench=bench_result, bench_path=None if bench is None else Path(bench))


def finite_or_none(x: float | None) -> float | None:
    """JSON has no infinity: a figure that is not finite is shown as absent."""
    return x if x is not None and math.isfinite(x) else None


def format_bytes(n: float) -> str:
    """Bytes for people, in powers of 1000 (as the CLI tables); infinity is "unlimited"."""
    if not math.isfinite(n):
        return "unlimited"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"
