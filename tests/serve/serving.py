"""Helpers of the endpoint tests: small split folders, and `onnxsplit serve` run as a real process."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from conftest import ROOT
from graphs import model, save, weight
from onnx import TensorProto, helper, numpy_helper


def typed_model(path: Path, *, batch: str | int = "N", width: int = 8, layers: int = 2) -> Path:
    """Inputs of three datatypes (x FP32 [N, w], k INT64 [N, 1], m BOOL [N, w]) and outputs of three:
    y = relu(x W0) W1 ... * k (FP32), pos = y > 0 and m (BOOL), k1 = k + 1 (INT64)."""
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        inits.append(weight(f"W{i}", [width, width], seed=i))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"mm{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"mm{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "one"))
    nodes += [
        helper.make_node("Cast", ["k"], ["kf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [prev, "kf"], ["y"], name="scale"),
        helper.make_node("Greater", ["y", "zero"], ["gt"], name="greater"),
        helper.make_node("And", ["gt", "m"], ["pos"], name="and"),
        helper.make_node("Add", ["k", "one"], ["k1"], name="add"),
    ]
    inits.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width]),
              helper.make_tensor_value_info("k", TensorProto.INT64, [batch, 1]),
              helper.make_tensor_value_info("m", TensorProto.BOOL, [batch, width])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width]),
               helper.make_tensor_value_info("pos", TensorProto.BOOL, [batch, width]),
               helper.make_tensor_value_info("k1", TensorProto.INT64, [batch, 1])]
    return save(model(nodes, inputs, outputs, inits), path)


def spin_model(path: Path, *, width: int = 16) -> Path:
    """y = relu(tanh(... tanh(x W) ... W)), the tanh applied n times by a Loop: its time is in the
    caller's hands (input n, shape [1])."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"], name="keep_going"),
         helper.make_node("MatMul", ["x_in", "W"], ["mm"], name="body_mm"),
         helper.make_node("Tanh", ["mm"], ["x_out"], name="body_tanh")],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["N", width])])
    nodes = [
        helper.make_node("Squeeze", ["n", "axis0"], ["trips"], name="squeeze"),
        helper.make_node("Loop", ["trips", "true", "x"], ["looped"], name="loop", body=body),
        helper.make_node("Relu", ["looped"], ["y"], name="relu"),
    ]
    inits = [weight("W", [width, width]), numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
             numpy_helper.from_array(np.array(True), "true")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width]),
              helper.make_tensor_value_info("n", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])]
    return save(model(nodes, inputs, outputs, inits), path)


def typed_feeds(n: int, seed: int, *, width: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.uniform(-1, 1, (n, width)).astype(np.float32), "k": rng.integers(-3, 4, (n, 1)),
            "m": rng.integers(0, 2, (n, width)).astype(bool)}


def split_in_two(model_path: Path, outdir: Path, *, first: list[str] | None = None, **kwargs) -> Path:
    """``model_path`` split into 2 stages (the nodes in ``first`` on stage 0, the rest on 1, when given)."""
    from onnxsplit.splitting import split

    plan = None
    if first is not None:
        import onnx

        names = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]
        plan = outdir.parent / f"{outdir.name}.plan.json"
        plan.write_text(json.dumps({n: 0 if n in first else 1 for n in names}))
    result = split(model_path, outdir, devices=2, costs="estimate", plan=plan, force=True, **kwargs)
    assert len(result.manifest.stages) == 2
    return outdir


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxsplit", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, env=_env(), cwd=ROOT)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class Served:
    """`onnxsplit serve OUTDIR --port 0 ARGS...` in a child process, on 127.0.0.1.

    ``url`` is host:port (as tritonclient wants it). ``stop()`` sends SIGTERM
    and returns the exit code; stdout and stderr lines are kept in ``lines``.
    """

    def __init__(self, outdir: Path, *args: str, ready_timeout: float = 60) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "onnxsplit", "serve", str(outdir), "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.wait_for("at http://", timeout=ready_timeout)
        self.url = first.split("at http://", 1)[1].split("/", 1)[0]
        self.model = first.split("/v2/models/", 1)[1].split(";", 1)[0]
        self.wait_ready(timeout=ready_timeout)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, text: str, *, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} within {timeout} s; got {self.lines}") from None
            if line is None:
                raise AssertionError(f"the server ended (code {self.process.wait()}) before {text!r}: {self.lines}")
            self.lines.append(line)
            if text in line:
                return line

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/v2/health/ready")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"not ready within {timeout} s: {self.lines}")

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                ) -> tuple[int, dict]:
        """(status, JSON body) of one raw HTTP request; a refused connection is status 0."""
        req = urllib.request.Request(f"http://{self.url}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, ConnectionError):
            return 0, {}

    def stop(self, *, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the server did not stop within {timeout} s after SIGTERM: {self.lines}") from None
        self.drain()
        return code

    def drain(self) -> None:
        while True:
            try:
                line = self._lines.get(timeout=5)
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def client(url: str):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url=url, network_timeout=60, connection_timeout=60)


def infer(triton, model_name: str, feeds: dict[str, np.ndarray], *, binary: bool = True,
          outputs: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """One tritonclient request; every output (or those named) as arrays."""
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in feeds.items():
        item = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs] or None
    result = triton.infer(model_name, inputs, outputs=wanted)
    names = outputs or [o["name"] for o in result.get_response()["outputs"]]
    return {n: result.as_numpy(n) for n in names}


class Original:
    """The unsplit model in onnxruntime: the reference."""

    def __init__(self, path: Path) -> None:
        from onnxsplit.ortutil import make_session

        self.session = make_session(path)
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(self.names, feeds)))


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
