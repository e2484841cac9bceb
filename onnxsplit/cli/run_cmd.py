"""`onnxsplit run`: run one batch of inputs through a split folder's pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from onnxsplit.cli.common import console as wide_console
from onnxsplit.errors import UsageError
from onnxsplit.fileio import save_npz_atomic


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run inputs through the stages as a pipeline and save the outputs")
    p.add_argument("outdir", help="a folder written by `onnxsplit split`")
    p.add_argument("--inputs", required=True, help=".npz of input arrays keyed by input name")
    p.add_argument("-o", "--output", required=True, help=".npz to write the outputs to, keyed by output name")
    p.add_argument("--no-pin", action="store_true", help="do not pin stage workers to cores")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from onnxsplit.manifest import load_manifest
    from onnxsplit.ortutil import load_feeds
    from onnxsplit.runtime import Pipeline

    manifest = load_manifest(args.outdir)
    feeds = load_feeds(args.inputs, list(manifest.input_names))
    with Pipeline(args.outdir, pin=not args.no_pin) as pipe:
        outputs = pipe.run(feeds)
    out = Path(args.output)
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: folder {out.parent} does not exist")
    save_npz_atomic(out, outputs)
    table = Table(title=f"{args.outdir}: {len(manifest.stages)} stages")
    for col in ("output", "dtype", "shape"):
        table.add_column(col)
    for name, value in outputs.items():
        table.add_row(name, str(value.dtype), "x".join(map(str, value.shape)) or "scalar")
    console = wide_console()
    console.print(table)
    console.print(f"wrote {out}")
    return 0
