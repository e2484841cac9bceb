"""What each stage worker needs to know, read from the manifest, and which cores it gets."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxsplit.manifest import Manifest, Stage
from onnxsplit.valuetypes import is_tensor_dtype

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class StageSpec:
    """What one stage worker needs to know, read from the manifest."""

    index: int
    path: Path
    provider: str
    provider_options: Mapping[str, Any]
    threads: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    graph_outputs: tuple[str, ...]  # model outputs this stage makes
    keep: frozenset[str]  # tensors a request still needs after this stage
    on_device: frozenset[str]  # outputs left on the GPU for the next stage (CUDA only)
    # Every input and output is a plain tensor: IO binding cannot carry a sequence, an optional or a map.
    tensors_only: bool = True
    # (input, output) of every state pair this stage keeps: for a sequence, the output of one step is
    # stored on the stage and fed back as the input of the next, never sent on.
    state: tuple[tuple[str, str], ...] = ()

    @property
    def device_id(self) -> int:
        return int(self.provider_options.get("device_id", 0))


def _device_id(stage: Stage) -> int:
    return int(stage.provider_options.get("device_id", 0))


def stage_specs(manifest: Manifest) -> tuple[StageSpec, ...]:
    """Each stage's inputs, outputs and what survives it, from the manifest alone.

    The manifest is checked already (stages in pipeline order, hand-offs
    between stages that exist), as :func:`onnxsplit.manifest.load_manifest`
    leaves it.
    """
    stages = manifest.stages
    made_by = {o.name: s.index for s in stages for o in s.outputs}
    specs = []
    for k, s in enumerate(stages):
        later = {i.name for t in stages[k + 1:] for i in t.inputs}
        state = tuple((p.input, p.output) for p in manifest.state if p.stage == k)
        on_device = set()
        if s.provider == CUDA:
            # A stored cache stays where the stage computed it: on the GPU, as an OrtValue fed back by IO binding.
            on_device.update(out for _, out in state)
            for o in s.outputs:
                readers = [stages[j] for j in o.consumers]
                # A hand-off stays on the GPU only when every reader runs on the same GPU;
                # anything else goes through the host, which onnxruntime can always read.
                if readers and is_tensor_dtype(o.dtype) and \
                        all(r.provider == CUDA and _device_id(r) == _device_id(s) for r in readers):
                    on_device.add(o.name)
        specs.append(StageSpec(
            index=k,
            path=manifest.stage_path(k),
            provider=s.provider,
            provider_options=dict(s.provider_options),
            threads=s.threads,
            inputs=tuple(i.name for i in s.inputs),
            outputs=tuple(o.name for o in s.outputs),
            graph_outputs=tuple(n for n in manifest.output_names if made_by.get(n) == k),
            keep=frozenset(later),
            on_device=frozenset(on_device),
            tensors_only=all(is_tensor_dtype(t.dtype) for t in (*s.inputs, *s.outputs)),
            state=state,
        ))
    return tuple(specs)


def usable_cores() -> tuple[int, ...]:
    """The cores this process may run on (its affinity mask where the OS has one, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def assign_cores(specs: tuple[StageSpec, ...], *, pin: bool) -> tuple[tuple[int, ...], ...]:
    """Disjoint cores for every CPU stage (as many as its threads), or none when they do not fit.

    onnxruntime's intra-op threads are made by the worker thread when the
    session opens, so they inherit the worker's affinity: a stage with T
    threads needs T cores of its own.
    """
    none: tuple[tuple[int, ...], ...] = tuple(() for _ in specs)
    if not pin or not hasattr(os, "sched_getaffinity"):
        return none
    cores = usable_cores()
    wanted = sum(s.threads for s in specs if s.provider == CPU)
    if wanted > len(cores):
        log.info("not pinning: the CPU stages want %d threads but only %d cores are available", wanted, len(cores))
        return none
    out, next_core = [], 0
    for s in specs:
        if s.provider != CPU:
            out.append(())
            continue
        out.append(tuple(cores[next_core:next_core + s.threads]))
        next_core += s.threads
    return tuple(out)
