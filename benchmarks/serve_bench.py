"""The HTTP endpoint against the pipeline called directly and the original model, at 2 stages.

    python benchmarks/serve_bench.py [--seconds 3] [--warmup 1] [--clients 8] [--models transformer,light_resnet50]
                                     [--max-batch 4,8] [--batch-timeout-us 2000] [--json OUT.json]

Every model is split for 2 devices (the solver's plan), then measured, one
way after the other, with ``--clients`` callers each sending one request,
waiting for its answer and sending the next (a closed loop):

- ``onnxruntime``: the original model in one session with as many threads as
  the split's stages together, called by one caller (its best case for
  single-sample latency), and again at batches of each ``--max-batch`` size
  (what dynamic batching can at best reach: the same batching, without the
  pipeline or HTTP);
- ``pipeline``: ``Pipeline.submit`` called directly by the callers (threads);
- ``http``: ``onnxsplit serve`` in its own process, the callers being
  tritonclient.http clients (binary tensor data), one per thread;
- ``http+batching``: the same with each ``--max-batch`` and ``--batch-timeout-us``
  (only where every input's first dim is symbolic; light_resnet50's is fixed).
  A batch runs through the stages as one request, so the stages overlap only
  when at least two batches are in flight: with 8 clients and 2 stages, a
  limit of 4 keeps both stages busy where a limit of 8 leaves one idle.

A request is one sample. Throughput is samples per second; p50 and p99 are the
latency of one request, as its caller sees it. The clients run in this
process and share the machine's cores with the server: on a small machine
they take a real share of it, so the HTTP rows are a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from onnxsplit.manifest import load_manifest
from onnxsplit.ortutil import make_session, random_feeds
from onnxsplit.runtime import Pipeline
from onnxsplit.splitting import split

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = {
    "transformer": (ROOT / "models" / "transformer.onnx", {"input_ids": (1, 128)}),
    "light_resnet50": (LIGHT / "light_resnet50.onnx", {}),
}


@dataclass(frozen=True)
class Row:
    model: str
    way: str
    callers: int
    requests: int
    samples_per_s: float
    p50_ms: float
    p99_ms: float


def closed_loop(make_caller: Callable[[], Callable[[], int]], *, callers: int, seconds: float,
                warmup: float) -> tuple[int, int, float, list[float]]:
    """``callers`` threads each calling its own caller in a loop; (requests, samples, seconds, latencies in s)
    of the measured window. A caller returns the samples its call carried."""
    ready = threading.Barrier(callers + 1)
    go = threading.Event()
    window = [0.0, 0.0]  # measured from, until (set once every caller is ready)
    latencies: list[list[float]] = [[] for _ in range(callers)]
    samples = [0] * callers
    errors: list[BaseException] = []

    def loop(k: int) -> None:
        try:
            call = make_caller()
            call()  # the first call (connection, warm caches) is never measured
        except BaseException as exc:
            errors.append(exc)
            ready.wait()
            return
        ready.wait()
        go.wait()
        start, stop = window
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                return
            try:
                n = call()
            except BaseException as exc:
                errors.append(exc)
                return
            t1 = time.perf_counter()
            if t0 >= start and t1 <= stop:
                latencies[k].append(t1 - t0)
                samples[k] += n

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(callers)]
    for t in threads:
        t.start()
    ready.wait()
    window[0] = time.perf_counter() + warmup
    window[1] = window[0] + seconds
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    flat = [x for part in latencies for x in part]
    return len(flat), sum(samples), seconds, flat


def _row(model: str, way: str, callers: int, measured: tuple[int, int, float, list[float]]) -> Row:
    requests, samples, seconds, latencies = measured
    ms = sorted(x * 1e3 for x in latencies) or [float("nan")]
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return Row(model, way, callers, requests, samples / seconds, statistics.median(ms), p99)


class Server:
    """`onnxsplit serve` in a child process on 127.0.0.1, any free port."""

    def __init__(self, outdir: Path, *flags: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen([sys.executable, "-m", "onnxsplit", "serve", str(outdir), "--port", "0",
                                         *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.url = self.model = ""
        while True:
            line = lines.get(timeout=120)
            if line is None:
                raise RuntimeError(f"onnxsplit serve ended with code {self.process.wait()}")
            if "at http://" in line:
                self.url = line.split("at http://", 1)[1].split("/", 1)[0]
                self.model = line.split("/v2/models/", 1)[1].split(";", 1)[0]
            if line.startswith("onnxsplit: ready"):
                return

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


def _http_caller(url: str, model: str, feeds: dict[str, np.ndarray]) -> Callable[[], Callable[[], int]]:
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    samples = next(iter(feeds.values())).shape[0]

    def make() -> Callable[[], int]:
        client = httpclient.InferenceServerClient(url=url, network_timeout=120)
        inputs = []
        for name, array in feeds.items():
            item = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array)
            inputs.append(item)

        def call() -> int:
            client.infer(model, inputs)
            return samples
        return call
    return make


def _batched(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    return {n: np.concatenate([a] * batch, axis=0) for n, a in feeds.items()}


def bench_model(name: str, work: Path, *, seconds: float, warmup: float, clients: int, max_batches: list[int],
                batch_timeout_us: float) -> list[Row]:
    model_path, shapes = MODELS[name]
    outdir = work / name
    split(model_path, outdir, devices=2, input_shapes=shapes or None, force=True)
    manifest = load_manifest(outdir)
    feeds = random_feeds(manifest.feed_specs(), seed=0)
    threads = sum(s.threads for s in manifest.stages)
    batchable = all(isinstance(t.shape[0], str) for t in manifest.inputs if t.shape)
    rows: list[Row] = []

    session = make_session(model_path, threads=threads)

    def original(batch: int) -> Callable[[], Callable[[], int]]:
        f = _batched(feeds, batch) if batch > 1 else feeds
        return lambda: (lambda: (session.run(None, f), batch)[1])

    rows.append(_row(name, f"onnxruntime ({threads} threads)", 1,
                     closed_loop(original(1), callers=1, seconds=seconds, warmup=warmup)))
    for max_batch in max_batches if batchable else []:
        rows.append(_row(name, f"onnxruntime, batch {max_batch}", 1,
                         closed_loop(original(max_batch), callers=1, seconds=seconds, warmup=warmup)))

    with Pipeline(outdir) as pipe:
        def direct() -> Callable[[], int]:
            return lambda: (pipe.submit(feeds).result(), 1)[1]
        rows.append(_row(name, "pipeline, direct", clients,
                         closed_loop(direct, callers=clients, seconds=seconds, warmup=warmup)))

    server = Server(outdir)
    try:
        rows.append(_row(name, "http", clients, closed_loop(_http_caller(server.url, server.model, feeds),
                                                            callers=clients, seconds=seconds, warmup=warmup)))
    finally:
        server.stop()
    for max_batch in max_batches if batchable else []:
        server = Server(outdir, "--max-batch", str(max_batch), "--batch-timeout-us", f"{batch_timeout_us:g}")
        try:
            rows.append(_row(name, f"http+batching (max {max_batch}, {batch_timeout_us:g} us)", clients,
                             closed_loop(_http_caller(server.url, server.model, feeds), callers=clients,
                                         seconds=seconds, warmup=warmup)))
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers of the pipeline and the endpoint")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--max-batch", default="4,8",
                        help="comma-separated limits of dynamic batching (and the original's batches)")
    parser.add_argument("--batch-timeout-us", type=float, default=2000.0, help="dynamic batching's wait")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")

    console = Console(width=max(Console().width, 120))
    console.print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                  f"{len(os.sched_getaffinity(0))} cores")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            rows += bench_model(name, Path(tmp), seconds=args.seconds, warmup=args.warmup, clients=args.clients,
                                max_batches=[int(b) for b in args.max_batch.split(",") if b],
                                batch_timeout_us=args.batch_timeout_us)
    table = Table(title="serving, 2 stages (one sample per request)")
    for col in ("model", "way", "callers", "requests", "samples/s", "vs onnxruntime", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("model", "way") else "right")
    for r in rows:
        base = next(b for b in rows if b.model == r.model).samples_per_s
        table.add_row(r.model, r.way, str(r.callers), str(r.requests), f"{r.samples_per_s:.1f}",
                      f"{r.samples_per_s / base:.2f}x", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}")
    console.print(table)
    console.print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
