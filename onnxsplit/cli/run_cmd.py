"""`onnxsplit run`: run one batch of inputs through a split folder's pipeline."""

from __future__ import annotations

import argparse

from onnxsplit.cli import common


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run inputs through the stages as a pipeline and save the outputs")
    p.add_argument("outdir", help="a folder written by `onnxsplit split`")
    common.add_inputs(p, shapes=False, inputs_required=True, inputs_help=".npz of input arrays keyed by input name")
    common.add_output(p, what=".npz to write the outputs to, keyed by output name")
    common.add_runtime(p)
    common.add_engine(p)
    common.add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = common.check_output_file(args.output, force=args.force)
    from onnxsplit.fileio import save_npz_atomic
    from onnxsplit.manifest import load_manifest
    from onnxsplit.feeds import load_feeds
    from onnxsplit.runtime import Pipeline

    engine = common.engine_options(args)
    manifest = load_manifest(args.outdir)
    with common.flag_errors("--inputs"):
        feeds = load_feeds(args.inputs, list(manifest.input_names))
    with Pipeline(args.outdir, pin=not args.no_pin, **engine) as pipe:
        outputs = pipe.run(feeds)
    with common.writing(out):
        save_npz_atomic(out, outputs)
    rows = [{"name": name, "dtype": str(value.dtype), "shape": list(value.shape)} for name, value in outputs.items()]
    if args.json:
        common.print_json({"outdir": str(args.outdir), "stages": len(manifest.stages), "output": str(out),
                           "outputs": rows})
        return 0
    from rich.table import Table

    table = Table(title=f"{args.outdir}: {len(manifest.stages)} stages")
    for col in ("output", "dtype", "shape"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["dtype"], "x".join(map(str, r["shape"])) or "scalar")
    console = common.console()
    console.print(table)
    console.print(f"wrote {out}")
    return 0
