"""Write a split folder: stage models, manifest.json and plan.json, all or nothing.

Before: ``cut`` is ``cut_stages`` of the prepared model under ``plan`` (the
plan's stages are the cut's stages, in the same order). After: ``outdir``
holds a folder whose manifest every consumer can load; on any error nothing
is left behind, not even the temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from onnxsplit.costmodel import activation_peak
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError
from onnxsplit.manifest import (FILENAME, FrozenMap, GraphOutput, Handoff, Manifest, PredictedLoad, Source, Stage,
                                StageInput, StageOutput, StateSpec, TensorSpec)
from onnxsplit.model import tensor_nbytes
from onnxsplit.valuetypes import dtype_name
from onnxsplit.outdir import output_folder
from onnxsplit.planfile import save_plan
from onnxsplit.prepared import Loaded, Prepared
from onnxsplit.probe import Feeds, boundary_types
from onnxsplit.rewrite.extract import stage_proto, write_stage
from onnxsplit.rewrite.stages import Cut
from onnxsplit.solve.plan import Plan, stage_loads
from onnxsplit.state import StatePair
from onnxsplit.valuetypes import is_tensor_type, type_name

PLAN_FILE = "plan.json"


def type_handoffs(loaded: Loaded, cut: Cut, *, feeds: Feeds | None = None) -> dict[str, onnx.ValueInfoProto]:
    """Value infos for the stage inputs and outputs that shape inference left untyped.

    Every stage input and output needs a type: a tensor's dtype and rank, or
    a sequence's or optional's element type. Graph inputs and outputs carry
    the model's own; hand-offs come from shape inference, else from one run
    of the original on ``feeds`` (see :mod:`onnxsplit.probe`). Raises
    ModelError naming a hand-off neither can type.
    """
    graph_inputs = {i.name for i in loaded.model.graph.input}
    boundary = [n for spec in cut.stages for n in (*spec.inputs, *spec.outputs) if n not in graph_inputs]
    return boundary_types(loaded.model, boundary, shapes=loaded.shapes, feeds=feeds)


def _shape(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)


class _Specs:
    """TensorSpecs by name, from the model's value infos, the probed ones, and the inferred types."""

    def __init__(self, loaded: Loaded, probed: Mapping[str, onnx.ValueInfoProto]) -> None:
        model = loaded.model
        self.types = loaded.types
        self.vi_of = {**{o.name: o for o in model.graph.output if o.type.WhichOneof("value")},
                      **{i.name: i for i in model.graph.input}, **model.value_info, **probed}

    def __call__(self, name: str) -> TensorSpec:
        vi = self.vi_of.get(name)
        if vi is not None and not is_tensor_type(vi.type):
            return TensorSpec(name, type_name(vi.type), None)  # a sequence, optional or map: no one shape
        t = self.types.get(name)
        elem = (vi.type.tensor_type.elem_type if vi is not None else 0) or (t.dtype if t else 0)
        return TensorSpec(name, dtype_name(elem) if elem else None, _shape(vi) if vi is not None else None)


def _write_stages(prepared: Prepared, devices: Devices, plan: Plan, cut: Cut,
                  probed: Mapping[str, onnx.ValueInfoProto], tmp: Path,
                  caches: Mapping[str, int]) -> tuple[Stage, ...]:
    """Write every stage model into ``tmp``; raises InfeasibleError when a stage does not fit its device.

    ``caches``: bytes of the caches a stage keeps, by state input name (the stage that reads it keeps it).
    """
    model, info, types = prepared.model, prepared.info, prepared.types
    kinds = devices.expanded()
    spec_of = _Specs(prepared, probed)
    loads = stage_loads(prepared.graph, devices, plan.stage_of, plan.stage_device)
    init_sizes = {t.name: tensor_nbytes(t) for t in model.graph.initializer}
    stages = []
    for spec in cut.stages:
        weights = sum(init_sizes[n] for n in spec.initializers)
        activations = activation_peak(info, types, spec.nodes, spec.inputs, spec.outputs)
        kept = sum(caches.get(n, 0) for n in spec.inputs)
        device_index = plan.stage_device[spec.index]
        device = kinds[device_index]
        if weights + activations + kept > device.memory:
            held = f", caches {kept}" if kept else ""
            raise InfeasibleError(f"stage {spec.index} needs {weights + activations + kept:.0f} bytes (weights "
                                  f"{weights}, activations {activations}{held}) but its {device.name} device has "
                                  f"{device.memory:.0f}")
        filename = f"stage_{spec.index}.onnx"
        data = write_stage(model, stage_proto(model, info, spec, len(cut.stages), probed), tmp / filename)
        sl = loads[spec.index]
        stages.append(Stage(
            index=spec.index,
            file=filename,
            external_data=data,
            device=device_index,
            device_kind=device.name,
            provider=device.provider,
            provider_options=FrozenMap(devices.provider_options(device_index)),
            threads=device.threads,
            nodes=len(spec.own),
            copied_const_nodes=len(spec.nodes) - len(spec.own),
            inputs=tuple(StageInput(*_fields(spec_of(n)), cut.source[n]) for n in spec.inputs),
            outputs=tuple(StageOutput(*_fields(spec_of(n)), tuple(cut.consumers.get(n, ())),
                                      cut.output_stage.get(n) == spec.index) for n in spec.outputs),
            predicted=PredictedLoad(sl.compute, sl.receive, sl.send, sl.load),
            weight_bytes=weights,
            activation_peak_bytes=activations,
        ))
    return tuple(stages)


def _fields(t: TensorSpec) -> tuple[str, str | None, tuple[int | str | None, ...] | None]:
    return t.name, t.dtype, t.shape


def build_manifest(prepared: Prepared, plan: Plan, cut: Cut, stages: tuple[Stage, ...],
                   probed: Mapping[str, onnx.ValueInfoProto], *, outdir: Path,
                   state: Sequence[StatePair] = ()) -> Manifest:
    """The manifest of written ``stages``, for a folder that will live at ``outdir``.

    ``state``: the model's state pairs, each recorded with the stage that makes
    its output (the cut keeps its input there; see :func:`onnxsplit.stateplace.check_state_placement`).
    """
    model, types = prepared.model, prepared.types
    spec_of = _Specs(prepared, probed)
    handoffs = []
    for spec in cut.stages:
        for n in spec.outputs:
            if cut.consumers.get(n):
                t = types.get(n)
                handoffs.append(Handoff(*_fields(spec_of(n)), spec.index, tuple(cut.consumers[n]),
                                        t.nbytes if t is not None else None))
    return Manifest(
        folder=outdir,
        source=Source(os.path.relpath(model.path, outdir.resolve()), model.sha256, model.proto.ir_version),
        input_shapes=FrozenMap({k: tuple(v) for k, v in prepared.shapes.items()}),
        inputs=tuple(spec_of(i.name) for i in model.inputs),
        outputs=tuple(GraphOutput(*_fields(spec_of(o.name)), cut.output_stage[o.name]) for o in model.graph.output),
        stages=stages,
        handoffs=tuple(handoffs),
        plan_file=PLAN_FILE,
        predicted_bottleneck_ms=plan.value,
        state=tuple(StateSpec(p.input, p.output, cut.output_stage[p.output]) for p in state),
    )


def write_split(prepared: Prepared, devices: Devices, plan: Plan, cut: Cut, *, outdir: Path,
                force: bool = False, feeds: Feeds | None = None, state: Sequence[StatePair] = (),
                cache_bytes: Mapping[str, int] = FrozenMap()) -> Manifest:
    """Write the split folder of ``plan`` to ``outdir`` atomically and return its manifest.

    The folder is built in a scratch folder beside ``outdir`` and moved into
    place at the end (see :mod:`onnxsplit.outdir`); with ``force`` an
    existing ``outdir`` that holds a previous split is replaced. ``feeds``:
    the representative inputs (see :func:`onnxsplit.probe.read_inputs`) that
    hand-offs shape inference cannot type are typed on. ``state``: the
    model's state pairs, each already on one stage of ``cut``; ``cache_bytes``:
    the size of their caches by state input name, counted in the memory of
    the stage that keeps them.
    """
    outdir = Path(outdir)
    probed = type_handoffs(prepared, cut, feeds=feeds)
    with output_folder(outdir, force=force) as tmp:
        stages = _write_stages(prepared, devices, plan, cut, probed, tmp, cache_bytes)
        manifest = build_manifest(prepared, plan, cut, stages, probed, outdir=outdir, state=state)
        manifest.write(tmp / FILENAME)
        save_plan(plan, tmp / PLAN_FILE, graph=prepared.graph, devices=devices)
    return manifest
