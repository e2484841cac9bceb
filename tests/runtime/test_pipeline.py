"""The pipelined runtime: routing, results equal to the original, faults, closing, concurrency.

Every test runs under a wall-clock guard: a deadlock fails the test (with
every thread's stack on stderr) instead of hanging the suite.
"""

from __future__ import annotations

import faulthandler
import functools
import json
import shutil
import sys
import threading
import time
from concurrent.futures import CancelledError
from dataclasses import replace

import numpy as np
import pytest

from conftest import MODELS
from graphs import chain, f32, save
from onnxsplit.cli.main import main
from onnxsplit.errors import OnnxSplitError, UsageError
from onnxsplit.feeds import random_feeds
from onnxsplit.ortutil import make_session
from onnxsplit.runtime import FeedError, Pipeline, StageError
from onnxsplit.manifest import Manifest, load_manifest
from onnxsplit.runtime.sessions import BindingRunner, HostRunner, open_session
from onnxsplit.runtime.specs import assign_cores, stage_specs, usable_cores
from onnxsplit.splitting import split

RTOL, ATOL = 1e-4, 1e-5


def timeout(seconds: float):
    """Fail the test if it does not return within ``seconds`` (no pytest-timeout here)."""

    def wrap(test):
        @functools.wraps(test)
        def guarded(*args, **kwargs):
            box: dict[str, object] = {}

            def body():
                try:
                    box["value"] = test(*args, **kwargs)
                except BaseException as exc:  # re-raised in the test's own thread below
                    box["error"] = exc

            worker = threading.Thread(target=body, name=f"test-{test.__name__}", daemon=True)
            worker.start()
            worker.join(seconds)
            if worker.is_alive():
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                pytest.fail(f"{test.__name__} did not finish within {seconds} s (deadlock?)")
            if "error" in box:
                raise box["error"]  # type: ignore[misc]
            return box.get("value")

        return guarded

    return wrap


def _close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


class Original:
    """The unsplit model, run directly by onnxruntime: the reference for every result."""

    def __init__(self, path):
        self.session = make_session(path)
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds):
        return dict(zip(self.names, self.session.run(self.names, feeds)))


def _ids(seed: int, batch: int = 4, seq: int = 32) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, 4, size=(batch, seq)).astype(np.int64)}


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    out = tmp_path_factory.mktemp("rt") / "transformer2"
    split(MODELS / "transformer.onnx", out, devices=2, input_shapes={"input_ids": (4, 32)})
    return out


@pytest.fixture(scope="module")
def chain3(tmp_path_factory):
    """Three stages where the graph input goes to stages 0 and 2, and r0 (a model output
    made by stage 0) goes to stages 1 and 2."""
    work = tmp_path_factory.mktemp("chain")
    m = chain(6)
    m.graph.output.append(f32("r0", ["N", 8]))
    path = save(m, work / "chain.onnx")
    stage1 = {"mm1", "relu1", "mm2", "relu2", "mm3", "relu3"}
    plan = {n.name: (0 if n.name in {"mm0", "scale0", "relu0"} else 1 if n.name in stage1 else 2)
            for n in m.graph.node if n.op_type != "Constant"}
    (work / "plan.json").write_text(json.dumps(plan))
    split(path, work / "out", devices=3, plan=work / "plan.json", input_shapes={"x": (2, 8)})
    return work / "out", path


@timeout(60)
def test_routing_follows_the_manifest(chain3):
    outdir, _ = chain3
    specs = stage_specs(load_manifest(outdir))
    assert [s.inputs for s in specs][0] == ("x",) and "x" in specs[2].inputs
    assert "r0" in specs[1].inputs and "r0" in specs[2].inputs
    assert specs[0].graph_outputs == ("r0",) and specs[2].graph_outputs == ("y",)
    # What a request carries after each stage: exactly what later stages read.
    assert specs[0].keep == {*specs[1].inputs, *specs[2].inputs} >= {"x", "r0"}
    assert specs[1].keep == set(specs[2].inputs)
    assert specs[2].keep == frozenset()
    assert all(not s.on_device for s in specs)


@timeout(60)
def test_requests_drop_what_no_later_stage_reads(chain3, monkeypatch):
    from onnxsplit.runtime import pipeline

    outdir, _ = chain3
    seen: dict[int, set[str]] = {}
    handle = pipeline._Worker._handle

    def spy(worker, req):
        seen[worker.spec.index] = set(req.env)
        return handle(worker, req)

    monkeypatch.setattr(pipeline._Worker, "_handle", spy)
    with Pipeline(outdir) as pipe:
        pipe.run(random_feeds([("x", "float32", (2, 8))]))
        specs = pipe.specs
    graph_inputs = set(pipe.input_names)
    for k in range(len(specs)):
        available = graph_inputs | {n for s in specs[:k] for n in s.outputs}
        still_read = {n for s in specs[k:] for n in s.inputs}
        assert seen[k] == available & still_read, k
    assert seen[2] == {"x", "r0", "r3"}


@timeout(60)
def test_results_equal_the_original(chain3, transformer):
    outdir, path = chain3
    original = Original(path)
    with Pipeline(outdir) as pipe:
        for seed in range(5):
            feeds = random_feeds([("x", "float32", (3, 8))], seed=seed)
            _close(pipe.run(feeds), original(feeds))
    original = Original(MODELS / "transformer.onnx")
    with Pipeline(transformer) as pipe:
        for seed in range(5):
            feeds = _ids(seed, batch=1 + seed)  # the batch dim is symbolic: any size flows through
            _close(pipe.run(feeds), original(feeds))


@timeout(60)
def test_a_failing_request_fails_alone(transformer):
    original = Original(MODELS / "transformer.onnx")
    good = [_ids(seed) for seed in range(6)]
    bad_dtype = {"input_ids": np.zeros((4, 32), dtype=np.float32)}
    bad_rank = {"input_ids": np.zeros((4, 32, 2), dtype=np.int64)}
    with Pipeline(transformer, queue_size=2) as pipe:
        futures = [pipe.submit(good[0]), pipe.submit(bad_dtype), pipe.submit(good[1]), pipe.submit(bad_rank)]
        futures += [pipe.submit(f) for f in good[2:]]
        for bad in (futures[1], futures[3]):
            with pytest.raises(StageError, match=r"stage 0 \(stage_0.onnx, CPUExecutionProvider\) failed") as info:
                bad.result(timeout=30)
            assert info.value.stage == 0 and info.value.__cause__ is not None
            assert "\n" not in str(info.value)
        for future, feeds in zip([futures[0], futures[2], *futures[4:]], good):
            _close(future.result(timeout=30), original(feeds))
        assert pipe.stats()[1].runs == len(good)  # the bad ones never reached stage 1


@timeout(60)
def test_missing_or_unknown_input(transformer):
    with Pipeline(transformer) as pipe:
        with pytest.raises(FeedError, match="missing input 'input_ids'"):
            pipe.submit({})
        with pytest.raises(FeedError, match="'bogus' is not an input"):
            pipe.submit({**_ids(0), "bogus": np.zeros(1)})
        with pytest.raises(FeedError, match="must map input names"):
            pipe.submit([_ids(0)["input_ids"]])
        assert issubclass(FeedError, OnnxSplitError)
        assert pipe.run(_ids(1))["last_hidden"].shape == (4, 32, 64)  # still serving


@timeout(60)
def test_close_drains_requests_in_flight(transformer):
    original = Original(MODELS / "transformer.onnx")
    feeds = [_ids(seed) for seed in range(20)]
    pipe = Pipeline(transformer, queue_size=2)
    futures = []
    submitter = threading.Thread(target=lambda: futures.extend(pipe.submit(f) for f in feeds))
    submitter.start()
    submitter.join()
    pipe.close()
    assert all(f.done() and not f.cancelled() for f in futures)
    for future, f in zip(futures, feeds):
        _close(future.result(), original(f))
    with pytest.raises(RuntimeError, match="closed"):
        pipe.submit(feeds[0])
    pipe.close()  # closing twice is harmless


@timeout(60)
def test_close_cancel_stops_early(transformer):
    original = Original(MODELS / "transformer.onnx")
    feeds = [_ids(seed, batch=8, seq=128) for seed in range(4)]  # several ms per stage
    pipe = Pipeline(transformer, queue_size=4)
    futures = [pipe.submit(feeds[i % 4]) for i in range(pipe.capacity)]
    pipe.close(cancel=True)
    assert all(f.done() for f in futures)
    cancelled = [f for f in futures if f.cancelled()]
    assert cancelled, "nothing was cancelled"
    for f in cancelled:
        with pytest.raises(CancelledError):
            f.result()
    for i, f in enumerate(futures):
        if not f.cancelled():
            _close(f.result(), original(feeds[i % 4]))


@timeout(60)
def test_cancel_unblocks_a_blocked_submitter(transformer):
    pipe = Pipeline(transformer, queue_size=1)
    feeds = _ids(0, batch=8, seq=128)
    outcome: list[object] = []

    def flood():
        futures = []
        try:
            for _ in range(200):  # far more than the pipeline holds: put() blocks
                futures.append(pipe.submit(feeds))
        except RuntimeError as exc:
            outcome.append(exc)
        outcome.append(futures)

    submitter = threading.Thread(target=flood)
    submitter.start()
    while pipe.stats()[0].runs < 1:
        time.sleep(0.005)
    pipe.close(cancel=True)
    submitter.join(30)
    assert not submitter.is_alive()
    assert isinstance(outcome[0], RuntimeError)
    assert all(f.done() for f in outcome[-1])


@timeout(60)
def test_caller_cancelled_future_is_skipped(transformer):
    with Pipeline(transformer, queue_size=8) as pipe:
        futures = [pipe.submit(_ids(0, batch=8, seq=128)) for _ in range(10)]
        late = futures[-1]
        assert late.cancel()
        for f in futures[:-1]:
            f.result()
    assert pipe.stats()[0].runs < 10


@timeout(60)
def test_many_concurrent_submitters(transformer):
    original = Original(MODELS / "transformer.onnx")
    results: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []

    with Pipeline(transformer, queue_size=2) as pipe:
        def client(t: int) -> None:
            try:
                futures = [(i, pipe.submit(_ids(1000 * t + i))) for i in range(20)]
                for i, f in futures:
                    results[(t, i)] = f.result(timeout=30)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors, errors
    assert len(results) == 160
    for (t, i), got in results.items():
        _close(got, original(_ids(1000 * t + i)))


@timeout(60)
def test_map_keeps_order_and_reads_ahead_boundedly(chain3):
    outdir, path = chain3
    original = Original(path)
    feeds = [random_feeds([("x", "float32", (2, 8))], seed=s) for s in range(40)]
    pulled = []

    def source():
        for i, f in enumerate(feeds):
            pulled.append(i)
            yield f

    with Pipeline(outdir, queue_size=2) as pipe:
        results = pipe.map(source())
        first = next(results)
        assert len(pulled) <= pipe.capacity  # not the whole iterable
        _close(first, original(feeds[0]))
        for f, got in zip(feeds[1:], results, strict=True):
            _close(got, original(f))


@timeout(60)
def test_map_raises_at_the_failing_position(transformer):
    feeds = [_ids(0), _ids(1), {"wrong": np.zeros(1)}, _ids(2)]
    with Pipeline(transformer) as pipe:
        results = pipe.map(feeds)
        assert next(results)["last_hidden"].shape == (4, 32, 64)
        assert next(results)["last_hidden"].shape == (4, 32, 64)
        with pytest.raises(FeedError):
            next(results)


@timeout(60)
def test_binding_runner_on_cpu(chain3):
    """The IO-binding path (used for CUDA stages) run on the CPU, where it can be tested."""
    import onnxruntime as ort

    outdir, path = chain3
    specs = stage_specs(load_manifest(outdir))
    feeds = random_feeds([("x", "float32", (2, 8))], seed=3)
    env = dict(feeds)
    for spec in specs:
        kept = replace(spec, on_device=frozenset(n for n in spec.outputs if n not in spec.graph_outputs))
        runner = BindingRunner(open_session(kept, spin=False), kept, device_type="cpu")
        stage_feeds = {n: env[n] for n in spec.inputs}
        if "x" in stage_feeds:  # one input as an OrtValue already "on the device"
            stage_feeds["x"] = ort.OrtValue.ortvalue_from_numpy(stage_feeds["x"])
        values = runner(stage_feeds)
        for name in kept.on_device:
            assert isinstance(values[name], ort.OrtValue)
        want = HostRunner(open_session(spec, spin=False), spec)({n: env[n] for n in spec.inputs})
        for name in spec.outputs:
            got = values[name].numpy() if isinstance(values[name], ort.OrtValue) else values[name]
            np.testing.assert_allclose(got, want[name], rtol=RTOL, atol=ATOL)
        env.update(values)
    _close({"y": env["y"], "r0": env["r0"]}, Original(path)(feeds))


def test_assign_cores(monkeypatch, chain3):
    outdir, _ = chain3
    specs = stage_specs(load_manifest(outdir))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {4, 5, 6, 7}, raising=False)
    assert assign_cores(specs, pin=True) == ((4,), (5,), (6,))
    assert assign_cores(specs, pin=False) == ((), (), ())
    wide = tuple(replace(s, threads=2) for s in specs)
    assert assign_cores(wide, pin=True) == ((), (), ())  # 6 threads do not fit 4 cores: no pinning


def test_usable_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3, 1}, raising=False)
    assert usable_cores() == (1, 3)
    monkeypatch.delattr("os.sched_getaffinity", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert usable_cores() == (0, 1)


@timeout(10)
def test_channel_is_bounded_and_in_order():
    from onnxsplit.runtime.pipeline import _Channel

    channel = _Channel(2)
    channel.put("a")
    channel.put("b")
    placed = threading.Event()
    putter = threading.Thread(target=lambda: (channel.put("c"), placed.set()), daemon=True)
    putter.start()
    assert not placed.wait(0.2)  # full: the third put waits for room
    assert channel.get() == "a"
    assert placed.wait(5)
    assert [channel.get(), channel.get()] == ["b", "c"]
    putter.join(5)


@timeout(60)
def test_unavailable_provider_is_a_user_error(transformer, tmp_path):
    copy = tmp_path / "cuda"
    shutil.copytree(transformer, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["stages"][1]["provider"] = "CUDAExecutionProvider"
    doc["source"]["path"] = str((MODELS / "transformer.onnx").resolve())
    (copy / "manifest.json").write_text(json.dumps(doc))
    specs = stage_specs(Manifest.from_json(doc, where=copy / "manifest.json"))
    assert specs[0].on_device == frozenset()  # a CPU stage never keeps tensors on a device
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(UsageError, match="stage 1: execution provider 'CUDAExecutionProvider' is not available"):
        Pipeline(copy)


@timeout(60)
def test_cli_run(transformer, tmp_path, capsys):
    feeds = _ids(7)
    np.savez(tmp_path / "in.npz", **feeds)
    code = main(["run", str(transformer), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")])
    assert code == 0, capsys.readouterr().err
    with np.load(tmp_path / "out.npz") as data:
        got = {k: data[k] for k in data.files}
    _close(got, Original(MODELS / "transformer.onnx")(feeds))
    assert "last_hidden" in capsys.readouterr().out

    np.savez(tmp_path / "bad.npz", input_ids=np.zeros((4, 32), dtype=np.float32))
    code = main(["run", str(transformer), "--inputs", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "bad_out.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("onnxsplit: error: stage 0") and "\n" not in err
    assert not (tmp_path / "bad_out.npz").exists()


def _check_spans(spans, stages: int) -> None:
    """Spans of real runs: each request goes through the stages in order, and a stage runs one request at a time."""
    by_request: dict[int, list] = {}
    for s in spans:
        assert s.start_s <= s.end_s
        by_request.setdefault(s.request, []).append(s)
    for request, runs in by_request.items():
        assert [s.stage for s in runs] == list(range(stages)), request
        for earlier, later in zip(runs, runs[1:]):
            assert later.start_s >= earlier.end_s, (earlier, later)
    for k in range(stages):
        own = sorted((s for s in spans if s.stage == k), key=lambda s: s.start_s)
        for earlier, later in zip(own, own[1:]):
            assert later.start_s >= earlier.end_s, (earlier, later)
        # A stage takes the requests in submit order.
        assert [s.request for s in own] == sorted(s.request for s in own)


@timeout(60)
def test_trace_records_every_run_in_order(chain3):
    outdir, _ = chain3
    feeds = random_feeds(load_manifest(outdir).feed_specs(load_manifest(outdir).input_shapes), seed=1)
    with Pipeline(outdir, pin=False) as pipe:
        assert pipe.trace() == ()
        before = time.perf_counter()
        futures = [pipe.submit(feeds) for _ in range(20)]
        for f in futures:
            f.result()
        after = time.perf_counter()
        spans = pipe.trace()
    assert len(spans) == 20 * 3
    assert [(s.request, s.stage) for s in spans] == [(r, k) for r in range(20) for k in range(3)]
    assert all(before <= s.start_s and s.end_s <= after for s in spans)
    _check_spans(spans, 3)
    # The last stage finishes a request before its Future is done.
    assert all(s.end_s <= f.finished_at for s, f in zip((s for s in spans if s.stage == 2), futures))


@timeout(120)
def test_trace_keeps_the_latest_runs_of_each_stage(chain3):
    from onnxsplit.runtime.pipeline import TRACE_REQUESTS

    outdir, _ = chain3
    feeds = random_feeds(load_manifest(outdir).feed_specs(load_manifest(outdir).input_shapes), seed=2)
    total = TRACE_REQUESTS + 40
    with Pipeline(outdir, pin=False) as pipe:
        for _ in pipe.map(feeds for _ in range(total)):
            pass
        spans = pipe.trace()
    for k in range(3):
        assert [s.request for s in spans if s.stage == k] == list(range(total - TRACE_REQUESTS, total))
    _check_spans(spans, 3)


@timeout(60)
def test_trace_leaves_out_failed_runs(transformer):
    with Pipeline(transformer, pin=False) as pipe:
        good = pipe.submit(_ids(0))
        bad = pipe.submit({"input_ids": np.zeros((4, 32), dtype=np.float32)})  # wrong dtype: stage 0 fails
        last = pipe.submit(_ids(1))
        good.result(), last.result()
        with pytest.raises(StageError):
            bad.result()
        spans = pipe.trace()
    assert sorted({s.request for s in spans}) == [0, 2]
    _check_spans(spans, 2)


def test_ray_pipeline_records_no_spans():
    from onnxsplit.runtime.ray_engine import RayPipeline

    # No Ray needed: the in-process workers are what records spans, and a Ray pipeline has none.
    assert Pipeline.trace(object.__new__(RayPipeline)) == ()
