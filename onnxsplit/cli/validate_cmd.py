"""`onnxsplit validate`: prove a split folder reproduces the original model."""

from __future__ import annotations

import argparse

from onnxsplit.cli import common
from onnxsplit.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="run the original and the chained stages and compare")
    p.add_argument("outdir", help="a folder written by `onnxsplit split`")
    p.add_argument("--model", default=None, help="the original model, if it moved since the split")
    common.add_inputs(p, shapes=False,
                      inputs_help=".npz of input arrays keyed by input name (default: random, at the split's shapes)")
    common.add_number(p, "--rtol", zero=True, default=None, metavar="R",
                      help="relative tolerance (default 1e-4; 1e-2 for fp16)")
    common.add_number(p, "--atol", zero=True, default=None, metavar="A",
                      help="absolute tolerance (default 1e-5; 1e-3 for fp16)")
    p.add_argument("--check-handoffs", action="store_true", help="also compare every hand-off tensor")
    common.add_number(p, "--steps", kind=int, zero=True, default=0, metavar="N",
                      help="decoders: compare a prefill and N greedy decode steps, each stage keeping its caches "
                           "(logits every step, tokens exactly; default 0: one run)")
    common.add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from onnxsplit.validation import validate

    if args.steps and args.check_handoffs:
        raise UsageError("--check-handoffs compares one run: it does not combine with --steps")
    report = validate(args.outdir, model_path=args.model, inputs_path=args.inputs, rtol=args.rtol, atol=args.atol,
                      check_handoffs=args.check_handoffs, steps=args.steps)
    if args.json:
        # The verdict is the document's "passed" (and the exit code): nothing may follow the JSON.
        common.print_json(report.as_dict())
        return 0 if report.passed else 1
    from rich.table import Table

    console = common.console()
    for title, rows in (("outputs", report.outputs), ("hand-offs", report.handoffs)):
        if not rows:
            continue
        table = Table(title=title)
        for col in ("tensor", "stage", "dtype", "max abs", "max rel", "rtol/atol", "atol needed", "rtol needed", "result"):
            table.add_column(col)
        for c in rows:
            table.add_row(c.name, str(c.stage), c.dtype, f"{c.max_abs:.3g}", f"{c.max_rel:.3g}", f"{c.rtol:g}/{c.atol:g}",
                          f"{c.needed_atol:.3g}", f"{c.needed_rtol:.3g}", "ok" if c.passed else "[red]FAIL[/]")
        console.print(table)
    if report.first_bad_stage is not None:
        console.print(f"first stage that diverges: {report.first_bad_stage}")
    for note in report.notes:
        console.print(note)
    print("PASSED" if report.passed else "FAILED")
    return 0 if report.passed else 1
