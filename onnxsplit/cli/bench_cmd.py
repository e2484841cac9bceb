"""`onnxsplit bench`: pipeline throughput and latency against the original model."""

from __future__ import annotations

import argparse
import math

from onnxsplit.cli import common


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure the pipeline against the original model")
    p.add_argument("outdir", help="a folder written by `onnxsplit split`")
    common.add_number(p, "--seconds", default=5.0, metavar="S", help="length of each measurement (default 5)")
    common.add_number(p, "--warmup", zero=True, default=1.0, metavar="S",
                      help="unmeasured seconds before each measurement (default 1)")
    common.add_number(p, "--rounds", kind=int, default=3,
                      help="turns the pipeline and the original take, to even out a drifting machine (default 3)")
    common.add_number(p, "--batch", kind=int, default=None, metavar="B",
                      help="batch size: the first dim of inputs whose first dim is symbolic (default: the split's shapes)")
    p.add_argument("--model", default=None, help="the original model, if it moved since the split")
    common.add_number(p, "--queue-size", kind=int, default=4, help="requests each stage's queue holds (default 4)")
    common.add_runtime(p)
    common.add_engine(p)
    common.add_json(p)
    p.set_defaults(run=run)


def _check_batch(outdir: str, batch: int) -> None:
    """Refuse a batch whose inputs could not even be held in this machine's memory (the run would die of MemoryError)."""
    import numpy as np

    from onnxsplit.manifest import load_manifest
    from onnxsplit.runtime.bench import bench_shapes

    manifest = load_manifest(outdir)
    with common.flag_errors("--batch"):
        shapes, _ = bench_shapes(manifest.inputs, manifest.input_shapes, batch=batch)
    def itemsize(dtype: str | None) -> int:
        try:
            return max(np.dtype(dtype).itemsize, 1)
        except TypeError:  # a type numpy lacks (bfloat16, ...): at least a byte per element
            return 1

    nbytes = sum(math.prod(shape) * itemsize(dtype) for _, dtype, shape in manifest.feed_specs(shapes))
    common.refuse_beyond_memory(f"--batch {batch}: the inputs", nbytes)


def _fmt_ms(x: float) -> str:
    return f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    from onnxsplit.runtime.bench import bench

    engine = common.engine_options(args)
    if args.batch is not None:
        _check_batch(args.outdir, args.batch)
    result = bench(args.outdir, seconds=args.seconds, warmup=args.warmup, rounds=args.rounds, batch=args.batch,
                   model_path=args.model, pin=not args.no_pin, queue_size=args.queue_size, **engine)
    for w in result.warnings:
        common.warn(w)
    if args.json:
        common.print_json(result.as_dict())
        return 0
    from rich.table import Table

    console = common.console()
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
    # A busy machine's ratio compares moments, not ways of running: it is shown, but marked.
    mark = "" if result.reliable else f" (unreliable: rounds spread {result.spread:.0%})"
    console.print(f"pipeline / {result.original_1.label}: {result.vs_original_1:.2f}x{mark}")
    console.print(f"pipeline / {result.original_n.label}: {result.vs_original_n:.2f}x{mark}")
    return 0
