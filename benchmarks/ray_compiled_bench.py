"""Ray Compiled Graphs against the Ray engine and the in-process pipeline: throughput and the cost of one hop.

    python benchmarks/ray_compiled_bench.py [--seconds 3] [--warmup 1] [--in-flight 10]
                                            [--models transformer,light_resnet50] [--ways inproc,ray,compiled]

Every model is split for 2 devices (the analytic estimate's plan, as in
ray_bench.py), and its stages run three ways:

- ``inproc``: the in-process pipeline (threads, one per stage);
- ``ray``: the Ray engine (one actor per stage, hand-offs as object
  references through the object store, one remote call per stage per request);
- ``compiled``: the same stages as actors in a Ray Compiled Graph
  (``InputNode -> stage0.run.bind -> stage1.run.bind``, ``experimental_compile``):
  the actors loop on their inputs and pass tensors through shared-memory
  channels, so a request costs no task submission, no scheduling and no
  object-store round trip.

Each is kept full with ``--in-flight`` requests (the engines' own capacity at
2 stages is 10, as is a compiled graph's default limit of executions in
flight) by one caller that waits for the oldest request and sends the next.
The hop is measured as in ray_bench.py: a two-node model on a 16-float tensor
run one request at a time as 1 stage and as 2 stages; the difference of the
median latencies is what one stage boundary costs, in microseconds.

One local Ray instance on 127.0.0.1 is started here and used by both Ray ways.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: 127.0.0.1 stays itself
# A stage actor that misses teardown's cancellation is killed after this many seconds (Ray's default is 30).
os.environ.setdefault("RAY_CGRAPH_teardown_timeout", "5")

import numpy as np
from ray_bench import MODELS, comma_choices, hop_table, median_latency_us, start_local_ray, tiny_splits
from rich.console import Console
from rich.table import Table

from onnxsplit.devices import identical_devices
from onnxsplit.feeds import random_feeds
from onnxsplit.manifest import load_manifest
from onnxsplit.runtime import Pipeline
from onnxsplit.runtime.sessions import HostRunner, open_session
from onnxsplit.runtime.specs import StageSpec, stage_specs
from onnxsplit.splitting import split

WAYS = ("inproc", "ray", "compiled")


class ChainStage:
    """One stage's session in an actor of a compiled graph (made remote in :class:`CompiledChain`).

    A request travels as ``(env, outputs)``: ``env`` the tensors later stages
    still read (model inputs and hand-offs), ``outputs`` the model outputs made
    so far. A compiled graph passes one value from method to method, so the
    whole request rides along instead of one reference per tensor.
    """

    def __init__(self, spec: StageSpec) -> None:
        self.spec = replace(spec, on_device=frozenset())
        self.runner = HostRunner(open_session(self.spec, spin=False), self.spec)

    def ready(self) -> int:
        return os.getpid()

    def run(self, request: tuple[dict[str, Any], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        env, outputs = request
        values = self.runner({n: env[n] for n in self.spec.inputs})
        outputs = {**outputs, **{n: values[n] for n in self.spec.graph_outputs}}
        env = {n: v for n, v in (*env.items(), *values.items()) if n in self.spec.keep}
        return env, outputs


class CompiledChain:
    """A split folder's stages as actors chained in one compiled graph; ``execute`` returns a CompiledDAGRef."""

    def __init__(self, outdir: Path, *, in_flight: int) -> None:
        import ray
        from ray.dag import InputNode

        self.manifest = load_manifest(outdir)
        specs = stage_specs(self.manifest)
        remote = ray.remote(ChainStage)
        self.actors = [remote.options(num_cpus=s.threads).remote(s) for s in specs]
        ray.get([a.ready.remote() for a in self.actors])
        with InputNode() as request:
            node = request
            for actor in self.actors:
                node = actor.run.bind(node)
        self.graph = node.experimental_compile(_max_inflight_executions=in_flight)

    def execute(self, feeds: dict[str, np.ndarray]) -> Any:
        return self.graph.execute((feeds, {}))

    def result(self, ref: Any) -> dict[str, np.ndarray]:
        import ray

        _, outputs = ray.get(ref)
        # Arrays read from a channel may be views of its buffer: the caller gets arrays of its own.
        return {n: np.array(outputs[n]) for n in self.manifest.output_names}

    def close(self) -> None:
        import ray

        # kill_actors: on this Ray, a stage actor polling its input channel can miss the cancellation and
        # keep teardown() waiting for ever; the actors are of no further use anyway.
        self.graph.teardown(kill_actors=True)
        for actor in self.actors:
            ray.kill(actor)


@dataclass(frozen=True)
class Measured:
    samples_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int


def keep_full(submit: Callable[[], Any], wait: Callable[[Any], Any], *, in_flight: int, samples: int,
              seconds: float, warmup: float) -> Measured:
    """``in_flight`` requests kept in flight by one caller: wait for the oldest, send the next."""
    window: deque[tuple[float, Any]] = deque()
    latencies: list[float] = []
    start = time.perf_counter() + warmup
    stop = start + seconds
    while True:
        while len(window) < in_flight:
            window.append((time.perf_counter(), submit()))
        sent, handle = window.popleft()
        wait(handle)
        now = time.perf_counter()
        if sent >= start and now <= stop:
            latencies.append(now - sent)
        if now > stop:
            break
    for _, handle in window:
        wait(handle)
    ms = sorted(x * 1e3 for x in latencies) or [float("nan")]
    return Measured(len(latencies) * samples / seconds, statistics.median(ms),
                    ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], len(latencies))


def measure(outdir: Path, way: str, feeds: dict[str, np.ndarray], *, in_flight: int, seconds: float,
            warmup: float) -> tuple[Measured, bool]:
    """The way's throughput and latency, and whether its outputs matched the in-process pipeline's."""
    samples = next(iter(feeds.values())).shape[0] if feeds else 1
    with Pipeline(outdir) as reference:
        expected = reference.run(feeds)
    if way == "compiled":
        chain = CompiledChain(outdir, in_flight=in_flight)
        try:
            got = chain.result(chain.execute(feeds))
            result = keep_full(lambda: chain.execute(feeds), chain.result, in_flight=in_flight, samples=samples,
                               seconds=seconds, warmup=warmup)
        finally:
            chain.close()
    else:
        with Pipeline(outdir, engine=way) as pipe:
            got = pipe.run(feeds)
            result = keep_full(lambda: pipe.submit(feeds), lambda f: f.result(), in_flight=in_flight,
                               samples=samples, seconds=seconds, warmup=warmup)
    same = all(np.allclose(got[n], expected[n], rtol=1e-4, atol=1e-5) for n in expected)
    return result, same


def compiled_latency_us(outdir: Path, feeds: dict[str, np.ndarray], *, requests: int) -> float:
    chain = CompiledChain(outdir, in_flight=1)
    try:
        return median_latency_us(lambda: chain.result(chain.execute(feeds)), requests=requests)
    finally:
        chain.close()


def hop_costs(work: Path, ways: tuple[str, ...], *, requests: int = 300) -> dict[str, float]:
    """Microseconds one more stage boundary adds to a request, per way: 2 stages minus 1 stage."""
    one, two, feeds = tiny_splits(work)

    def latency(outdir: Path, way: str) -> float:
        if way == "compiled":
            return compiled_latency_us(outdir, feeds, requests=requests)
        with Pipeline(outdir, engine=way) as pipe:
            return median_latency_us(lambda: pipe.run(feeds), requests=requests)

    return {w: latency(two, w) - latency(one, w) for w in ways}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each measurement")
    ap.add_argument("--in-flight", type=int, default=10, help="requests kept in flight")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    ap.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of: {', '.join(WAYS)}")
    ap.add_argument("--no-hop", action="store_true", help="skip the hop measurement")
    args = ap.parse_args()
    models = list(comma_choices(ap, args.models, MODELS, "model"))
    ways = comma_choices(ap, args.ways, WAYS, "way")

    import ray

    start_local_ray()
    console = Console(width=max(Console().width, 160))
    console.print(f"ray {ray.__version__}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                  f"{len(os.sched_getaffinity(0))} cores")
    table = Table(title=f"2 stages, {args.in_flight} requests in flight")
    for col in ("model", "way", "requests", "samples/s", "vs inproc", "p50 ms", "p99 ms", "outputs match"):
        table.add_column(col, justify="left" if col in ("model", "way") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in models:
            path, shapes = MODELS[name]
            outdir = work / name
            split(path, outdir, devices=identical_devices(2), input_shapes=shapes or None, costs="estimate")
            feeds = random_feeds(load_manifest(outdir).feed_specs(), seed=0)
            got = {w: measure(outdir, w, feeds, in_flight=args.in_flight, seconds=args.seconds, warmup=args.warmup)
                   for w in ways}
            base = got["inproc"][0].samples_per_s if "inproc" in got else float("nan")
            for way, (m, same) in got.items():
                table.add_row(name, way, str(m.requests), f"{m.samples_per_s:.1f}", f"{m.samples_per_s / base:.2f}x",
                              f"{m.p50_ms:.2f}", f"{m.p99_ms:.2f}", "yes" if same else "NO")
        console.print(table)
        if not args.no_hop:
            console.print(hop_table(hop_costs(work, ways), label="way"))
    console.print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ray.shutdown()


if __name__ == "__main__":
    main()
