"""`onnxsplit serve` end to end: a real server process on 127.0.0.1, a real client (tritonclient.http).

Every answer is checked against the original model run by onnxruntime on the
same request alone.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time

import numpy as np
import pytest
from conftest import MODELS
from serving import (
    Original,
    Served,
    assert_same,
    client,
    infer,
    run_cli,
    spin_model,
    split_in_two,
    typed_feeds,
    typed_model,
)

from onnxsplit.cli.main import main

pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException

LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    root = tmp_path_factory.mktemp("typed")
    path = typed_model(root / "typed.onnx")
    return path, split_in_two(path, root / "split", first=["mm0", "relu0"])


@pytest.fixture(scope="module")
def served(typed):
    with Served(typed[1], "--max-body-bytes", "256KiB") as server:
        yield server
        assert server.stop() == 0, server.lines


def test_health_and_metadata(served):
    triton = client(served.url)
    assert served.model == "typed"  # the source model's file stem
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("typed")
    meta = triton.get_model_metadata("typed")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]},
                              {"name": "k", "datatype": "INT64", "shape": [-1, 1]},
                              {"name": "m", "datatype": "BOOL", "shape": [-1, 8]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("y", "FP32"), ("pos", "BOOL"), ("k1", "INT64")]
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert served.get("/v2/models/typed/versions/1")[0] == 200
    assert served.get("/v2/models/typed/versions/2")[0] == 404


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_outputs_equal_the_originals(served, typed, binary):
    original, triton = Original(typed[0]), client(served.url)
    for n, seed in ((1, 0), (3, 1), (7, 2)):
        feeds = typed_feeds(n, seed)
        assert_same(infer(triton, "typed", feeds, binary=binary), original(feeds))
    feeds = typed_feeds(2, 3)
    got = infer(triton, "typed", feeds, binary=binary, outputs=("k1",))
    assert list(got) == ["k1"]
    np.testing.assert_array_equal(got["k1"], original(feeds)["k1"])


def _refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_malformed_requests_get_4xx_with_a_message_and_the_server_keeps_serving(served, typed):
    import tritonclient.http as httpclient

    triton = client(served.url)
    feeds = typed_feeds(2, 0)

    def send(replace=None, model="typed", **arrays):
        inputs = []
        for name, array in {**feeds, **arrays}.items():
            dtype = {np.float32: "FP32", np.float64: "FP64", np.int64: "INT64", np.bool_: "BOOL"}[array.dtype.type]
            item = httpclient.InferInput((replace or {}).get(name, name), list(array.shape), dtype)
            item.set_data_from_numpy(array)
            inputs.append(item)
        return triton.infer(model, inputs)

    err = _refused(lambda: send(replace={"x": "nope"}))
    assert err.status() == "400" and "unknown input 'nope'" in err.message()
    err = _refused(lambda: send(x=feeds["x"].astype(np.float64)))
    assert err.status() == "400" and "datatype FP64, expected FP32" in err.message()
    err = _refused(lambda: send(x=np.zeros((2, 5), np.float32)))
    assert err.status() == "400" and "does not fit the model's [N, 8]" in err.message()
    err = _refused(lambda: send(x=np.zeros((3, 8), np.float32)))
    assert err.status() == "400" and "dim 'N' is 3 in input 'x' but 2 in input 'k'" in err.message()
    err = _refused(lambda: send(model="other"))
    assert err.status() == "404" and "unknown model 'other'" in err.message()
    big = typed_feeds(LIMIT // 32 + 1, 0)  # x alone is over the limit
    err = _refused(lambda: send(**big))
    assert err.status() == "413" and "over the limit" in err.message()

    status, body = served.request("POST", "/v2/models/typed/infer", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = served.request("POST", "/v2/models/typed/infer", b"x" * (LIMIT + 1))
    assert status == 413 and "over the limit" in body["error"]
    status, body = served.request("POST", "/v2/models/typed/infer", b"{}",
                                  headers={"Inference-Header-Content-Length": "99"})
    assert status == 400 and "does not fit a body of 2 bytes" in body["error"]
    status, body = served.request("GET", "/v2/models/typed/infer")
    assert status == 405 and body["error"]
    status, body = served.request("GET", "/v2/nowhere")
    assert status == 404 and "no such route" in body["error"]

    assert_same(infer(triton, "typed", feeds), Original(typed[0])(feeds))


def test_gzip_bodies_are_read(served, typed):
    import tritonclient.http as httpclient

    feeds = typed_feeds(4, 9)
    inputs = []
    for name, dtype in (("x", "FP32"), ("k", "INT64"), ("m", "BOOL")):
        item = httpclient.InferInput(name, list(feeds[name].shape), dtype)
        item.set_data_from_numpy(feeds[name])
        inputs.append(item)
    result = client(served.url).infer("typed", inputs, request_compression_algorithm="gzip")
    want = Original(typed[0])(feeds)
    for name in want:
        np.testing.assert_allclose(result.as_numpy(name), want[name], rtol=1e-5, atol=1e-6)


def test_200_concurrent_requests_from_8_client_threads_all_come_back_right(served, typed):
    original = Original(typed[0])
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()

    def worker(t: int) -> None:
        triton = client(served.url)  # a client per thread: tritonclient's are not shared between threads
        for i in range(25):
            feeds = typed_feeds(1 + (t + i) % 4, seed=1000 * t + i)
            try:
                assert_same(infer(triton, "typed", feeds, binary=(i % 2 == 0)), original(feeds))
            except Exception as exc:  # collected: an assertion in a thread would go unseen
                with lock:
                    failures.append(f"thread {t} request {i}: {exc}")
            else:
                with lock:
                    done[0] += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not failures, failures[:3]
    assert done[0] == 200


def test_dynamic_batching_gives_each_client_exactly_its_own_rows(tmp_path):
    outdir = split_in_two(MODELS / "transformer.onnx", tmp_path / "split", input_shapes={"input_ids": (2, 16)})
    original = Original(MODELS / "transformer.onnx")
    failures: list[str] = []
    sizes: list[int] = []
    lock = threading.Lock()
    with Served(outdir, "--max-batch", "8", "--batch-timeout-us", "30000") as served:
        start = threading.Barrier(8)

        def worker(t: int) -> None:
            triton = client(served.url)
            start.wait()
            for i in range(5):
                n = 1 + (t + i) % 3
                feeds = {"input_ids": np.random.default_rng(100 * t + i).integers(0, 50, (n, 16))}
                try:
                    got = infer(triton, "transformer", feeds, binary=(t % 2 == 0))
                    want = original(feeds)
                    assert got["last_hidden"].shape == want["last_hidden"].shape
                    np.testing.assert_allclose(got["last_hidden"], want["last_hidden"], rtol=1e-4, atol=1e-5)
                except Exception as exc:
                    with lock:
                        failures.append(f"thread {t} request {i}: {exc}")
                with lock:
                    sizes.append(n)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        stats = client(served.url).get_inference_statistics("transformer")["model_stats"][0]
        assert served.stop() == 0, served.lines
    assert not failures, failures[:3]
    assert stats["inference_stats"]["success"]["count"] == 40
    assert stats["inference_count"] == sum(sizes)
    assert stats["execution_count"] < 40, "no requests were batched together"


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(tmp_path):
    # Heavy enough that requests are still running when the signal comes.
    path = typed_model(tmp_path / "heavy.onnx", width=512, layers=6)
    outdir = split_in_two(path, tmp_path / "split", first=["mm0", "relu0", "mm1", "relu1", "mm2", "relu2"])
    original = Original(path)
    results: dict[int, tuple[float, object]] = {}

    with Served(outdir) as served:
        def worker(t: int) -> None:
            feeds = typed_feeds(512, seed=t, width=512)
            try:
                got = infer(client(served.url), "heavy", feeds)
                assert_same(got, original(feeds))
                results[t] = (time.monotonic(), None)
            except Exception as exc:
                results[t] = (time.monotonic(), exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        # Once the first answer is back, the others are queued behind it in the stages.
        deadline = time.monotonic() + 60
        while not results and time.monotonic() < deadline:
            time.sleep(0.005)
        began = time.monotonic()
        status, _ = served.get("/v2/health/live")  # the loop is free while the stages work
        assert status == 200 and time.monotonic() - began < 1.0
        sent = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        for th in threads:
            th.join(timeout=120)
        assert served.get("/v2/health/ready")[0] in (0, 503)  # refused, or told it is going away
        code = served.stop()
    errors = {t: exc for t, (_, exc) in results.items() if exc is not None}
    assert len(results) == 6 and not errors, errors
    assert any(at > sent for at, _ in results.values()), "no request was still in flight at SIGTERM"
    assert code == 0, served.lines
    assert served.lines[-1] == "onnxsplit: stopped", served.lines


# -- refused at start --------------------------------------------------------------------------------------------------


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxsplit: error: "), err
    return err[0]


def test_dynamic_batching_is_refused_when_the_batch_dim_is_fixed(tmp_path, capsys):
    path = typed_model(tmp_path / "fixed.onnx", batch=2)
    outdir = split_in_two(path, tmp_path / "split", first=["mm0", "relu0"])
    line = _one_error_line(capsys, ["serve", str(outdir), "--port", "0", "--max-batch", "4"])
    assert "--max-batch" in line and "input 'x' has first dim 2" in line


def test_start_errors_are_one_line_and_exit_1(typed, tmp_path, capsys):
    outdir = str(typed[1])
    assert "not a split folder" in _one_error_line(capsys, ["serve", str(tmp_path), "--port", "0"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = _one_error_line(capsys, ["serve", outdir, "--port", str(port)])
        assert f"127.0.0.1:{port}: cannot listen (address already in use)" in line
    for flags, fault in ((["--max-batch", "0"], "--max-batch must be at least 1"),
                         (["--port", "70000"], "--port must be at most 65535"),
                         (["--port", "-1"], "--port must be 0 or more"),
                         (["--batch-timeout-us", "100"], "--batch-timeout-us applies only with --max-batch"),
                         (["--batch-timeout-us", "nan", "--max-batch", "2"], "--batch-timeout-us must be"),
                         (["--name", "a/b"], "--name: model name 'a/b'"),
                         (["--max-body-bytes", "lots"], "--max-body-bytes"),
                         (["--engine", "mpi"], "invalid choice: 'mpi'"),
                         (["--host", "no.such.host.invalid"], "no.such.host.invalid: not an address")):
        assert fault in _one_error_line(capsys, ["serve", outdir, "--port", "0", *flags]), flags


def test_a_stage_that_cannot_load_stops_the_server_with_one_line(typed, tmp_path):
    outdir = tmp_path / "broken"
    shutil.copytree(typed[1], outdir)
    stage = json.loads((outdir / "manifest.json").read_text())["stages"][1]["file"]
    (outdir / stage).write_bytes(b"not an onnx model")
    done = run_cli("serve", str(outdir), "--port", "0")
    errors = [line for line in done.stderr.splitlines() if line]
    assert done.returncode == 1, done
    assert len(errors) == 1 and errors[0].startswith("onnxsplit: error: stage 1"), errors


def test_requests_still_running_after_the_grace_period_fail_with_503_and_the_server_ends(tmp_path):
    from onnxsplit.serve.server import Server

    path = spin_model(tmp_path / "spin.onnx")
    outdir = split_in_two(path, tmp_path / "split", first=["squeeze", "loop"])
    x = np.full((1, 16), 0.5, np.float32)
    began = time.perf_counter()
    Original(path)({"x": x, "n": np.array([20000])})
    # About 4 s a request: far past the 0.7 s before shutdown even when the calibration ran on a busy machine.
    trips = int(20000 * 4.0 / (time.perf_counter() - began))

    server = Server(outdir, port=0, grace_s=0.2, pin=False)
    ready = threading.Event()
    returned: list[int] = []
    runner = threading.Thread(target=lambda: returned.append(server.run(on_ready=ready.set)), daemon=True)
    runner.start()
    assert ready.wait(60)
    outcomes: list[object] = []

    def worker() -> None:
        try:
            infer(client(f"127.0.0.1:{server.port}"), "spin", {"x": x, "n": np.array([trips])})
            outcomes.append("done")
        except InferenceServerException as exc:
            outcomes.append((exc.status(), exc.message()))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for th in threads:
        th.start()
    time.sleep(0.5)  # the first request is in the loop, the others wait behind it
    server.stop()
    runner.join(60)
    for th in threads:
        th.join(60)
    assert not runner.is_alive() and returned == [0]
    assert outcomes == [("503", "the server shut down before this request finished")] * 3, outcomes
