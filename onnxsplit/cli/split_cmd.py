"""`onnxsplit split`: cut a model into stage models for N devices."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from onnxsplit.cli.common import console as wide_console, parse_devices
from onnxsplit.errors import UsageError
from onnxsplit.shapes import parse_input_shapes
from onnxsplit.solve.select import OBJECTIVES

# Solvers whose plans are contiguous, so the stages form a pipeline.
SPLIT_SOLVERS = ("auto", "dp", "ip", "linear", "greedy")


def add_parser(sub) -> None:
    p = sub.add_parser("split", help="split a model into one standalone ONNX model per device")
    p.add_argument("model", help="the ONNX model to split")
    p.add_argument("--devices", default="2", help="number of identical devices (default 2)")
    p.add_argument("--device-memory", default=None, help="memory of each device, e.g. 8G (default: unlimited)")
    p.add_argument("-o", "--output", required=True, help="folder to write stage_K.onnx, manifest.json, plan.json")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:DxD",
                   help="fix an input's shape for costs and sizes, e.g. input_ids:1x128 (repeatable)")
    p.add_argument("--costs", default="measure", choices=("measure", "estimate"),
                   help="measure node times with onnxruntime (cached) or estimate them from FLOPs (default measure)")
    p.add_argument("--profile", default=None, help="use this profile.json (e.g. measured on the target machine)")
    p.add_argument("--plan", default=None, help="use this plan (node name -> stage) instead of solving")
    p.add_argument("--solver", default="auto", choices=SPLIT_SOLVERS,
                   help="placement solver (default auto: the exact DP, falling back to the integer program)")
    p.add_argument("--objective", default="throughput", choices=OBJECTIVES, help="what to optimise")
    p.add_argument("--time-limit", type=float, default=60.0, help="solver time limit in seconds")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="run the pipeline, rescale costs by measured stage times, re-solve; up to N rounds")
    p.set_defaults(run=run)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def run(args: argparse.Namespace) -> int:
    from onnxsplit.splitting import split

    devices = parse_devices(args.devices, memory=args.device_memory)
    options = dict(devices=devices, input_shapes=parse_input_shapes(args.input_shape), plan=args.plan,
                   solver=args.solver, time_limit=args.time_limit, force=args.force, costs=args.costs,
                   profile_path=args.profile, objective=args.objective)
    rounds = []
    if args.refine < 0:
        raise UsageError(f"--refine must be 0 or more, got {args.refine}")
    if args.refine and args.plan:
        raise UsageError("--refine re-plans; it cannot be combined with --plan")
    with Console(stderr=True).status("profiling, solving and writing stages..."):
        if args.refine:
            from onnxsplit.refine import refine_split

            result, rounds = refine_split(args.model, args.output, rounds=args.refine, **options)
        else:
            result = split(args.model, args.output, **options)
    console = wide_console()
    m, plan = result.manifest, result.plan
    bottleneck = max(m.stages, key=lambda s: s.predicted.load_ms).index
    table = Table(title=f"{args.model} -> {args.output} ({plan.solver} solver)")
    for col in ("stage", "device", "nodes", "predicted ms", "weights", "in", "out", ""):
        table.add_column(col, justify="right" if col not in ("", "device") else "left")
    handoff_bytes = {h.name: h.bytes_per_sample or 0 for h in m.handoffs}
    for s in m.stages:
        bytes_in = sum(handoff_bytes.get(i.name, 0) for i in s.inputs if i.producer is not None)
        bytes_out = sum(handoff_bytes.get(o.name, 0) for o in s.outputs if o.consumers)
        table.add_row(str(s.index), f"{s.device_kind}:{s.device}", str(s.nodes),
                      f"{s.predicted.load_ms:.4f}", _mb(s.weight_bytes), _mb(bytes_in), _mb(bytes_out),
                      "bottleneck" if s.index == bottleneck else "")
    console.print(table)
    console.print(f"predicted bottleneck {plan.value:.4f} ms (lower bound {plan.lower_bound:.4f}, gap {plan.gap:.1%}); "
                  f"split in {result.seconds:.2f} s")
    for r in rounds:
        console.print(f"refine round {r.index}: predicted bottleneck {r.predicted_bottleneck_ms:.4f} ms, measured "
                      f"{r.measured_bottleneck_ms:.4f} ms, {r.samples_per_s:.1f} samples/s" + (" (kept)" if r.kept else ""))
    for w in result.warnings:
        console.print(f"[bold yellow]WARNING:[/] {w}")
    return 0
