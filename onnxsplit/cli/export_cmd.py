"""`onnxsplit export`: write a split folder in another system's format (`export triton`: a Triton model repository)."""

from __future__ import annotations

import argparse

from onnxsplit.cli import common
from onnxsplit.choices import TRITON_BACKENDS, TRITON_MAX_BATCH


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a split in another system's format (a Triton model repository)")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True, parser_class=common.Parser,
                               help="what to write: triton")
    t = formats.add_parser("triton", help="write a Triton Inference Server model repository: one model per stage "
                                          "and an ensemble that chains them")
    t.add_argument("outdir", help="a folder written by `onnxsplit split`")
    t.add_argument("--name", default=None, metavar="NAME",
                   help="the ensemble's model name; stage K is NAME_stage_K (default: the source model's file stem)")
    t.add_argument("--backend", default=TRITON_BACKENDS[0], choices=TRITON_BACKENDS,
                   help="Triton backend that runs each stage: onnxruntime, or python (onnxruntime inside Triton's "
                        "Python backend, for servers without the onnxruntime backend) (default onnxruntime)")
    common.add_number(t, "--max-batch", kind=int, zero=True, default=TRITON_MAX_BATCH, metavar="N",
                      help="max_batch_size when all inputs, outputs and hand-offs share a symbolic batch dim; "
                           f"0 turns batching off (default {TRITON_MAX_BATCH})")
    common.add_output(t, what="the model repository folder to write")
    common.add_json(t)
    t.set_defaults(run=run_triton)


def run_triton(args: argparse.Namespace) -> int:
    from onnxsplit.errors import OutputExists, UsageError
    from onnxsplit.export.triton import export_triton

    try:
        with common.status("writing the model repository"):
            repo = export_triton(args.outdir, args.output, name=args.name, backend=args.backend,
                                 max_batch=args.max_batch, force=args.force)
    except OutputExists:
        raise UsageError(f"{args.output} already exists (use --force to replace it)") from None
    if args.json:
        common.print_json({"repository": str(repo.path), "ensemble": repo.name, "stage_models": repo.stage_models,
                           "backend": repo.backend, "max_batch_size": repo.max_batch_size})
        return 0
    batching = f"max_batch_size {repo.max_batch_size}" if repo.max_batch_size else "no batch dim shared: max_batch_size 0"
    print(f"wrote {repo.path}: ensemble {repo.name} over {len(repo.stage_models)} stage models "
          f"({repo.backend} backend, {batching})")
    return 0
