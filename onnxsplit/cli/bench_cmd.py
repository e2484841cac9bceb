"""`onnxsplit bench`: pipeline throughput and latency against the original model."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from onnxsplit.cli.common import console as wide_console


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure the pipeline against the original model")
    p.add_argument("outdir", help="a folder written by `onnxsplit split`")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each measurement (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each measurement (default 1)")
    p.add_argument("--rounds", type=int, default=3,
                   help="turns the pipeline and the original take, to even out a drifting machine (default 3)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size: the first dim of inputs whose first dim is symbolic (default: the split's shapes)")
    p.add_argument("--model", default=None, help="the original model, if it moved since the split")
    p.add_argument("--queue-size", type=int, default=4, help="requests each stage's queue holds (default 4)")
    p.add_argument("--no-pin", action="store_true", help="do not pin stage workers to cores")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _fmt_ms(x: float) -> str:
    return f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    from onnxsplit.runtime.bench import bench

    result = bench(args.outdir, seconds=args.seconds, warmup=args.warmup, rounds=args.rounds, batch=args.batch,
                   model_path=args.model, pin=not args.no_pin, queue_size=args.queue_size)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    console = wide_console()
    shapes = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in result.input_shapes.items())
    table = Table(title=f"{result.outdir} ({shapes}; {result.samples_per_request} samples per request)")
    for col in ("run", "threads", "requests", "samples/s", "rounds min-max", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for t in (result.pipeline, result.original_1, result.original_n):
        table.add_row(t.label, str(t.threads), str(t.requests), f"{t.samples_per_s:.1f}",
                      f"{min(t.per_round):.1f}-{max(t.per_round):.1f}", _fmt_ms(t.p50_ms), _fmt_ms(t.p99_ms))
    console.print(table)

    stages = Table(title=f"stages ({result.in_flight} requests in flight)")
    for col in ("stage", "provider", "threads", "cores", "busy", "starved", "blocked", "other",
                "meas ms", "pred ms", "meas/pred"):
        stages.add_column(col, justify="right")
    for s in result.stages:
        ratio = s.measured_ms / s.predicted_ms if s.predicted_ms > 0 else float("nan")
        stages.add_row(str(s.index), s.provider.removesuffix("ExecutionProvider"), str(s.threads),
                       ",".join(map(str, s.cores)) or "-", f"{s.busy:.0%}", f"{s.starved:.0%}", f"{s.blocked:.0%}",
                       f"{s.other:.0%}", _fmt_ms(s.measured_ms), _fmt_ms(s.predicted_ms), f"{ratio:.2f}")
    console.print(stages)
    if result.predicted_scale != 1.0:
        console.print(f"predicted times scaled by {result.predicted_scale:g} (batch differs from the split's)")
    console.print(f"pipeline / {result.original_1.label}: {result.vs_original_1:.2f}x")
    console.print(f"pipeline / {result.original_n.label}: {result.vs_original_n:.2f}x")
    return 0
