"""Pipeline throughput against the original model, per model, at 2 stages.

    python benchmarks/pipeline_bench.py [--seconds 3] [--warmup 1] [--rounds 3] [--plans solver,balanced]
                                        [--models a,b] [--diagnose] [--json OUT.json]

Every model is split for 2 devices twice:

- ``solver``: the plan `onnxsplit split` picks from its analytic cost estimate;
- ``balanced``: a contiguous cut of the topological order placed by measuring
  both stages (a binary search on the cut until their measured times cross),
  made here by hand and passed with ``plan``. It separates the runtime's
  own overhead from the quality of the cost model's plan.

Each split then runs through `onnxsplit bench`: the pipeline kept full, the
original with 1 thread and the original with 2 threads, taking turns in
``--rounds`` rounds; "noise" is the widest spread between one way's rounds.
``--diagnose`` adds a table of where the time goes, without the runtime: the
original and each stage alone, both stages at once on their own cores, and two
copies of the original at once (the most any 2-core scheme could get).

The goal (on a quiet 2-core machine): the 2-stage pipeline reaches 1.8x the
original's 1-thread throughput and beats the original with 2 threads, on the
transformer and light_resnet50. The load average is printed before and after:
other processes on the machine skew every number here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

from onnxsplit.graphinfo import graph_info
from onnxsplit.manifest import load_manifest
from onnxsplit.model import load_model
from onnxsplit.feeds import random_feeds
from onnxsplit.ortutil import make_session
from onnxsplit.runtime.bench import BenchResult, bench
from onnxsplit.runtime.sessions import HostRunner, open_session
from onnxsplit.runtime.specs import stage_specs
from onnxsplit.splitting import split

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# Shapes big enough that a stage does real work (milliseconds, not microseconds).
MODELS = {
    "transformer": (ROOT / "models" / "transformer.onnx", {"input_ids": (8, 128)}),
    "branchy_cnn": (ROOT / "models" / "branchy_cnn.onnx", {"image": (16, 3, 32, 32)}),
    "control_flow": (ROOT / "models" / "control_flow.onnx", {"x": (256, 16)}),
    "fp16": (ROOT / "models" / "fp16.onnx", {"x": (256, 32)}),
    "local_function": (ROOT / "models" / "local_function.onnx", {"x": (256, 32)}),
    "external_data": (ROOT / "models" / "external_data.onnx", {"x": (256, 64)}),
    "light_resnet50": (LIGHT / "light_resnet50.onnx", {}),
}
GOAL_MODELS = {"transformer", "light_resnet50"}
GOAL_VS_1, GOAL_VS_2 = 1.8, 1.0


def _stage_runners(outdir: Path) -> tuple[list, list[dict], dict, Path]:
    """Every stage as a 1-thread callable with the inputs it gets at the split's shapes;
    also the model's feeds and the original's path."""
    manifest = load_manifest(outdir)
    feeds = random_feeds(manifest.feed_specs(), seed=0)
    env = dict(feeds)
    runners, stage_feeds = [], []
    for spec in stage_specs(manifest):
        runners.append(HostRunner(open_session(spec, spin=False), spec))
        stage_feeds.append({n: env[n] for n in spec.inputs})
        env.update(runners[-1](stage_feeds[-1]))  # also the warm-up run
    return runners, stage_feeds, feeds, manifest.source_path()


def _stage_times(outdir: Path, *, seconds: float = 0.3, rounds: int = 3) -> list[float]:
    """Run time (ms) of every stage alone: the median of ``rounds`` turns, taken in
    alternation so that a drifting machine does not favour one stage."""
    runners, stage_feeds, _, _ = _stage_runners(outdir)
    turns = [[_timed_loops([run], [f], seconds / rounds)[0] for run, f in zip(runners, stage_feeds)]
             for _ in range(rounds)]
    return [statistics.median(col) for col in zip(*turns)]


def balanced_plan(model_path: Path, shapes: dict[str, tuple[int, ...]], work: Path) -> tuple[Path, list[float]]:
    """A 2-stage plan whose stages take the same measured time, and those times.

    A prefix of the topological order is always a valid first stage; stage
    0's time grows with the prefix and stage 1's shrinks, so a binary search
    finds where they cross.
    """
    info = graph_info(load_model(model_path))
    names = [n for v, n in enumerate(info.names) if v not in info.const]
    plan_path = work / "balanced_plan.json"
    measured: dict[int, list[float]] = {}

    def probe(cut: int) -> list[float]:
        if cut not in measured:
            plan_path.write_text(json.dumps({n: 0 if i < cut else 1 for i, n in enumerate(names)}))
            out = work / "probe"
            split(model_path, out, devices=2, input_shapes=shapes, plan=plan_path, force=True)
            measured[cut] = _stage_times(out)
        return measured[cut]

    lo, hi = 1, len(names) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        t0, t1 = probe(mid)
        if t0 >= t1:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(lo - 1, 1), lo}, key=lambda c: max(probe(c)))
    plan_path.write_text(json.dumps({n: 0 if i < best else 1 for i, n in enumerate(names)}))
    return plan_path, measured[best]


def _timed_loops(calls: list, feeds: list[dict], seconds: float) -> list[float]:
    """Run every call in its own thread pinned to its own core, all at once for
    ``seconds``; the mean ms per call of each. Calls are 1-thread sessions, so
    the work runs on the pinned thread."""
    cores = sorted(os.sched_getaffinity(0))
    start = threading.Barrier(len(calls))
    out = [0.0] * len(calls)

    def loop(k: int) -> None:
        os.sched_setaffinity(0, {cores[k % len(cores)]})
        calls[k](feeds[k])
        start.wait()
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < seconds:
            calls[k](feeds[k])
            n += 1
        out[k] = (time.perf_counter() - t0) / n * 1e3

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def diagnose(outdir: Path, *, seconds: float, rounds: int = 3) -> dict[str, object]:
    """Where a 2-stage pipeline's time goes, without the pipeline: the original alone, each
    stage alone, both stages at once on their own cores, and two copies of the original at once.

    Medians of ``rounds`` interleaved turns (ms per call, 1 thread each).
    """
    runners, stage_feeds, feeds, path = _stage_runners(outdir)
    copies = [make_session(path, threads=1) for _ in range(2)]
    original = [lambda f, s=s: s.run(None, f) for s in copies]
    per = seconds / rounds
    turns: dict[str, list] = {k: [] for k in ("original_ms", "stages_alone_ms", "stages_together_ms",
                                              "two_originals_ms")}
    for _ in range(rounds):
        turns["original_ms"].append(_timed_loops(original[:1], [feeds], per)[0])
        turns["stages_alone_ms"].append([_timed_loops([r], [f], per)[0] for r, f in zip(runners, stage_feeds)])
        turns["stages_together_ms"].append(_timed_loops(runners, stage_feeds, per))
        turns["two_originals_ms"].append(_timed_loops(original, [feeds, feeds], per))
    return {k: (statistics.median(v) if k == "original_ms" else [statistics.median(c) for c in zip(*v)])
            for k, v in turns.items()}


def run_one(name: str, plan: str, work: Path, *, seconds: float, warmup: float,
            rounds: int) -> tuple[BenchResult, Path]:
    model_path, shapes = MODELS[name]
    outdir = work / f"{name}-{plan}"
    plan_path = None
    if plan == "balanced":
        plan_path, _ = balanced_plan(model_path, shapes, work)
    split(model_path, outdir, devices=2, input_shapes=shapes, plan=plan_path, force=True)
    return bench(outdir, seconds=seconds, warmup=warmup, rounds=rounds), outdir


def _noise(r: BenchResult) -> float:
    """The widest spread between rounds of any of the three ways of running (max/min - 1)."""
    return max(max(t.per_round) / min(t.per_round) - 1 for t in (r.pipeline, r.original_1, r.original_n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="turns each way of running takes (evens out drift)")
    parser.add_argument("--plans", default="solver,balanced", help="comma-separated: solver, balanced")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--diagnose", action="store_true",
                        help="also time the stages and the original alone and side by side (where the time goes)")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    plans = [p for p in args.plans.split(",") if p]
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(plans) - {"solver", "balanced"})
    if unknown:
        parser.error(f"unknown model or plan: {unknown[0]}")

    console = Console(width=160)  # the table is wide; keep it whole when piped to a file
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    console.print(f"{cores} cores; load average before: {os.getloadavg()[0]:.2f}")
    table = Table(title=f"2-stage pipeline vs original ({args.seconds:g} s per measurement)")
    for col in ("model", "inputs", "plan", "stage ms", "busy", "pipeline/s", "p50 ms", "orig 1T/s", "orig 2T/s",
                "vs 1T", "vs 2T", "noise", "goal"):
        table.add_column(col, justify="left" if col in ("model", "inputs", "plan", "goal") else "right")
    why = Table(title="where the time goes (ms per request, 1 thread each; 'together': both at once, own cores)")
    for col in ("model", "plan", "original", "stages alone", "sum/original", "stages together", "together/alone",
                "2 originals together", "2-copy speedup", "pipeline bound vs 1T"):
        why.add_column(col, justify="left" if col in ("model", "plan") else "right")
    results = []
    with tempfile.TemporaryDirectory(prefix="pipeline_bench.") as tmp:
        for name in models:
            for plan in plans:
                r, outdir = run_one(name, plan, Path(tmp), seconds=args.seconds, warmup=args.warmup,
                                   rounds=args.rounds)
                results.append({"model": name, "plan": plan, **r.as_dict()})
                if args.diagnose and len(r.stages) == 2:
                    d = diagnose(outdir, seconds=args.seconds, rounds=args.rounds)
                    results[-1]["diagnosis"] = d
                    alone, together = d["stages_alone_ms"], d["stages_together_ms"]
                    why.add_row(
                        name, plan, f"{d['original_ms']:.2f}", " / ".join(f"{t:.2f}" for t in alone),
                        f"{sum(alone) / d['original_ms']:.3f}", " / ".join(f"{t:.2f}" for t in together),
                        " / ".join(f"{t / a:.3f}" for t, a in zip(together, alone)),
                        " / ".join(f"{t:.2f}" for t in d["two_originals_ms"]),
                        f"{sum(d['original_ms'] / t for t in d['two_originals_ms']):.2f}x",
                        f"{d['original_ms'] / max(together):.2f}x")
                goal = ""
                if name in GOAL_MODELS:
                    goal = "met" if r.vs_original_1 >= GOAL_VS_1 and r.vs_original_n > GOAL_VS_2 else "NOT met"
                table.add_row(
                    name, " ".join("x".join(map(str, s)) for s in r.input_shapes.values()), plan,
                    " / ".join(f"{s.measured_ms:.2f}" for s in r.stages),
                    " / ".join(f"{s.busy:.0%}" for s in r.stages),
                    f"{r.pipeline.samples_per_s:.1f}", f"{r.pipeline.p50_ms:.2f}",
                    f"{r.original_1.samples_per_s:.1f}", f"{r.original_n.samples_per_s:.1f}",
                    f"{r.vs_original_1:.2f}x", f"{r.vs_original_n:.2f}x", f"{_noise(r):.0%}", goal)
    console.print(table)
    if args.diagnose:
        console.print(why)
    console.print(f"load average after: {os.getloadavg()[0]:.2f}")
    console.print(f"goal: pipeline >= {GOAL_VS_1}x original 1 thread and > original 2 threads "
                  f"on {', '.join(sorted(GOAL_MODELS))}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
