"""The in-process and the Ray engine side by side: throughput, latency, and the cost of one hop.

    python benchmarks/ray_bench.py [--seconds 3] [--warmup 1] [--rounds 3] [--models transformer,light_resnet50]
                                   [--engines inproc,ray] [--hop-only]

Every model is split for 2 devices (the solver's plan from the analytic cost
estimate) and measured by `onnxsplit bench`'s machinery once per engine: the
pipeline kept full, next to the original model with 1 thread, taking turns
in rounds. The Ray engine runs on a local Ray instance on 127.0.0.1 started
here once (its own processes share the machine's cores with the stages).

The hop is what one more stage boundary costs a request: a two-node model
on a 16-float tensor, run one request at a time as 1 stage and as 2 stages;
the difference of the median latencies is the hop, in microseconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: 127.0.0.1 stays itself

import numpy as np
import onnx
from onnx import TensorProto, helper
from rich.console import Console
from rich.table import Table

from onnxsplit.devices import identical_devices
from onnxsplit.runtime import Pipeline
from onnxsplit.runtime.bench import bench
from onnxsplit.splitting import split

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = {
    "transformer": (ROOT / "models" / "transformer.onnx", {"input_ids": (8, 128)}),
    "light_resnet50": (LIGHT / "light_resnet50.onnx", {}),
}
ENGINES = ("inproc", "ray")


def _tiny(path: Path) -> Path:
    """x -> Relu -> Neg -> y on 1x16 floats: two nodes that cost next to nothing."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["h"], name="relu"),
                               helper.make_node("Neg", ["h"], ["y"], name="neg")], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def median_latency_us(run: Callable[[], object], *, requests: int, warmup: int = 20) -> float:
    """The median time of ``run()`` called one at a time, in microseconds (after ``warmup`` calls)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def tiny_splits(work: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """The two-node model split as 1 stage and as 2 stages (one hop apart), and its feeds."""
    model = _tiny(work / "tiny.onnx")
    one, two = work / "tiny1", work / "tiny2"
    split(model, one, devices=1, costs="estimate", force=True)
    (work / "plan2.json").write_text(json.dumps({"relu": 0, "neg": 1}))
    split(model, two, devices=2, plan=work / "plan2.json", costs="estimate", force=True)
    return one, two, {"x": np.ones((1, 16), dtype=np.float32)}


def hop_costs(work: Path, *, engines: tuple[str, ...] = ENGINES, requests: int = 300) -> dict[str, float]:
    """Microseconds one more stage boundary adds to a request, per engine: 2 stages minus 1 stage."""
    one, two, feeds = tiny_splits(work)

    def latency(outdir: Path, engine: str) -> float:
        with Pipeline(outdir, engine=engine) as pipe:
            return median_latency_us(lambda: pipe.run(feeds), requests=requests)

    return {e: latency(two, e) - latency(one, e) for e in engines}


def hop_table(hops: dict[str, float], *, label: str) -> Table:
    """The table of one-hop costs (µs per hop, by engine or way) that the Ray and serving benchmarks print."""
    table = Table(title="one hop (stage to stage), median over sequential requests")
    table.add_column(label)
    table.add_column("µs per hop", justify="right")
    for name, us in hops.items():
        table.add_row(name, f"{us:.0f}")
    return table


def comma_choices(parser: argparse.ArgumentParser, text: str, known, what: str) -> tuple[str, ...]:
    """A comma-separated list of names, each one of ``known``; an unknown one is the parser's error."""
    given = tuple(x for x in text.split(",") if x)
    unknown = sorted(set(given) - set(known))
    if unknown:
        parser.error(f"unknown {what}(s): {', '.join(unknown)}")
    return given


def start_local_ray():
    """A local Ray instance on 127.0.0.1 for this process (the engines then use it rather than start their own)."""
    import ray

    # A new instance ("local"), never a cluster some other program left running on this machine;
    # logical CPUs: room for every stage's bundle even on a 2-core machine.
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             num_cpus=max(os.cpu_count() or 1, 4), logging_level=logging.WARNING)
    return ray


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--hop-only", action="store_true", help="measure only the cost of one hop")
    args = ap.parse_args()
    engines = tuple(args.engines.split(","))

    ray = start_local_ray() if "ray" in engines else None
    console = Console(width=140)
    console.print(f"load average before: {os.getloadavg()}")
    table = Table(title="2 stages: in-process engine vs Ray engine (each next to the original, 1 thread)")
    for col in ("model", "engine", "samples/s", "p50 ms", "p99 ms", "original samples/s", "vs original",
                "ray / inproc"):
        table.add_column(col, justify="left" if col in ("model", "engine") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in [] if args.hop_only else args.models.split(","):
            path, shapes = MODELS[name]
            outdir = work / name
            split(path, outdir, devices=identical_devices(2), input_shapes=shapes or None, costs="estimate")
            got = {}
            for engine in engines:
                got[engine] = bench(outdir, seconds=args.seconds, warmup=args.warmup, rounds=args.rounds,
                                    engine=engine)
            for engine in engines:
                r = got[engine]
                ratio = r.pipeline.samples_per_s / got[engines[0]].pipeline.samples_per_s
                table.add_row(name, engine, f"{r.pipeline.samples_per_s:.1f}", f"{r.pipeline.p50_ms:.2f}",
                              f"{r.pipeline.p99_ms:.2f}", f"{r.original_1.samples_per_s:.1f}",
                              f"{r.vs_original_1:.2f}x", f"{ratio:.2f}x")
        if not args.hop_only:
            console.print(table)
        hops = hop_costs(work, engines=engines)
    console.print(hop_table(hops, label="engine"))
    console.print(f"load average after: {os.getloadavg()}")
    if "ray" in engines:
        ray.shutdown()


if __name__ == "__main__":
    main()
