"""`onnxsplit profile`: measure every node's time with onnxruntime and write profile.json."""

from __future__ import annotations

import argparse

from onnxsplit.cli import common
from onnxsplit.cli.common import flag_errors
from onnxsplit.cli.split_cmd import add_phase_flags, phase_options
from onnxsplit.errors import UsageError

TOP_NODES = 10


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure every node's time with onnxruntime's profiler")
    p.add_argument("model", help="the ONNX model to profile")
    p.add_argument("--provider", default="cpu",
                   help="a short name (cpu, cuda, tensorrt, ...) or an execution provider's name (default cpu)")
    p.add_argument("--provider-option", action="append", default=[], metavar="K=V",
                   help="an execution provider option, e.g. device_id=0 (repeatable)")
    common.add_number(p, "--threads", kind=int, default=1, help="onnxruntime intra-op threads (default 1)")
    common.add_number(p, "--runs", kind=int, default=20,
                      help="measured runs; each node's time is its median (default 20)")
    common.add_number(p, "--warmup", kind=int, zero=True, default=5, help="runs before measuring (default 5)")
    common.add_inputs(p)
    add_phase_flags(p, weight=False)
    common.add_output(p, what="profile.json to write")
    common.add_json(p)
    p.set_defaults(run=run)


def parse_provider_options(specs: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--provider-option {spec!r}: expected KEY=VALUE")
        if key.strip() in options:
            raise UsageError(f"--provider-option {spec!r}: option {key.strip()!r} is already given")
        options[key.strip()] = value.strip()
    return options


def _shapes_and_feeds(model, args: argparse.Namespace):
    """Input shapes from --input-shape, completed (and checked) by the arrays of --inputs."""
    from onnxsplit.feeds import check_feeds, load_feeds

    shapes = common.input_shapes(args.input_shape)
    if args.inputs is None:
        return shapes, None
    with flag_errors("--inputs"):
        feeds = load_feeds(args.inputs, [i.name for i in model.inputs])
        check_feeds(model, feeds, where=str(args.inputs))
    for name, array in feeds.items():
        if name in shapes and tuple(shapes[name]) != tuple(array.shape):
            raise UsageError(f"--input-shape {name}:{'x'.join(map(str, shapes[name]))} disagrees with --inputs "
                             f"(array of shape {'x'.join(map(str, array.shape))})")
        shapes[name] = tuple(array.shape)
    return shapes, feeds


def _phase_shapes(model, shapes: dict[str, tuple[int, ...]], args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    """The input shapes of the phase asked for (a decoder's default: decode), as `split --phase` costs it."""
    from onnxsplit.phases import io_specs, plan_phases

    if args.phase == "both":
        raise UsageError("a profile holds the times of one phase: profile --phase prefill and --phase decode apart")
    options = phase_options(args)
    plan = plan_phases(*io_specs(model.graph), given=shapes, where=str(args.model), fixed=args.inputs is not None,
                       **options)
    return dict(plan.shapes)


def run(args: argparse.Namespace) -> int:
    out = common.check_output_file(args.output, force=args.force, creates_folder=True)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onnxsplit.model import load_model
    from onnxsplit.ortutil import check_provider_options
    from onnxsplit.profile.measure import profile_model
    from onnxsplit.profile.store import profile_to_dict, save_profile
    from onnxsplit.providers import require_available, resolve_provider

    with flag_errors("--provider"):
        provider = resolve_provider(args.provider)
        require_available(provider)
    options = parse_provider_options(args.provider_option)
    with flag_errors("--provider-option"):
        check_provider_options(provider, options)
    model = load_model(args.model)
    shapes, feeds = _shapes_and_feeds(model, args)
    shapes = _phase_shapes(model, shapes, args)
    columns = (TextColumn("profiling"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("profiling", total=None)
        profile = profile_model(model, input_shapes=shapes, provider=provider, provider_options=options,
                                threads=args.threads, runs=args.runs, warmup=args.warmup, feeds=feeds,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))
    save_profile(profile, out)
    if args.json:
        common.print_json(profile_to_dict(profile))
    else:
        _print_summary(profile, args)
    return 0


def _print_summary(profile, args: argparse.Namespace) -> None:
    from rich.table import Table

    console = common.console()
    total = profile.total_ms
    table = Table(title=f"{args.model} on {profile.provider}, {profile.threads} thread(s), "
                        f"median of {profile.runs} runs")
    for col in ("node", "op", "ms", "share", "source", "fused with"):
        table.add_column(col, justify="right" if col in ("ms", "share") else "left")
    for n in sorted(profile.nodes, key=lambda n: -n.time_ms)[:TOP_NODES]:
        fused = ", ".join(n.fused_with[:3]) + (f" (+{len(n.fused_with) - 3})" if len(n.fused_with) > 3 else "")
        table.add_row(n.name, n.op_type, f"{n.time_ms:.4f}", f"{n.time_ms / total:.1%}" if total else "-",
                      n.source, fused)
    console.print(table)
    ratio = f" ({total / profile.end_to_end_ms:.0%})" if profile.end_to_end_ms else ""
    console.print(f"sum of node times {total:.4f} ms vs end-to-end {profile.end_to_end_ms:.4f} ms{ratio}; "
                  f"unattributed kernel time {profile.unattributed_ms:.4f} ms")
    by_source = profile.time_by_source()
    whole = total + profile.unattributed_ms
    shares = ", ".join(f"{s} {t / whole:.1%}" for s, t in by_source.items()) if whole else "no time measured"
    console.print(f"time by source: {shares}")
    console.print(f"wrote {args.output}")
