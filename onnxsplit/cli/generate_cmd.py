"""`onnxsplit generate`: greedy generation on a split decoder, each stage keeping its own caches."""

from __future__ import annotations

import argparse

from onnxsplit.cli import common
from onnxsplit.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate tokens after a prompt on a split decoder (greedy)")
    p.add_argument("outdir", help="a folder written by `onnxsplit split` from a decoder with a KV cache")
    p.add_argument("--prompt-ids", required=True, metavar="I,I,...", help="the prompt's token ids, e.g. 1,2,3")
    common.add_number(p, "--max-new-tokens", kind=int, zero=True, default=32, metavar="N",
                      help="tokens to generate (default 32)")
    common.add_max_seq_len(p)
    common.add_runtime(p)
    common.add_json(p)
    p.set_defaults(run=run)


def parse_ids(text: str) -> list[int]:
    """``1,2,3`` as token ids; UsageError naming the flag when it is not a list of whole numbers >= 0."""
    parts = [t.strip() for t in text.split(",")]
    if not parts or not all(t.isdigit() for t in parts):
        raise UsageError(f"--prompt-ids {text!r}: expected token ids separated by commas, e.g. 1,2,3")
    return [int(t) for t in parts]


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from onnxsplit.runtime import Pipeline

    prompt = np.array([parse_ids(args.prompt_ids)], dtype=np.int64)
    with Pipeline(args.outdir, pin=not args.no_pin) as pipe:
        start = time.perf_counter()
        result = pipe.generate(prompt, args.max_new_tokens, max_seq_len=args.max_seq_len)
        seconds = time.perf_counter() - start
        stages = len(pipe.specs)
    ids = [int(t) for t in result.tokens[0]]
    new = ids[prompt.shape[1]:]
    if args.json:
        common.print_json({"outdir": str(args.outdir), "stages": stages, "prompt_ids": ids[:prompt.shape[1]],
                           "new_ids": new, "ids": ids, "seconds": seconds})
        return 0
    print(",".join(map(str, new)))
    common.console().print(f"{len(new)} tokens after a prompt of {prompt.shape[1]} in {seconds:.3f} s "
                                      f"on {stages} stages")
    return 0
