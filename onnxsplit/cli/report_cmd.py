"""`onnxsplit report`: the split's plan as one self-contained HTML page."""

from __future__ import annotations

import argparse

from onnxsplit.cli import common


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write an HTML report of a split: graph, stages, solver, measurements")
    p.add_argument("outdir", help="a folder written by `onnxsplit split`")
    p.add_argument("--bench", default=None, metavar="BENCH.json",
                   help="add measured stage times and the pipeline timeline from `onnxsplit bench --json` output")
    p.add_argument("--model", default=None, help="the original model, if it moved since the split")
    add_report_devices(p)
    common.add_costs(p)
    common.add_output(p, what="the HTML file to write", required=True)
    p.set_defaults(run=run)


def add_report_devices(p: argparse.ArgumentParser) -> None:
    """``--devices`` and ``--device-memory``: optional here, since the split is already made."""
    g = p.add_argument_group("devices")
    g.add_argument("--devices", default=None, metavar="N|FILE",
                   help="the devices the split was made for (a split folder does not record their memory)")
    g.add_argument("--device-memory", default=None, metavar="SIZE",
                   help="memory of each device with --devices N, e.g. 8G (default: unlimited, or the file's)")


def report_devices(args: argparse.Namespace):
    """The Devices of ``--devices`` / ``--device-memory``, or None when not given."""
    if args.devices is None:
        if args.device_memory is not None:
            from onnxsplit.errors import UsageError

            raise UsageError("--device-memory applies to --devices N")
        return None
    return common.parse_devices(args.devices, memory=args.device_memory)


def run(args: argparse.Namespace) -> int:
    from onnxsplit.export.report import write_report

    out = common.check_output_file(args.output, force=args.force)
    devices = report_devices(args)
    with common.status("writing the report..."), common.writing(out):
        path = write_report(args.outdir, out, bench=args.bench, model_path=args.model, profile_path=args.profile,
                            costs=args.costs, devices=devices)
    common.console().print(f"report written to {path}")
    return 0
