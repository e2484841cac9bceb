"""The two engines, called directly and behind the HTTP endpoint, against the original model, at 2 stages.

    python benchmarks/serve_bench.py [--seconds 3] [--warmup 1] [--clients 8] [--models transformer,light_resnet50]
                                     [--ways pipeline,ray,http,http-ray,batching,hop]
                                     [--max-batch 4,8] [--batch-timeout-us 2000] [--json OUT.json]

Every model is split for 2 devices (the solver's plan), then measured, one
way after the other, with ``--clients`` callers each sending one request,
waiting for its answer and sending the next (a closed loop):

- ``onnxruntime``: the original model in one session with as many threads as
  the split's stages together, called by one caller (its best case for
  single-sample latency), and again at batches of each ``--max-batch`` size
  (what dynamic batching can at best reach: the same batching, without the
  pipeline or HTTP); measured before and after the other ways and pooled,
  with a warning when the two differ by more than 20% (a busy machine);
- ``pipeline``: the in-process engine, ``Pipeline.submit`` called directly by
  the callers (threads);
- ``ray``: the same with the Ray engine (``engine="ray"``), its stage actors
  on the local Ray instance this script starts on 127.0.0.1;
- ``http``: ``onnxsplit serve`` (in-process engine) in its own process, the
  callers being tritonclient.http clients (binary tensor data), one per thread;
- ``http-ray``: the same with ``--engine ray``, the server joining this
  script's Ray instance (``RAY_ADDRESS``);
- ``batching``: ``http`` with each ``--max-batch`` and ``--batch-timeout-us``
  (only where every input's first dim is symbolic; light_resnet50's is fixed),
  compared with the original at the same batch.
  A batch runs through the stages as one request, so the stages overlap only
  when at least two batches are in flight: with 8 clients and 2 stages, a
  limit of 4 keeps both stages busy where a limit of 8 leaves one idle;
- ``hop``: what one stage boundary costs a request in each engine, in
  microseconds (ray_bench.py's two-node model run as 1 and as 2 stages).

A request is one sample. Throughput is samples per second; p50 and p99 are the
latency of one request, as its caller sees it. The clients run in this
process and share the machine's cores with the server (and, for Ray, with
Ray's own processes): on a small machine they take a real share of it, so the
HTTP rows are a floor.
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

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: 127.0.0.1 stays itself

import numpy as np
import onnx
from ray_bench import comma_choices, hop_costs, hop_table, start_local_ray
from rich.console import Console
from rich.table import Table

from onnxsplit.feeds import random_feeds
from onnxsplit.manifest import load_manifest
from onnxsplit.ortutil import make_session
from onnxsplit.runtime import Pipeline
from onnxsplit.splitting import split

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = {
    "transformer": (ROOT / "models" / "transformer.onnx", {"input_ids": (1, 128)}),
    "light_resnet50": (LIGHT / "light_resnet50.onnx", {}),
}
WAYS = ("pipeline", "ray", "http", "http-ray", "batching", "hop")


@dataclass(frozen=True)
class Row:
    model: str
    way: str
    callers: int
    requests: int
    samples_per_s: float
    p50_ms: float
    p99_ms: float
    versus: str  # the way of the original's row this one is compared with (the same batch)


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


def _row(model: str, way: str, callers: int, measured: tuple[int, int, float, list[float]], *, versus: str) -> Row:
    requests, samples, seconds, latencies = measured
    ms = sorted(x * 1e3 for x in latencies) or [float("nan")]
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return Row(model, way, callers, requests, samples / seconds, statistics.median(ms), p99, versus)


class Server:
    """`onnxsplit serve` in a child process on 127.0.0.1, any free port."""

    def __init__(self, outdir: Path, *flags: str, ray_address: str | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        if ray_address is not None:
            env["RAY_ADDRESS"] = ray_address
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


def _serve(rows: list[Row], name: str, way: str, outdir: Path, feeds: dict[str, np.ndarray], *flags: str,
           clients: int, seconds: float, warmup: float, versus: str, ray_address: str | None = None) -> None:
    server = Server(outdir, *flags, ray_address=ray_address)
    try:
        rows.append(_row(name, way, clients, closed_loop(_http_caller(server.url, server.model, feeds),
                                                         callers=clients, seconds=seconds, warmup=warmup),
                         versus=versus))
    finally:
        code = server.stop()
    if code != 0:
        raise RuntimeError(f"onnxsplit serve ({way}) exited with code {code} on SIGTERM")


def bench_model(name: str, work: Path, *, ways: tuple[str, ...], seconds: float, warmup: float, clients: int,
                max_batches: list[int], batch_timeout_us: float, ray_address: str | None,
                notes: list[str]) -> list[Row]:
    model_path, shapes = MODELS[name]
    outdir = work / name
    split(model_path, outdir, devices=2, input_shapes=shapes or None, force=True)
    manifest = load_manifest(outdir)
    feeds = random_feeds(manifest.feed_specs(), seed=0)
    threads = sum(s.threads for s in manifest.stages)
    batchable = all(isinstance(t.shape[0], str) for t in manifest.inputs if t.shape)
    batches = max_batches if batchable and "batching" in ways else []
    rows: list[Row] = []
    timing = {"seconds": seconds, "warmup": warmup}

    # The original always runs: every other row is read against it.
    session = make_session(model_path, threads=threads)
    single = f"onnxruntime ({threads} threads)"

    def original(batch: int) -> Callable[[], Callable[[], int]]:
        f = _batched(feeds, batch) if batch > 1 else feeds
        return lambda: (lambda: (session.run(None, f), batch)[1])

    # Measured before and after the other ways, and the two windows pooled, so that a machine whose speed
    # drifts (other tenants) skews the baseline less; a drift over 20% is reported.
    before = {b: closed_loop(original(b), callers=1, **timing) for b in (1, *batches)}

    for engine, way in (("inproc", "pipeline"), ("ray", "ray")):
        if way not in ways:
            continue
        with Pipeline(outdir, engine=engine) as pipe:
            def direct() -> Callable[[], int]:
                return lambda: (pipe.submit(feeds).result(), 1)[1]
            rows.append(_row(name, f"{engine}, direct", clients, closed_loop(direct, callers=clients, **timing),
                             versus=single))

    serve = {"clients": clients, **timing}
    if "http" in ways:
        _serve(rows, name, "inproc, http", outdir, feeds, versus=single, **serve)
    if "http-ray" in ways:
        _serve(rows, name, "ray, http", outdir, feeds, "--engine", "ray", versus=single, ray_address=ray_address,
               **serve)
    for max_batch in batches:
        _serve(rows, name, f"inproc, http+batching (max {max_batch}, {batch_timeout_us:g} us)", outdir, feeds,
               "--max-batch", str(max_batch), "--batch-timeout-us", f"{batch_timeout_us:g}",
               versus=f"onnxruntime, batch {max_batch}", **serve)
    for b, first in before.items():
        second = closed_loop(original(b), callers=1, **timing)
        way = single if b == 1 else f"onnxruntime, batch {b}"
        rate = sorted((first[1] / first[2], second[1] / second[2]))
        if rate[1] > 1.2 * rate[0]:
            notes.append(f"{name}, {way}: {rate[0]:.1f} and {rate[1]:.1f} samples/s before and after the other "
                         "ways (the machine's speed drifted; ratios to it are uncertain)")
        pooled = (first[0] + second[0], first[1] + second[1], first[2] + second[2], first[3] + second[3])
        rows.insert(list(before).index(b), _row(name, way, 1, pooled, versus=way))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers of the engines and the endpoint")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--ways", default=",".join(WAYS),
                        help=f"comma-separated, of: {', '.join(WAYS)} (the original always runs)")
    parser.add_argument("--max-batch", default="4,8",
                        help="comma-separated limits of dynamic batching (and the original's batches)")
    parser.add_argument("--batch-timeout-us", type=float, default=2000.0, help="dynamic batching's wait")
    parser.add_argument("--json", default=None, help="also write every row (and the hops) to this JSON file")
    args = parser.parse_args()
    models = list(comma_choices(parser, args.models, MODELS, "model"))
    ways = comma_choices(parser, args.ways, WAYS, "way")

    console = Console(width=max(Console().width, 160))
    console.print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                  f"{len(os.sched_getaffinity(0))} cores")
    began = time.perf_counter()
    ray = start_local_ray() if {"ray", "http-ray", "hop"} & set(ways) else None
    # The Ray server joins this instance rather than start one of its own (or join another on the machine).
    ray_address = ray.get_runtime_context().gcs_address if ray is not None else None
    rows: list[Row] = []
    hops: dict[str, float] = {}
    notes: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in models:
                rows += bench_model(name, Path(tmp), ways=ways, seconds=args.seconds, warmup=args.warmup,
                                    clients=args.clients,
                                    max_batches=[int(b) for b in args.max_batch.split(",") if b],
                                    batch_timeout_us=args.batch_timeout_us, ray_address=ray_address,
                                    notes=notes)
            if "hop" in ways:
                hops = hop_costs(Path(tmp))
    finally:
        if ray is not None:
            ray.shutdown()
    table = Table(title="serving, 2 stages (one sample per request)")
    for col in ("model", "way", "callers", "requests", "samples/s", "vs original", "vs inproc direct", "p50 ms",
                "p99 ms"):
        table.add_column(col, justify="left" if col in ("model", "way") else "right")
    for r in rows:
        base = next(b for b in rows if b.model == r.model and b.way == r.versus).samples_per_s
        inproc = next((b for b in rows if b.model == r.model and b.way == "inproc, direct"), None)
        vs_inproc = f"{r.samples_per_s / inproc.samples_per_s:.2f}x" \
            if inproc is not None and not r.way.startswith("onnxruntime") else ""
        versus = "" if r.versus == r.way else f"{r.samples_per_s / base:.2f}x" + \
            (f" (batch {r.versus.rsplit(' ', 1)[1]})" if "batch" in r.versus else "")
        table.add_row(r.model, r.way, str(r.callers), str(r.requests), f"{r.samples_per_s:.1f}", versus, vs_inproc,
                      f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}")
    console.print(table)
    if hops:
        console.print(hop_table(hops, label="engine"))
    for note in notes:
        console.print(f"warning: {note}")
    console.print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                  f"{time.perf_counter() - began:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [asdict(r) for r in rows], "hop_us": hops}, indent=2) + "\n")


if __name__ == "__main__":
    main()
