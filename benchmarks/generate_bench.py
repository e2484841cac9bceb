"""Pipelined generation on a 2-stage split decoder against the unsplit decoder.

    python benchmarks/generate_bench.py [--model decoder.onnx] [--layers 8 --hidden 256 --heads 8 --vocab 4096]
                                        [--prompt 16] [--new 64] [--concurrency 1,2,4,8] [--rounds 2]
                                        [--costs measure|estimate] [--json OUT.json]

The decoder is ``--model``, or one made by ``tools/make_models.py``'s
``make_decoder`` at the given size (the bundled models/decoder.onnx is too
small for a stage to do real work). It is split for 2 devices, each stage
keeping the caches of its own layers.

For every count N of concurrent sequences, N prompts of ``--prompt`` tokens
each get ``--new`` greedy tokens:

- ``pipeline``: the 2-stage split, the N sequences stepped through it at
  once (:meth:`Sequence.step`, as ``generate_many`` does): while stage 1
  runs one sequence's step, stage 0 runs another's;
- ``original 1t`` / ``original 2t``: the unsplit model on 1 and 2 threads,
  decoding the same N sequences one step at a time, each in turn.

tokens/s counts every generated token of every sequence over the wall time;
the per-token latency is the time between two successive tokens of one
sequence, as its caller sees them (p50 and p99 over every decode step of
every sequence). ``--rounds`` repeats each way and keeps its best round.
A second table gives the bytes stage 0 sends stage 1 for one decode step
(cache length prompt + new/2), with the caches kept on their stages and
with them passed as ordinary inputs and outputs (``Pipeline.run``).

The load average is printed before and after: other processes on the
machine skew every number here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from onnxsplit.decoding import OriginalDecoder, empty_state, greedy, step_feeds
from onnxsplit.runtime import Pipeline
from onnxsplit.splitting import split

ROOT = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def run_pipeline(pipe: Pipeline, prompts: list[np.ndarray], new: int) -> tuple[float, list[float]]:
    """(wall seconds, inter-token gaps) of ``new`` tokens for every prompt, all sequences in flight at once."""
    gaps: list[float] = []
    start = time.perf_counter()
    seqs = [pipe.start_sequence(p) for p in prompts]
    last = {s.id: time.perf_counter() for s in seqs}
    made = {s.id: 0 for s in seqs}
    active = {s.logits: s for s in seqs}
    while active:
        done, _ = wait(list(active), return_when=FIRST_COMPLETED)
        for future in done:
            seq = active.pop(future)
            token = greedy(future.result())
            now = time.perf_counter()
            if made[seq.id]:
                gaps.append(now - last[seq.id])
            last[seq.id] = now
            made[seq.id] += 1
            if made[seq.id] < new:
                active[seq.step(token)] = seq
            else:
                seq.end(wait=False)
    wall = time.perf_counter() - start
    return wall, gaps


def run_original(decoder: OriginalDecoder, prompts: list[np.ndarray], new: int) -> tuple[float, list[float]]:
    """The same work on the unsplit model: every sequence takes one step in turn."""
    sig = decoder.signature
    gaps: list[float] = []
    start = time.perf_counter()
    states = [empty_state(sig, batch=p.shape[0]) for p in prompts]
    fed = list(prompts)
    past = [0] * len(prompts)
    last = [0.0] * len(prompts)
    for step in range(new):
        for i in range(len(prompts)):
            logits, states[i] = decoder.step(fed[i], states[i], past_len=past[i])
            past[i] += fed[i].shape[1]
            fed[i] = greedy(logits)
            now = time.perf_counter()
            if step:
                gaps.append(now - last[i])
            last[i] = now
    return time.perf_counter() - start, gaps


def step_bytes(pipe: Pipeline, prompt_len: int, cache_len: int) -> tuple[int, int]:
    """Bytes stage 0 sends on for one decode step at ``cache_len``: caches kept on the stages, and passed along."""
    sig = pipe.decoder
    pipe.count_bytes()
    seq = pipe.start_sequence(np.ones((1, cache_len), dtype=np.int64))
    seq.logits.result()
    before = pipe.stats()[0].sent_bytes
    seq.step(np.ones((1, 1), dtype=np.int64)).result()
    kept = pipe.stats()[0].sent_bytes - before
    seq.end()
    caches = {name: np.zeros(value.shape[:2] + (cache_len,) + value.shape[3:], dtype=value.dtype)
              for name, value in empty_state(sig, batch=1).items()}
    feeds = {**step_feeds(sig, np.ones((1, 1), dtype=np.int64), past_len=cache_len), **caches}
    before = pipe.stats()[0].sent_bytes
    pipe.run(feeds)
    passed = pipe.stats()[0].sent_bytes - before
    pipe.count_bytes(False)
    return kept, passed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a decoder .onnx (default: one made at the size below)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens per sequence")
    ap.add_argument("--new", type=int, default=64, help="tokens generated per sequence")
    ap.add_argument("--concurrency", default="1,2,4,8", help="counts of concurrent sequences")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each way; the best is kept")
    ap.add_argument("--costs", default="measure", choices=("measure", "estimate"))
    ap.add_argument("--json", default=None, metavar="OUT.json")
    args = ap.parse_args()
    console = Console(width=140)
    console.print(f"load average before: {os.getloadavg()}")
    counts = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model is None:
            sys.path.insert(0, str(ROOT / "tools"))
            from make_models import make_decoder

            model_path = work / "decoder.onnx"
            onnx.save(make_decoder(layers=args.layers, hidden=args.hidden, heads=args.heads, vocab=args.vocab,
                                   max_positions=max(128, args.prompt + args.new)), str(model_path))
            what = f"decoder {args.layers} layers, hidden {args.hidden}, {args.heads} heads, vocab {args.vocab}"
        else:
            model_path = Path(args.model)
            what = str(model_path)
        original_1 = OriginalDecoder(model_path, threads=1)
        sig = original_1.signature
        cache_len = args.prompt + args.new // 2
        shapes = {sig.ids: (1, 1), sig.positions: (1, 1), sig.mask: (1, cache_len + 1),
                  **{s.name: (1, *s.shape[1:sig.seq_axis], cache_len, *s.shape[sig.seq_axis + 1:])
                     for s in sig.state_specs}}
        shapes = {k: v for k, v in shapes.items() if k is not None}
        result = split(model_path, work / "out", devices=2, costs=args.costs, input_shapes=shapes)
        stages = {p.stage for p in result.manifest.state}
        console.print(f"{what}; split in 2 stages ({result.manifest.stages[0].nodes} + "
                      f"{result.manifest.stages[1].nodes} nodes; caches on stages {sorted(stages)}); "
                      f"prompt {args.prompt}, {args.new} new tokens per sequence")
        original_2 = OriginalDecoder(model_path, threads=2)
        rng = np.random.default_rng(0)
        rows = []
        with Pipeline(work / "out") as pipe:
            kept, passed = step_bytes(pipe, args.prompt, cache_len)
            for n in counts:
                prompts = [rng.integers(0, args.vocab if args.model is None else 2, size=(1, args.prompt))
                           for _ in range(n)]
                ways = {"pipeline (2 stages)": lambda: run_pipeline(pipe, prompts, args.new),
                        "original 1t": lambda: run_original(original_1, prompts, args.new),
                        "original 2t": lambda: run_original(original_2, prompts, args.new)}
                best: dict[str, tuple[float, list[float]]] = {}
                for _ in range(args.rounds):
                    for name, way in ways.items():  # the ways take turns, so a burst of load hits them all
                        wall, gaps = way()
                        if name not in best or wall < best[name][0]:
                            best[name] = (wall, gaps)
                for name, (wall, gaps) in best.items():
                    rows.append({"sequences": n, "way": name, "tokens_per_s": n * args.new / wall,
                                 "p50_ms": 1e3 * _percentile(gaps, 50), "p99_ms": 1e3 * _percentile(gaps, 99),
                                 "wall_s": wall})
            assert all(s.sequences == 0 for s in pipe.stats()), "caches left on a stage"

    table = Table(title="greedy generation: tokens/s and per-token latency (time between a sequence's tokens)")
    for col in ("sequences", "way", "tokens/s", "vs original 1t", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right" if col != "way" else "left")
    base = {r["sequences"]: r["tokens_per_s"] for r in rows if r["way"] == "original 1t"}
    for r in rows:
        table.add_row(str(r["sequences"]), r["way"], f"{r['tokens_per_s']:.0f}",
                      f"{r['tokens_per_s'] / base[r['sequences']]:.2f}x", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}")
    console.print(table)
    traffic = Table(title=f"bytes stage 0 sends stage 1 per decode step (batch 1, cache length {cache_len})")
    for col in ("caches", "bytes per step"):
        traffic.add_column(col)
    traffic.add_row("kept on their stage", f"{kept:,}")
    traffic.add_row("passed as inputs and outputs", f"{passed:,}")
    console.print(traffic)
    console.print(f"load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "step_bytes": {"kept": kept, "passed": passed,
                                                                             "cache_length": cache_len}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
