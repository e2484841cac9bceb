"""Closing the loop: re-plan from measured stage times.

After a first split, the pipeline runs briefly; every node's cost is scaled
by its stage's measured / predicted compute ratio, the plan is solved again,
and the split with the best measured throughput is kept. Each round's
predicted and measured bottleneck go into plan.json under "refine", which
:func:`load_rounds` reads back.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from onnxsplit.costgraph import CostGraph
from onnxsplit.errors import UsageError
from onnxsplit.fileio import write_json_atomic
from onnxsplit.outdir import make_scratch, place, remove_scratch, resolve_outdir
from onnxsplit.solve.plan import stage_loads
from onnxsplit.solve.select import solve
from onnxsplit.splitting import SplitResult, split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Round:
    """One measured split of ``refine_split``: round 0 is the first split, each later one a re-solve."""

    index: int
    predicted_bottleneck_ms: float  # the plan's max stage load under this round's costs
    measured_bottleneck_ms: float  # the slowest stage's measured time per request
    samples_per_s: float
    kept: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_rounds(plan_path: str | os.PathLike) -> tuple[Round, ...]:
    """The refine rounds that ``refine_split`` recorded in the plan.json at ``plan_path``, in order.

    Empty when the plan has none (a split without refinement). A file that
    is not a JSON object, or rounds whose fields are missing, of the wrong
    type, or numbered out of order, raise a one-line UsageError naming the
    file and the field.
    """
    path = Path(plan_path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read a JSON plan ({' '.join(str(exc).split())})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: a plan file is a JSON object")
    if "refine" not in doc:
        return ()
    rounds = doc["refine"]
    if not isinstance(rounds, list):
        raise UsageError(f"{path}: refine: expected a list of rounds")

    def fail(field: str, problem: str) -> UsageError:
        return UsageError(f"{path}: {field}: {problem}")

    out = []
    for i, item in enumerate(rounds):
        where = f"refine[{i}]"
        if not isinstance(item, dict):
            raise fail(where, "expected an object")
        missing = [k for k in Round.__dataclass_fields__ if k not in item]
        if missing:
            raise fail(f"{where}.{missing[0]}", "missing")
        index, kept = item["index"], item["kept"]
        if isinstance(index, bool) or not isinstance(index, int) or index != i:
            raise fail(f"{where}.index", f"expected {i}, got {index!r}")
        if not isinstance(kept, bool):
            raise fail(f"{where}.kept", f"expected true or false, got {kept!r}")
        figures = {}
        for key in ("predicted_bottleneck_ms", "measured_bottleneck_ms", "samples_per_s"):
            value = item[key]
            # NaN passes: a stage that ran no request in the window has no measured time.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise fail(f"{where}.{key}", f"expected a number at least 0, got {value!r}")
            figures[key] = float(value)
        out.append(Round(index=index, kept=kept, **figures))
    return tuple(out)


def _measure(outdir: Path, seconds: float) -> tuple[float, list[float]]:
    """Pipeline throughput and each stage's mean compute time per request."""
    from onnxsplit.runtime.bench import bench

    result = bench(outdir, seconds=seconds, warmup=min(0.5, seconds), rounds=1)
    return result.pipeline.samples_per_s, [s.measured_ms for s in result.stages]


def scale_by_stage(graph: CostGraph, stage_of: tuple[int, ...], ratios: list[float]) -> CostGraph:
    """Each node's compute multiplied by its stage's measured / predicted ratio."""
    compute = {k: tuple(t * ratios[stage_of[v]] for v, t in enumerate(times)) for k, times in graph.compute.items()}
    return replace(graph, compute=compute)


def refine_split(model_path: str | os.PathLike, outdir: str | os.PathLike, *, rounds: int, seconds: float = 1.0,
                 **split_options: Any) -> tuple[SplitResult, list[Round]]:
    """Split, then up to ``rounds`` times re-solve with measured stage ratios; keep the fastest split."""
    outdir = Path(outdir)
    result = split(model_path, outdir, **split_options)
    devices = result.devices
    best_throughput, measured = _measure(outdir, seconds)
    history = [Round(0, result.plan.value, max(measured), best_throughput, True)]
    # Costs as the measurements so far say; the plan last measured, and its stage times.
    graph, plan = result.graph, result.plan
    options = {k: v for k, v in split_options.items() if k not in ("force", "plan")}
    for r in range(1, rounds + 1):
        predicted = [sl.compute for sl in stage_loads(graph, devices, plan.stage_of, plan.stage_device)]
        ratios = [m / p if p > 0 else 1.0 for m, p in zip(measured, predicted)]
        graph = scale_by_stage(graph, plan.stage_of, ratios)
        new_plan = solve(graph, devices, solver=split_options.get("solver", "auto"),
                         time_limit=split_options.get("time_limit", 60.0))
        if new_plan.stage_of == plan.stage_of:
            log.info("refine round %d: the plan did not change; stopping", r)
            break
        # A marked scratch folder, so a killed refine leaves nothing the next split cannot clean up; the split
        # written over it keeps the marker. It is a sibling of outdir, so the manifest's relative paths hold in both.
        trial = make_scratch(resolve_outdir(outdir).parent, role="trial", target=outdir.name).path
        try:
            candidate = split(model_path, trial, plan=new_plan, force=True, **options)
            throughput, measured = _measure(trial, seconds)
            kept = throughput > best_throughput
            history.append(Round(r, new_plan.value, max(measured), throughput, kept))
            log.info("refine round %d: predicted %.4f ms, measured %.4f ms, %.1f samples/s%s", r, new_plan.value,
                     max(measured), throughput, " (kept)" if kept else "")
            if kept:
                place(trial, outdir, force=True)
                moved = replace(candidate.manifest, folder=outdir)
                best_throughput, result = throughput, replace(candidate, outdir=outdir, manifest=moved)
        finally:
            remove_scratch(trial)
        plan = candidate.plan
    plan_path = result.manifest.plan_path()
    doc = json.loads(plan_path.read_text())
    doc["refine"] = [h.as_dict() for h in history]
    write_json_atomic(plan_path, doc)
    return result, history
