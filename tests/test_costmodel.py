"""Costs and memory from a model: node memory, the activation working set, hand-off bytes."""

from __future__ import annotations

import pytest
from onnx import helper

from graphs import f32, model, save, weight
from onnxsplit.costmodel import KindTimes, activation_peak, build_costgraph, kind_times, shared_profile
from onnxsplit.devices import DeviceKind, Devices, identical_devices
from onnxsplit.errors import InfeasibleError, UsageError
from onnxsplit.graphinfo import graph_info
from onnxsplit.model import load_model
from onnxsplit.profile.estimate import estimate_times
from onnxsplit.profile.store import NodeTime, Profile, ProfileError, save_profile
from onnxsplit.shapes import concrete_types
from onnxsplit.splitting import prepare, split


def _relu_chain(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
             helper.make_node("Relu", ["a"], ["b"], name="r1"),
             helper.make_node("Relu", ["b"], ["c"], name="r2"),
             helper.make_node("Add", ["c", "a"], ["y"], name="add")]
    return save(model(nodes, [f32("x", ["N", 250])], [f32("y", ["N", 250])], [weight("W", [250, 250])]), tmp_path / "m.onnx")


def test_activation_peak_follows_liveness(tmp_path):
    m = load_model(_relu_chain(tmp_path))
    info = graph_info(m)
    types = concrete_types(m, {"x": (4, 250)})
    t = 4 * 250 * 4  # one activation, bytes
    # mm: {x, a}, then x is dead; r1: {a, b}; r2: {a, b, c}, then b is dead; add: {a, c, y}.
    assert activation_peak(info, types, (0, 1, 2, 3), ("x",), ("y",)) == 3 * t
    # a arrives; r1: {a, b}, then a is dead here; r2: {b, c}.
    assert activation_peak(info, types, (1, 2), ("a",), ("c",)) == 2 * t


def test_node_memory_counts_weights_and_outputs(tmp_path):
    prepared = prepare(_relu_chain(tmp_path), identical_devices(2), input_shapes={"x": (4, 250)})
    assert prepared.graph.memory[0] == 250 * 250 * 4 + 4 * 250 * 4
    assert prepared.graph.memory[1] == 4 * 250 * 4


def test_stage_activations_must_fit(tmp_path):
    src = _relu_chain(tmp_path)
    with pytest.raises(InfeasibleError, match="needs"):
        split(src, tmp_path / "out", devices=identical_devices(2, memory=250 * 250 * 4 + 100), input_shapes={"x": (64, 250)})
    assert not (tmp_path / "out").exists()


def _profile(m, ms: float, *, sha256: str | None = None, threads: int = 1) -> Profile:
    return Profile(model_sha256=sha256 or m.sha256, input_shapes={"x": (4, 250)}, provider="CPUExecutionProvider",
                   provider_options={}, threads=threads, ort_version="1.0", runs=3, warmup=1, end_to_end_ms=1.0,
                   nodes=tuple(NodeTime(n.name, n.op_type, ms, "measured") for n in m.graph.node))


def _loaded(tmp_path):
    m = load_model(_relu_chain(tmp_path))
    return m, graph_info(m), concrete_types(m, {"x": (4, 250)})


def test_kind_times_from_a_shared_profile_and_an_own_profile(tmp_path):
    m, info, types = _loaded(tmp_path)
    own = save_profile(_profile(m, 0.5, threads=4), tmp_path / "fast.json")
    devices = Devices((DeviceKind("slow", 1, speed=0.5), DeviceKind("fast", 1, speed=3.0, profile=str(own))))
    times = kind_times(m, info, types, devices, profile=_profile(m, 1.0), input_shapes={"x": (4, 250)})
    assert times["slow"] == (2.0,) * 4  # the shared profile, divided by the kind's speed
    assert times["fast"] == (0.5,) * 4  # its own profile, as measured
    assert times.of("slow").source == "shared profile" and times.of("slow").speed == 0.5
    assert times.of("fast").source == "own profile" and times.of("fast").threads == 4
    graph = build_costgraph(m, info, devices, times, types)
    assert graph.compute == {"slow": (2.0,) * 4, "fast": (0.5,) * 4}
    # The plain mapping callers used to pass gives the same graph.
    assert build_costgraph(m, info, devices, {"slow": [2.0] * 4, "fast": [0.5] * 4}, types) == graph


def test_kind_times_without_a_profile_estimate(tmp_path):
    m, info, types = _loaded(tmp_path)
    devices = Devices((DeviceKind("a", 1), DeviceKind("b", 1, speed=2.0)))
    times = kind_times(m, info, types, devices, profile=None, input_shapes={"x": (4, 250)})
    estimate = tuple(estimate_times(m, info, types))
    assert isinstance(times, KindTimes) and times["a"] == estimate
    assert times["b"] == tuple(t / 2.0 for t in estimate) and times.of("b").source == "estimate"
    assert times.of("a").provider is None


def test_kind_times_check_every_profile(tmp_path):
    m, info, types = _loaded(tmp_path)
    with pytest.raises(ProfileError, match="sha256"):
        kind_times(m, info, types, identical_devices(2), profile=_profile(m, 1.0, sha256="0" * 64),
                   input_shapes={"x": (4, 250)})
    with pytest.raises(ProfileError, match="x:4x250"):
        kind_times(m, info, types, identical_devices(2), profile=_profile(m, 1.0), input_shapes={"x": (8, 250)})
    own = save_profile(_profile(m, 1.0, sha256="0" * 64), tmp_path / "own.json")
    with pytest.raises(ProfileError, match="sha256"):
        kind_times(m, info, types, Devices((DeviceKind("a", 1, profile=str(own)),)), profile=None,
                   input_shapes={"x": (4, 250)})


def test_shared_profile_reads_measures_or_estimates(tmp_path):
    m, _, _ = _loaded(tmp_path)
    shapes = {"x": (4, 250)}
    assert shared_profile(m, identical_devices(2), input_shapes=shapes, costs="estimate") is None
    path = save_profile(_profile(m, 1.0), tmp_path / "p.json")
    assert shared_profile(m, identical_devices(2), input_shapes=shapes, costs="estimate", profile_path=path) == \
        _profile(m, 1.0)
    # Every kind has its own profile: nothing is read, even a file that is not there.
    own = Devices((DeviceKind("a", 1, profile=str(path)),))
    assert shared_profile(m, own, input_shapes=shapes, profile_path=tmp_path / "missing.json") is None
    measured = shared_profile(m, identical_devices(1), input_shapes=shapes, costs="measure", runs=2, warmup=0)
    assert measured is not None and measured.model_sha256 == m.sha256 and measured.runs == 2
    with pytest.raises(UsageError, match="'guess'"):
        shared_profile(m, identical_devices(1), input_shapes=shapes, costs="guess")
