"""The profiler: attribution of fused kernels, the trace, profile.json, the cache and `onnxsplit profile`.

Timing checks run on the bundled models and the onnx package's light
ResNet-50, each profiled twice. A shared machine (other processes holding
cores) disturbs whole-run latency more than per-kernel medians, so a timing
check gets a few attempts and one of them must meet every property. The two
profiles are compared only when the machine ran at the same speed for both
(their unprofiled end-to-end latencies agree); otherwise they are measured
again, and left uncompared if the speed keeps moving. A profile's node times
must always add up to its own end-to-end latency.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

from conftest import LIGHT, MODELS
from graphs import chain, f32, model, save, weight
from onnxsplit.cli.main import main
from onnxsplit.errors import OnnxSplitError, UsageError
from onnxsplit.graphinfo import graph_info
from onnxsplit.model import load_model
from onnxsplit.profile import cache, measure, store
from onnxsplit.profile.attribute import Kernel, attribute
from onnxsplit.profile.estimate import estimate_node_ms
from onnxsplit.profile.measure import profile_model
from onnxsplit.profile.trace import ProfilerOverhead, binned_median, kernel_times
from onnxsplit.profile.cache import cached_profile
from onnxsplit.profile.store import NodeTime, Profile, ProfileError, check_profile, load_profile, save_profile
from onnxsplit.providers import resolve_provider
from onnxsplit.shapes import concrete_types

# model file, input shapes making the work non-trivial, measured runs
CASES = {
    "transformer": (MODELS / "transformer.onnx", {"input_ids": (8, 128)}, 30),
    "branchy_cnn": (MODELS / "branchy_cnn.onnx", {"image": (8, 3, 32, 32)}, 30),
    # The four small MLPs do a few microseconds of work per sample: at batch 8 the ~15 us that every
    # session.run costs outside kernels would be half their latency, so they run at batch 4096.
    "control_flow": (MODELS / "control_flow.onnx", {"x": (4096, 16)}, 40),
    "external_data": (MODELS / "external_data.onnx", {"x": (4096, 64)}, 40),
    "fp16": (MODELS / "fp16.onnx", {"x": (4096, 32)}, 40),
    "local_function": (MODELS / "local_function.onnx", {"x": (4096, 32)}, 40),
    "light_resnet50": (LIGHT / "light_resnet50.onnx", {}, 10),
}
TOLERANCE = 0.10


def _profile(case: str) -> Profile:
    path, shapes, runs = CASES[case]
    return profile_model(load_model(path), input_shapes=shapes, runs=runs, warmup=3)


@pytest.fixture(scope="module")
def profiles():
    """Two profiles per model, measured once for the whole module."""
    cache: dict[str, tuple[Profile, Profile]] = {}

    def get(case: str) -> tuple[Profile, Profile]:
        if case not in cache:
            cache[case] = (_profile(case), _profile(case))
        return cache[case]

    return get


def _drift(first: Profile, second: Profile) -> str | None:
    """Why the two profiles cannot be compared, if the machine itself changed speed between them.

    Each profile times the whole model without profiling, interleaved with
    its profiled runs; when those two plain latencies differ, the machine
    (another tenant, clock changes) moved, not the profiler.
    """
    a, b = first.end_to_end_ms, second.end_to_end_ms
    if abs(a - b) > TOLERANCE * (a + b) / 2:
        return f"the machine's own speed moved between the two profiles (end to end {a:.4f} vs {b:.4f} ms)"
    return None


def _timing_failures(first: Profile, second: Profile) -> list[str]:
    failures = []
    for p in (first, second):
        ratio = p.total_ms / p.end_to_end_ms
        if abs(ratio - 1) > TOLERANCE:
            failures.append(f"node times add up to {p.total_ms:.4f} ms, end to end {p.end_to_end_ms:.4f} ms")
    mean = (first.total_ms + second.total_ms) / 2
    if _drift(first, second) is None and abs(first.total_ms - second.total_ms) > TOLERANCE * mean:
        failures.append(f"two profiles disagree: {first.total_ms:.4f} vs {second.total_ms:.4f} ms")
    return failures


ATTEMPTS = 4


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_times_add_up_and_repeat(case, profiles):
    """Some attempt (of a few) must meet every property: a profiler that is off fails them all,
    while this machine's sub-millisecond noise sometimes spoils one attempt."""
    first, second = profiles(case)
    failures = _timing_failures(first, second)
    tries = [failures]
    while (failures or _drift(first, second) is not None) and len(tries) < ATTEMPTS:
        first, second = _profile(case), _profile(case)
        failures = _timing_failures(first, second)
        tries.append(failures)
    # When the machine's own speed kept moving, the two profiles were not compared (the node times of each
    # still had to add up to its own end-to-end latency).
    assert not failures, tries


@pytest.mark.parametrize("case", list(CASES))
def test_time_is_attributed(case, profiles):
    first, _ = profiles(case)
    assert first.measured_share() >= 0.95, first.time_by_source()
    m = load_model(CASES[case][0])
    assert [n.name for n in first.nodes] == [n.name for n in m.graph.node]
    assert [n.op_type for n in first.nodes] == [n.op_type for n in m.graph.node]
    for n in first.nodes:
        assert n.time_ms >= 0
        assert (n.source == "fused") == bool(n.fused_with), n
        if n.source == "folded":
            assert n.time_ms == 0
    assert first.model_sha256 == m.sha256
    assert set(first.input_shapes) == {i.name for i in m.inputs}
    assert all(first.input_shapes[name] == shape for name, shape in CASES[case][1].items())
    assert first.provider == "CPUExecutionProvider" and first.threads == 1 and first.ort_version


def test_fusions_are_recorded(profiles):
    cnn, _ = profiles("branchy_cnn")
    assert "/stem/Relu" in cnn.node("/stem/Conv").fused_with  # Conv+Relu
    # NCHWc Conv doing the residual Add and its Relu, where the CPU's NCHWc kernels take it (not every x86 CPU's
    # onnxruntime build fuses it); otherwise the Add is a kernel of its own.
    shortcut = set(cnn.node("/block1/shortcut/Conv").fused_with)
    assert shortcut in (set(), {"/block1/Add", "/block1/Relu"})
    if not shortcut:
        assert cnn.node("/block1/Add").source == "measured"
    fc, _ = profiles("external_data")
    assert set(fc.node("/fc0/MatMul").fused_with) == {"/fc0/Add", "/fc0/Relu"}  # MatMul+Add+Relu -> FusedGemm
    half, _ = profiles("fp16")  # float16 computed in float32 under renamed tensors
    assert "/fc1/Add" in half.node("/fc1/MatMul").fused_with
    assert half.node("/softmax/Softmax").source == "measured"
    local, _ = profiles("local_function")  # the inlined function body belongs to the call
    assert all(n.source == "measured" for n in local.nodes)
    resnet, _ = profiles("light_resnet50")
    assert resnet.node("n0").fused_with == ("n1", "n2")  # Conv+BatchNormalization+Relu
    folded = [n for n in resnet.nodes if n.op_type == "ConstantOfShape"]
    assert folded and all(n.source == "folded" and n.time_ms == 0 for n in folded)
    text, _ = profiles("transformer")
    erf = text.node("/encoder/layers.0/activation/Erf")  # the Erf chain -> BiasGelu
    assert {"/encoder/layers.0/activation/Div", "/encoder/layers.0/linear1/Add"} <= set(erf.fused_with)
    assert text.node("/encoder/layers.0/norm1/LayerNormalization").source == "measured"


def test_control_flow_bodies_belong_to_the_node(profiles):
    p, _ = profiles("control_flow")
    assert p.node("/if/If").source == "measured" and p.node("/loop/Loop").source == "measured"
    assert p.unattributed_ms == 0
    others = [n.time_ms for n in p.nodes if n.op_type not in ("If", "Loop", "Constant")]
    # Three iterations of an eight-node body outweigh any single node outside.
    assert p.node("/loop/Loop").time_ms > max(others)


# ---------------------------------------------------------------------------------------------
# Attribution on graphs built in code


def _info(tmp_path, nodes, inputs=("x",), inits=()):
    m = model(nodes, [f32(i, ["N", 8]) for i in inputs], [f32(nodes[-1].output[0], ["N", 8])],
              [weight(w, [8, 8]) for w in inits])
    loaded = load_model(save(m, tmp_path / "graph.onnx"))
    return graph_info(loaded), [n.op_type for n in loaded.graph.node]


def _covers(attribution, info):
    return [sorted(info.names[i] for i in c) for c in attribution.covers]


def test_fused_kernel_splits_by_flops(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    info, ops = _info(tmp_path, nodes, inits=["W"])
    kernels = [Kernel("fused mm", "FusedMatMul", ("x", "W"), ("y",))]
    a = attribute(kernels, info, ops, [300.0, 100.0])
    assert _covers(a, info) == [["mm", "relu"]]
    assert dict(a.shares[0]) == {0: 0.75, 1: 0.25}


def test_layout_kernels_follow_names_and_reorders(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "s"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["y"], name="relu2")]
    info, ops = _info(tmp_path, nodes, inputs=("x", "s"), inits=["W"])
    kernels = [
        Kernel("ReorderInput", "ReorderInput", ("x",), ("tok0",)),  # no anchor: belongs downstream
        Kernel("r_nchwc", "Conv", ("tok0", "Wb"), ("tok1",)),  # named after the tensor it computes
        Kernel("ReorderInput_token_1", "ReorderInput", ("s",), ("tok2",)),
        Kernel("y_nchwc", "Add", ("tok1", "tok2"), ("tok3",)),
        Kernel("ReorderOutput", "ReorderOutput", ("tok3",), ("y",)),
    ]
    a = attribute(kernels, info, ops, [1.0] * 4, initializers=frozenset({"Wb"}))
    assert _covers(a, info) == [["conv", "relu"], ["conv", "relu"], ["add", "relu2"], ["add", "relu2"],
                                ["add", "relu2"]]


def test_residual_add_fused_into_the_kernel_before(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["s"], name="side"),
             helper.make_node("MatMul", ["x", "V"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "s"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Neg", ["r"], ["y"], name="neg")]
    info, ops = _info(tmp_path, nodes, inits=["W", "V"])
    kernels = [Kernel("side", "MatMul", ("x", "W"), ("s",)),
               Kernel("c_nchwc", "Conv", ("x", "V", "s"), ("tok",)),  # reads s: it did the Add (and the Relu)
               Kernel("neg", "Neg", ("tok",), ("y",))]
    a = attribute(kernels, info, ops, [1.0] * 5)
    assert _covers(a, info) == [["side"], ["add", "conv", "relu"], ["neg"]]


def test_float16_renames_and_folded_constants(tmp_path):
    nodes = [helper.make_node("Constant", [], ["k"], name="const", value=numpy_helper.from_array(np.float32(2.0))),
             helper.make_node("Mul", ["x", "k"], ["m"], name="mul"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    info, ops = _info(tmp_path, nodes)
    kernels = [Kernel("InsertedPrecisionFreeCast_x", "Cast", ("x",), ("InsertedPrecisionFreeCast_x",)),
               Kernel("", "Mul", ("InsertedPrecisionFreeCast_x", "k"), ("InsertedPrecisionFreeCast_m",)),
               Kernel("relu", "Relu", ("InsertedPrecisionFreeCast_m",), ("InsertedPrecisionFreeCast_y",)),
               Kernel("InsertedPrecisionFreeCast_y", "Cast", ("InsertedPrecisionFreeCast_y",), ("y",))]
    a = attribute(kernels, info, ops, [1.0] * 3, initializers=frozenset({"k"}))
    assert _covers(a, info) == [["mul"], ["mul"], ["relu"], ["relu"]]
    assert a.folded == {0}


def test_kernels_never_timed_cover_nothing(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")]
    m = load_model(save(model(nodes, [f32("x", ["N", 8])], [f32("y", ["N", 8])]), tmp_path / "g.onnx"))
    info = graph_info(m)
    a = attribute([Kernel("relu", "Relu", ("x",), ("r",)), Kernel("neg", "Neg", ("r",), ("y",))], info,
                  ["Relu", "Neg"], [1.0, 1.0], ran=[True, False])
    assert _covers(a, info) == [["relu"], []]
    assert a.folded == frozenset()  # neg is not constant: it falls back to the estimate
    types = concrete_types(m, {"x": (4, 8)})
    nodes, unattributed = measure._node_times(m, info, types, a, np.array([0.5, 0.0, 0.0]))
    assert [(n.source, n.time_ms) for n in nodes] == [("measured", 0.5), ("estimated", estimate_node_ms(m.graph.node[1], types))]
    assert unattributed == 0


# ---------------------------------------------------------------------------------------------
# The trace


def test_binned_median_undoes_truncation():
    assert binned_median(np.array([5, 5, 5, 5])) == 5.5
    assert binned_median(np.array([5, 6, 6, 6])) == pytest.approx(6 + 1 / 3)
    assert binned_median(np.array([1, 2, 3])) == 2.5


def _event(name, ts, dur, op="Relu", tensors=2):
    args = {"op_name": op, "input_type_shape": [{}] * (tensors - 1), "output_type_shape": [{}]}
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": args}


def test_kernel_times_nesting_warmup_and_unnamed_kernels():
    trace = []
    for r, start in enumerate((0, 1000, 2000)):  # the first run warms up
        trace.append({"cat": "Session", "name": "model_run", "ts": start, "dur": 900})
        trace.append(_event("loop", start + 10, 100, op="Loop"))
        trace.append(_event("body/Add", start + 20, 10, op="Add", tensors=3))  # inside the Loop's event
        trace.append(_event("Neg_7", start + 200, 20 + r, op="Neg"))  # an unnamed kernel
        trace.append(_event("ghost", start + 300, 5))  # no such kernel
    kernels = [Kernel("loop", "Loop"), Kernel("", "Neg")]
    overhead = ProfilerOverhead(per_kernel_us=1.0, per_tensor_us=0.5, between_us=2.0)
    times = kernel_times(trace, kernels, 2, overhead)
    assert times.raw.tolist() == [[100, 21, 5], [100, 22, 5]]
    # The Loop's own event (1 + 2 * 0.5) and its body kernel's (1 + 3 * 0.5 + 2 between).
    assert times.overhead[:, 0].tolist() == [6.5, 6.5]
    assert times.ran() == [True, True]
    assert times.ms() == pytest.approx([(100.5 - 6.5) / 1000, (22.0 - 2.0) / 1000, (5.5 - 2.0) / 1000])


# ---------------------------------------------------------------------------------------------
# A real run: folding, estimates, feeds


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """chain(4) with a constant subexpression (Constant * initializer), folded by onnxruntime."""
    m = chain(4)
    folded = [helper.make_node("Constant", [], ["two"], name="two", value=numpy_helper.from_array(np.float32(2.0))),
              helper.make_node("Mul", ["W0", "two"], ["W0x2"], name="double_w0")]
    m.graph.node.extend(folded)
    m.graph.node.append(helper.make_node("MatMul", ["y", "W0x2"], ["z"], name="last"))
    m.graph.output[0].name = "z"
    return save(m, tmp_path_factory.mktemp("small") / "small.onnx")


def test_constant_nodes_are_folded(small):
    p = profile_model(load_model(small), input_shapes={"x": (16, 8)}, runs=5, warmup=1)
    for name in ("const", "two", "double_w0"):
        assert p.node(name).source == "folded" and p.node(name).time_ms == 0
    assert p.node("last").source == "measured" and p.node("last").time_ms > 0


def test_feeds_and_progress(small):
    seen = []
    feeds = {"x": np.ones((3, 8), dtype=np.float32)}
    p = profile_model(load_model(small), input_shapes={"x": (3, 8)}, feeds=feeds, runs=4, warmup=2, threads=2,
                      progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (12, 12) and len(seen) == 12
    assert p.threads == 2 and p.input_shapes == {"x": (3, 8)}
    with pytest.raises(UsageError, match="has shape 3x8, expected 4x8"):
        profile_model(load_model(small), input_shapes={"x": (4, 8)}, feeds=feeds, runs=1, warmup=0)


# ---------------------------------------------------------------------------------------------
# Bad input: one-line user errors


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert isinstance(exc.value, OnnxSplitError) and "\n" not in text and text
    return text


def test_unknown_and_missing_providers(small):
    m = load_model(small)
    with pytest.raises(OnnxSplitError) as exc:
        profile_model(m, input_shapes={}, provider="NoSuchExecutionProvider")
    assert "'NoSuchExecutionProvider'" in _one_line(exc) and "CPUExecutionProvider" in _one_line(exc)
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(OnnxSplitError) as exc:
            profile_model(m, input_shapes={}, provider="cuda")
        assert "CUDAExecutionProvider" in _one_line(exc) and "not available" in _one_line(exc)
    assert resolve_provider("cpu") == "CPUExecutionProvider"
    assert resolve_provider("CUDA") == "CUDAExecutionProvider"


def _fake_profile(m, **changes) -> Profile:
    values = dict(model_sha256=m.sha256, input_shapes={"x": (4, 8)}, provider="CPUExecutionProvider",
                  provider_options={}, threads=1, ort_version="1.0", runs=3, warmup=1, end_to_end_ms=1.0,
                  nodes=tuple(NodeTime(n.name, n.op_type, 0.1, "measured") for n in m.graph.node), unattributed_ms=0.0)
    values.update(changes)
    return Profile(**values)


def test_check_profile(small, tmp_path):
    m = load_model(small)
    check_profile(_fake_profile(m), m, {"x": (4, 8)}, "CPUExecutionProvider", 1)
    with pytest.raises(ProfileError) as exc:
        check_profile(_fake_profile(m, model_sha256="0" * 64), m, {"x": (4, 8)}, "CPUExecutionProvider", 1)
    assert "is not the model the profile was measured on" in _one_line(exc)
    with pytest.raises(ProfileError) as exc:
        check_profile(_fake_profile(m), m, {"x": (2, 8)}, "CPUExecutionProvider", 1)
    assert "x:4x8" in _one_line(exc) and "x:2x8" in _one_line(exc)
    with pytest.raises(ProfileError) as exc:
        check_profile(_fake_profile(m), m, {"x": (4, 8)}, "CUDAExecutionProvider", 1)
    _one_line(exc)
    with pytest.raises(ProfileError) as exc:
        check_profile(_fake_profile(m), m, {"x": (4, 8)}, "CPUExecutionProvider", 4)
    _one_line(exc)


# ---------------------------------------------------------------------------------------------
# profile.json


def test_save_and_load_round_trip(small, tmp_path):
    m = load_model(small)
    p = _fake_profile(m, nodes=(NodeTime("a", "MatMul", 0.25, "fused", ("b",)), NodeTime("b", "Relu", 0.0, "folded")),
                      provider_options={"device_id": "0"})
    path = save_profile(p, tmp_path / "out" / "profile.json")
    data = json.loads(path.read_text())
    assert data["format"] == "onnxsplit.profile" and data["version"] == 1
    assert data["nodes"][0] == {"name": "a", "op_type": "MatMul", "time_ms": 0.25, "source": "fused", "fused_with": ["b"]}
    assert load_profile(path) == p
    assert [f.name for f in path.parent.iterdir()] == ["profile.json"]  # no temporary file left behind


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not an onnxsplit profile"),
    ('{"format": "onnxsplit.profile", "version": 7}', "version 7 is not supported"),
    ('{"format": "onnxsplit.profile", "version": 1}', "missing field"),
])
def test_bad_profile_files(tmp_path, text, message):
    path = tmp_path / "profile.json"
    path.write_text(text)
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert message in _one_line(exc)


def test_bad_profile_fields(small, tmp_path):
    data = store.profile_to_dict(_fake_profile(load_model(small)))
    for field, value, message in (("source", "guessed", "source 'guessed'"), ("time_ms", -1, "time_ms"),
                                  ("fused_with", "b", "wrong type")):
        broken = json.loads(json.dumps(data))
        broken["nodes"][0][field] = value
        (tmp_path / "p.json").write_text(json.dumps(broken))
        with pytest.raises(ProfileError) as exc:
            load_profile(tmp_path / "p.json")
        assert message in _one_line(exc)
    with pytest.raises(ProfileError) as exc:
        load_profile(tmp_path / "missing.json")
    assert "no such file" in _one_line(exc)


# ---------------------------------------------------------------------------------------------
# The cache


def test_cache_reuses_and_separates(small, tmp_path, monkeypatch):
    calls = []
    real = measure.profile_model

    def counting(*args, **kwargs):
        calls.append(kwargs["threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr(measure, "profile_model", counting)
    m = load_model(small)
    kwargs = dict(input_shapes={"x": (8, 8)}, provider="cpu", provider_options={}, runs=3, warmup=1, cache_dir=tmp_path)
    first = cached_profile(m, threads=1, **kwargs)
    assert cached_profile(m, threads=1, **kwargs) == first
    assert calls == [1]
    cached_profile(m, threads=2, **kwargs)
    assert calls == [1, 2]
    [entry] = [p for p in (tmp_path / "profiles").iterdir() if load_profile(p).threads == 1]
    entry.write_text("garbage")  # a broken entry is measured again and replaced
    assert cached_profile(m, threads=1, **kwargs).threads == 1
    assert calls == [1, 2, 1] and load_profile(entry).threads == 1


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path
    monkeypatch.delenv("ONNXSPLIT_CACHE")
    assert cache.default_cache_dir() == Path.home() / ".cache" / "onnxsplit"


# ---------------------------------------------------------------------------------------------
# `onnxsplit profile`


def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def test_cli_writes_profile_and_summary(small, tmp_path, capsys):
    out = tmp_path / "profile.json"
    code, stdout, err = _cli(["profile", small, "-o", out, "--input-shape", "x:8x8", "--runs", 3, "--warmup", 1], capsys)
    assert code == 0, err
    p = load_profile(out)
    assert p.input_shapes == {"x": (8, 8)} and p.runs == 3 and p.warmup == 1
    assert "end-to-end" in stdout and "time by source" in stdout and "last" in stdout


def test_cli_inputs_give_shapes(small, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", x=np.ones((5, 8), dtype=np.float32))
    out = tmp_path / "p.json"
    code, _, err = _cli(["profile", small, "-o", out, "--inputs", tmp_path / "in.npz", "--runs", 2, "--warmup", 0],
                        capsys)
    assert code == 0, err
    assert load_profile(out).input_shapes == {"x": (5, 8)}


@pytest.mark.parametrize("extra, message", [
    (["--provider", "NoSuch"], "unknown execution provider 'NoSuch'"),
    (["--provider-option", "novalue"], "expected KEY=VALUE"),
    (["--runs", "0"], "--runs must be at least 1, got 0"),
    (["--input-shape", "x:2x8", "--inputs", "IN"], "disagrees with --inputs"),
])
def test_cli_errors_are_one_line(small, tmp_path, capsys, extra, message):
    np.savez(tmp_path / "in.npz", x=np.ones((5, 8), dtype=np.float32))
    extra = [str(tmp_path / "in.npz") if e == "IN" else e for e in extra]
    code, _, err = _cli(["profile", small, "-o", tmp_path / "p.json", *extra], capsys)
    errors = [line for line in err.splitlines() if line.startswith("onnxsplit: error: ")]
    assert code == 1 and len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "p.json").exists()
