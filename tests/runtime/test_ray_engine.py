"""The Ray engine on a real Ray cluster on this machine: a head and two worker nodes, on 127.0.0.1 only.

One cluster serves every test of the module (starting it takes seconds).
Each node has a custom resource of its own, so a devices file can pin a
stage to a node. Every wait has a timeout, so a hang fails the test.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import CancelledError

# Before ray is first imported: Ray then resolves 127.0.0.1 to itself instead of this machine's outward address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import numpy as np
import pytest

from conftest import MODELS
from onnxsplit.cli.main import main
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import UsageError
from onnxsplit.ortutil import make_session
from onnxsplit.runtime import Pipeline, StageError
from onnxsplit.splitting import split

ray = pytest.importorskip("ray")

RTOL, ATOL = 1e-4, 1e-5
WAIT = 60  # seconds any single wait may take before the test fails
NODES = ("head", "w1", "w2")


def _ids(seed: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, 4, size=(4, 32)).astype(np.int64)}


def _pinned(*nodes: str) -> Devices:
    """One device kind per stage, each needing the custom resource of one node."""
    return Devices(tuple(DeviceKind(f"kind{k}", 1, ray_resources=((node, 0.01),)) for k, node in enumerate(nodes)))


@pytest.fixture(scope="module")
def cluster():
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # The same, where another test module imported ray before this one set the variable.
    ray_constants.ENABLE_RAY_CLUSTER = False

    local = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args={
        **local, "num_cpus": 2, "resources": {"head": 1},
        # A node that leaves is noticed within about a second, not the default half-minute.
        "_system_config": {"health_check_period_ms": 300, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0},
    })
    nodes = {"head": c.head_node}
    for name in NODES[1:]:
        nodes[name] = c.add_node(**local, num_cpus=2, resources={name: 1})
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def split3(tmp_path_factory):
    """models/transformer.onnx in 3 stages, one device kind per stage so each can be pinned to a node."""
    import json

    import onnx

    work = tmp_path_factory.mktemp("ray")
    nodes = [n.name for n in onnx.load(MODELS / "transformer.onnx").graph.node if n.op_type != "Constant"]
    (work / "plan.json").write_text(json.dumps({name: 3 * i // len(nodes) for i, name in enumerate(nodes)}))
    devices = Devices(tuple(DeviceKind(f"kind{k}", 1) for k in range(3)))
    split(MODELS / "transformer.onnx", work / "transformer3", devices=devices, plan=work / "plan.json",
          input_shapes={"input_ids": (4, 32)}, costs="estimate")
    return work / "transformer3"


@pytest.fixture(scope="module")
def original():
    session = make_session(MODELS / "transformer.onnx")
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


@pytest.fixture(scope="module")
def pipe(cluster, split3):
    with Pipeline(split3, engine="ray", devices=_pinned(*NODES)) as p:
        yield p


def _close(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def _in_time(fn, seconds: float = WAIT):
    """fn() on a thread; fail if it has not returned within ``seconds``."""
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} did not return within {seconds} s"
    return box.get("value")


def _recovers(p, feeds, want, seconds: float = WAIT) -> None:
    """Later requests succeed once Ray has restarted the actor."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            _close(p.submit(feeds).result(timeout=WAIT), want)
            return
        except StageError:
            assert time.monotonic() < deadline, "the stage did not come back after its actor was restarted"
            time.sleep(0.2)


def test_stages_run_on_the_nodes_they_are_pinned_to(cluster, pipe, original):
    _, nodes = cluster
    assert type(pipe).__name__ == "RayPipeline" and isinstance(pipe, Pipeline)
    where = pipe.locations()
    assert [loc.node_id for loc in where] == [nodes[n].node_id for n in NODES]
    assert all(loc.node_ip == "127.0.0.1" for loc in where)
    feeds = [_ids(seed) for seed in range(12)]
    futures = [pipe.submit(f) for f in feeds]
    for future, f in zip(futures, feeds):
        _close(future.result(timeout=WAIT), original(f))
    _close(pipe.run(feeds[0]), original(feeds[0]))
    assert [s.runs for s in pipe.stats()] == [13, 13, 13]


def test_map_keeps_order_and_a_failing_request_fails_alone(pipe, original):
    feeds = [_ids(seed) for seed in range(10)]
    for got, f in zip(pipe.map(feeds), feeds):
        _close(got, original(f))
    bad = {"input_ids": np.zeros((4, 32), dtype=np.float32)}
    futures = [pipe.submit(feeds[0]), pipe.submit(bad), pipe.submit(feeds[1])]
    with pytest.raises(StageError, match=r"stage 0 \(stage_0.onnx, CPUExecutionProvider\) failed on node \w+ "
                                         r"\(127\.0\.0\.1\): InvalidArgument") as info:
        futures[1].result(timeout=WAIT)
    assert info.value.stage == 0 and "\n" not in str(info.value)
    _close(futures[0].result(timeout=WAIT), original(feeds[0]))
    _close(futures[2].result(timeout=WAIT), original(feeds[1]))


def test_requests_in_flight_are_bounded(pipe, original):
    seen = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(len(pipe._pending))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    futures = _in_time(lambda: [pipe.submit(_ids(1)) for _ in range(3 * pipe.capacity)])
    for future in futures:
        future.result(timeout=WAIT)
    done.set()
    watcher.join(WAIT)
    assert max(seen) <= pipe.capacity


def test_strict_spread_puts_each_stage_on_its_own_node(cluster, split3, original):
    with Pipeline(split3, engine="ray", placement="strict-spread") as p:
        assert len({loc.node_id for loc in p.locations()}) == 3
        _close(p.run(_ids(3)), original(_ids(3)))


def test_a_stage_actor_that_exits_fails_what_it_held_and_comes_back(pipe, original):
    feeds, want = _ids(4), original(_ids(4))
    for future in [pipe.submit(feeds) for _ in range(3)]:
        _close(future.result(timeout=WAIT), want)

    def pause_then_exit(actor):
        time.sleep(2)
        os._exit(1)

    # Stage 1's actor pauses, the requests below queue up behind the pause there, then its process exits.
    pipe.actors[1].__ray_call__.remote(pause_then_exit)
    after = [pipe.submit(feeds) for _ in range(3)]
    for future in after:
        with pytest.raises(StageError, match=r"stage 1 \(stage_1.onnx, CPUExecutionProvider\) failed on node .*"
                                             r"its Ray actor died") as info:
            future.result(timeout=WAIT)
        assert info.value.stage == 1 and "\n" not in str(info.value)
    _recovers(pipe, feeds, want)


def test_a_killed_stage_actor_fails_its_requests_clearly_and_comes_back(pipe, original):
    feeds, want = _ids(5), original(_ids(5))
    pipe.actors[2].__ray_call__.remote(lambda actor: time.sleep(3))  # the requests wait there when it dies
    futures = [pipe.submit(feeds) for _ in range(pipe.capacity)]
    time.sleep(1)  # time for them to pass stages 0 and 1 (a few milliseconds each) and queue at stage 2
    ray.kill(pipe.actors[2], no_restart=False)
    for future in futures:
        with pytest.raises(StageError, match=r"^stage 2 \(stage_2.onnx, CPUExecutionProvider\) failed on node .*"
                                             r"its Ray actor died"):
            future.result(timeout=WAIT)
    _recovers(pipe, feeds, want)


def test_close_drains_or_cancels_without_hanging(split3, cluster, original):
    feeds, want = _ids(6), original(_ids(6))
    p = Pipeline(split3, engine="ray", queue_size=2)
    futures = [p.submit(feeds) for _ in range(p.capacity)]
    _in_time(p.close)
    for future in futures:
        _close(future.result(timeout=0), want)

    p = Pipeline(split3, engine="ray", queue_size=2)
    futures = [p.submit(feeds) for _ in range(p.capacity)]
    _in_time(lambda: p.close(cancel=True))
    for future in futures:
        assert future.done()
        try:
            _close(future.result(timeout=0), want)
        except CancelledError:
            pass
    with pytest.raises(RuntimeError, match="closed"):
        p.submit(feeds)


def test_stage_files_travel_when_the_folder_is_not_on_the_node(cluster, split3, original):
    from dataclasses import replace

    from onnxsplit.manifest import load_manifest
    from onnxsplit.runtime.ray_engine import _for_actor, _StageActor
    from onnxsplit.runtime.specs import stage_specs

    manifest = load_manifest(split3)
    spec = _for_actor(stage_specs(manifest)[0])
    name = manifest.stages[0].file
    data = (split3 / name).read_bytes()
    elsewhere = "/nonexistent/split"
    assert _StageActor(spec, elsewhere, [(name, len(data), None)]).error[0] == "missing"
    actor = _StageActor(replace(spec, path=spec.path), elsewhere, [(name, len(data), ray.put(data))])
    assert actor.error is None and str(actor.spec.path) != str(spec.path)
    here = _StageActor(spec, str(split3), [(name, len(data), None)])
    got = actor.run(_ids(8)["input_ids"])
    want = here.run(_ids(8)["input_ids"])
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        np.testing.assert_array_equal(a, b)


def test_unplaceable_stages_and_unknown_kinds_are_clear_errors(cluster, split3):
    from onnxsplit.runtime.ray_engine import PlacementError

    with pytest.raises(PlacementError, match=r"no room within 1 s .*stage 0 \{'CPU': 1.0, 'nowhere': 0.01\}"):
        Pipeline(split3, engine="ray", devices=_pinned("nowhere", "w1", "w2"), start_timeout_s=1)
    with pytest.raises(UsageError, match=r"stage 0 runs on device kind 'kind0', which the devices file"):
        Pipeline(split3, engine="ray", devices=Devices((DeviceKind("gpu", 3),)))


def test_without_ray_the_engine_is_a_one_line_usage_error(split3, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(UsageError, match=r"^the Ray engine needs ray: pip install 'onnxsplit\[ray\]'$"):
        Pipeline(split3, engine="ray")
    with pytest.raises(UsageError, match="engine must be one of inproc, ray"):
        Pipeline(split3, engine="dask")
    with pytest.raises(UsageError, match="Ray engine"):
        Pipeline(split3, address="127.0.0.1:6379")


def test_cli_run_on_the_ray_engine(cluster, split3, original, tmp_path, capsys):
    feeds = _ids(9)
    np.savez(tmp_path / "in.npz", **feeds)
    code = main(["run", str(split3), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"),
                 "--engine", "ray", "--placement", "spread"])
    assert code == 0, capsys.readouterr().err
    with np.load(tmp_path / "out.npz") as data:
        _close({k: data[k] for k in data.files}, original(feeds))
    code = main(["run", str(split3), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out2.npz"),
                 "--address", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == "onnxsplit: error: --address applies to --engine ray"


@pytest.mark.slow
def test_a_node_that_leaves_fails_its_requests_not_hangs(cluster, split3, original):
    c, _ = cluster
    doomed = c.add_node(node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=1, resources={"doomed": 1})
    c.wait_for_nodes()
    feeds, want = _ids(10), original(_ids(10))
    p = Pipeline(split3, engine="ray", devices=_pinned("head", "w1", "doomed"))
    try:
        assert p.locations()[2].node_id == doomed.node_id
        _close(p.run(feeds), want)
        # Stage 2 busy for a while, so the requests are still held there when its node goes.
        p.actors[2].__ray_call__.remote(lambda actor: time.sleep(5))
        futures = [p.submit(feeds) for _ in range(p.capacity)]
        c.remove_node(doomed, allow_graceful=False)
        for future in futures:
            with pytest.raises(StageError, match=r"^stage 2 \(stage_2.onnx, CPUExecutionProvider\) failed on node "
                                                 r"\w+ \(127\.0\.0\.1\): its Ray actor died") as info:
                future.result(timeout=WAIT)
            assert info.value.stage == 2 and "\n" not in str(info.value)
    finally:
        _in_time(lambda: p.close(cancel=True))
