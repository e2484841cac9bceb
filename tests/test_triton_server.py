"""A split exported with `--backend python` runs on a real Triton server and reproduces the original model.

The server is the ``tritonserver`` binary bundled in the ``nvidia-pytriton``
wheel, which has the Python backend but not the onnxruntime one (configs for
that backend are checked against Triton's schema only, in
tests/export/test_triton.py). It listens on 127.0.0.1 only, HTTP on a free
port, gRPC and metrics off.

How the backend's stub finds numpy and onnxruntime: it runs an isolated
embedded interpreter (PYTHONPATH is ignored) that takes its prefix from the
first ``python3`` on PATH, so the server starts with this interpreter's
folder first on PATH, as an activated virtual environment would have it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphs
from conftest import MODELS
from onnxsplit.cli.main import main
from onnxsplit.export.triton import check_repository
from onnxsplit.splitting import split

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")


def _server_folder() -> Path | None:
    """The wheel's tritonserver folder. Found without importing pytriton: installed without its dependencies
    (it pins numpy<2), only its bundled server is usable."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return folder if (folder / "bin" / "tritonserver").is_file() else None


SERVER = _server_folder()
if SERVER is None:
    pytest.skip("nvidia-pytriton (which bundles tritonserver) is not installed", allow_module_level=True)

STARTUP_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backends(folder: Path) -> Path:
    """A backend folder holding the wheel's Python backend and the stub built for this Python."""
    server = SERVER
    stub = server / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.fail(f"nvidia-pytriton has no Python backend stub for Python {sys.version_info[:2]} ({stub})")
    python = folder / "python"
    python.mkdir(parents=True)
    for f in (server / "backends" / "python").iterdir():
        if f.is_file():
            (python / f.name).symlink_to(f)
    (python / stub.name).symlink_to(stub)
    return folder


def _split_transformer(folder: Path) -> Path:
    """models/transformer.onnx in 4 stages at input_ids 4x32, cut at node-order quarters (no solver: quick)."""
    n = len(onnx.load(str(MODELS / "transformer.onnx"), load_external_data=False).graph.node)
    plan = folder / "plan.json"
    plan.write_text(json.dumps([k * 4 // n for k in range(n)]))
    split(MODELS / "transformer.onnx", folder / "transformer", devices=4, costs="estimate", plan=plan,
          input_shapes={"input_ids": (4, 32)})
    return folder / "transformer"


def _mlp(path: Path) -> Path:
    """x -> 3 MatMul+Relu layers with a skip from the first to the last: every sample independent of the others,
    as a model must be for Triton's dynamic batcher to join requests."""
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["x", "W0"], ["m0"], name="mm0"),
             helper.make_node("Relu", ["m0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "W1"], ["m1"], name="mm1"),
             helper.make_node("Relu", ["m1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "W2"], ["m2"], name="mm2"),
             helper.make_node("Add", ["m2", "r0"], ["y"], name="skip")]
    inits = [graphs.weight(f"W{i}", [8, 8], seed=i) for i in range(3)]
    return graphs.save(graphs.model(nodes, [graphs.f32("x", ["N", 8])], [graphs.f32("y", ["N", 8])], inits), path)


def _dtypes(path: Path) -> Path:
    """Hand-offs of several dtypes (bool, float16, int32) from stage 0 (the three first nodes) to stage 1."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Greater", ["x", "zero"], ["g"], name="positive"),
             helper.make_node("Cast", ["x"], ["h"], name="to_half", to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["x"], ["i"], name="to_int", to=TensorProto.INT32),
             helper.make_node("Cast", ["h"], ["hf"], name="half_back", to=TensorProto.FLOAT),
             helper.make_node("Cast", ["i"], ["if"], name="int_back", to=TensorProto.FLOAT),
             helper.make_node("Add", ["hf", "if"], ["s"], name="add"),
             helper.make_node("Where", ["g", "s", "x"], ["y"], name="where")]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    m = graphs.model(nodes, [graphs.f32("x", ["N", 4])], [graphs.f32("y", ["N", 4])], [zero])
    return graphs.save(m, path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Triton server on three repositories: the transformer (no batch dim shared), a small MLP (batched) and a
    model whose hand-offs are bool, float16 and int32."""
    tmp = tmp_path_factory.mktemp("triton")
    repos = [tmp / "repo_transformer", tmp / "repo_mlp", tmp / "repo_dtypes"]
    assert main(["export", "triton", str(_split_transformer(tmp)), "-o", str(repos[0]), "--backend", "python"]) == 0
    plan = tmp / "mlp_plan.json"
    plan.write_text(json.dumps([0, 0, 1, 1, 2, 2]))
    split(_mlp(tmp / "mlp.onnx"), tmp / "mlp", devices=3, costs="estimate", plan=plan, input_shapes={"x": (4, 8)})
    assert main(["export", "triton", str(tmp / "mlp"), "-o", str(repos[1]), "--backend", "python",
                 "--max-batch", "8"]) == 0
    plan.write_text(json.dumps([0, 0, 0, 1, 1, 1, 1]))
    split(_dtypes(tmp / "dtypes.onnx"), tmp / "dtypes", devices=2, costs="estimate", plan=plan,
          input_shapes={"x": (2, 4)})
    assert main(["export", "triton", str(tmp / "dtypes"), "-o", str(repos[2]), "--backend", "python"]) == 0
    for repo in repos:
        check_repository(repo)
    port = _free_port()
    binary = SERVER / "bin" / "tritonserver"
    command = [str(binary), *(a for r in repos for a in ("--model-repository", str(r))),
               "--backend-directory", str(_backends(tmp / "backends")),
               "--http-address", "127.0.0.1", "--http-port", str(port),
               "--allow-grpc", "false", "--allow-metrics", "false", "--disable-auto-complete-config"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    client = http.InferenceServerClient(f"127.0.0.1:{port}", concurrency=4)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 (not listening yet: refused, reset, or a 5xx while starting)
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready after {STARTUP_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield client, proc, port
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _original(path: Path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def _request(name: str, x: np.ndarray, datatype: str):
    tensor = http.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return [tensor]


def test_server_listens_on_loopback_only(server):
    _, proc, port = server
    if shutil.which("ss") is None:
        pytest.skip("no `ss` here to list listening sockets")
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    mine = [line for line in listening.splitlines() if f"pid={proc.pid}," in line]
    addresses = [line.split()[3] for line in mine]
    assert addresses == [f"127.0.0.1:{port}"], listening


def test_transformer_ensemble_matches_the_original(server):
    client, _, _ = server
    assert client.is_model_ready("transformer")
    config = client.get_model_config("transformer")
    # The cut passes scalars between stages: they travel as one-element vectors.
    assert any(k.endswith("__1d") for step in config["ensemble_scheduling"]["step"] for k in step["input_map"])
    rng = np.random.default_rng(12)
    for _ in range(3):
        ids = rng.integers(0, 100, (4, 32)).astype(np.int64)
        result = client.infer("transformer", _request("input_ids", ids, "INT64"))
        (want,) = _original(MODELS / "transformer.onnx", {"input_ids": ids})
        np.testing.assert_allclose(result.as_numpy("last_hidden"), want, rtol=1e-4, atol=1e-5)


def test_batched_ensemble_matches_the_original(server, tmp_path):
    client, _, _ = server
    assert client.get_model_config("mlp")["max_batch_size"] == 8
    original = _mlp(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(3)
    session = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    stages = [f"mlp_stage_{k}" for k in range(3)]
    for _ in range(20):
        xs = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 2, 3, 2, 1, 4, 1, 2)]
        # Sent together, so the dynamic batcher may join them: each answer must still be its own.
        pending = [client.async_infer("mlp", _request("x", x, "FP32")) for x in xs]
        for x, p in zip(xs, pending):
            (want,) = session.run(None, {"x": x})
            np.testing.assert_allclose(p.get_result().as_numpy("y"), want, rtol=1e-5, atol=1e-6)
        stats = [client.get_inference_statistics(m)["model_stats"][0] for m in stages]
        # One execution ran several requests: the stage's batch path (join, run, cut apart) was taken.
        if any(int(st["execution_count"]) < int(st["inference_stats"]["success"]["count"]) for st in stats):
            break
    else:
        pytest.fail(f"the dynamic batcher never joined requests: {stats}")


def test_handoffs_of_other_dtypes(server, tmp_path):
    client, _, _ = server
    config = client.get_model_config("dtypes_stage_0")
    assert sorted(o["data_type"] for o in config["output"]) == ["TYPE_BOOL", "TYPE_FP16", "TYPE_INT32"]
    x = np.array([[-1.5, 0.25, 2.75, 3.0], [7.5, -0.5, 0.0, 1.0]], np.float32)
    (want,) = _original(_dtypes(tmp_path / "dtypes.onnx"), {"x": x})
    np.testing.assert_array_equal(client.infer("dtypes", _request("x", x, "FP32")).as_numpy("y"), want)
