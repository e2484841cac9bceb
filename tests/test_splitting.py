"""split()'s handling of user plans by node index, plan stages beyond the devices, and more devices than nodes."""

from __future__ import annotations

import json
import math
import time

import onnx
import pytest
from conftest import split_and_check
from graphs import chain, f32, model, save
from onnx import helper

from onnxsplit import split
from onnxsplit.devices import DeviceKind, Devices, Link
from onnxsplit.cli.main import main
from onnxsplit.errors import OnnxSplitError, PlanError, UsageError
from onnxsplit.splitting import cap_devices


def _unnamed(tmp_path):
    """Four unnamed nodes, two of one op type: split names them Relu_0, Neg_0, Relu_1, Abs_0."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Abs", ["c"], ["y"])]
    return save(model(nodes, [f32("x", [2, 3])], [f32("y", [2, 3])]), tmp_path / "unnamed.onnx")


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("doc", [
    {"0": 0, "1": 0, "2": 1, "3": 1},  # indices in topological order
    [0, 0, 1, 1],  # a list of stages in node order
    {"Relu_0": 0, "Neg_0": 0, "Relu_1": 1, "Abs_0": 1},  # the names split gives unnamed nodes
    {"0": 0, "Neg_0": 0, "2": 1, "Abs_0": 1},  # both at once
])
def test_a_plan_names_unnamed_nodes_by_index_or_by_given_name(tmp_path, doc):
    result, report = split_and_check(_unnamed(tmp_path), tmp_path / "out", 2, plan=_write(tmp_path / "p.json", doc),
                                     costs="estimate")
    assert report.passed and result.plan.stage_of == (0, 0, 1, 1)
    assert [h.name for h in result.manifest.handoffs] == ["b"]


@pytest.mark.parametrize("doc, match", [
    ({"0": 0, "1": 0, "2": 1, "7": 1}, "node index 7 is out of range \\(the model has 4 nodes"),
    ({"0": 0, "Relu_0": 1, "1": 0, "2": 1, "3": 1}, "'Relu_0' \\(index 0\\) is placed twice"),
    ({"0": 0, "1": 0, "2": 1, "3": 5}, "'Abs_0' is on stage 5, but only 2 devices are given"),
    ([0, 0, 1, 2], "'Abs_0' is on stage 2, but only 2 devices are given"),
    ({"0": 0, "nosuch": 1}, "node 'nosuch' is not in the model"),
    ({"0": 0, "1": 0, "2": 1}, "does not place node 'Abs_0'"),
])
def test_bad_plan_files_are_refused_in_one_line(tmp_path, doc, match):
    with pytest.raises(PlanError, match=match) as err:
        split(_unnamed(tmp_path), tmp_path / "out", devices=2, plan=_write(tmp_path / "p.json", doc), costs="estimate")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_plan_stages_may_skip_numbers_below_the_device_count(tmp_path):
    result, report = split_and_check(_unnamed(tmp_path), tmp_path / "out", 4,
                                     plan=_write(tmp_path / "p.json", [1, 1, 3, 3]), costs="estimate")
    assert report.passed and len(result.manifest.stages) == 2


def test_more_devices_than_nodes_are_capped_quickly(tmp_path):
    src = save(chain(2), tmp_path / "chain.onnx")
    start = time.perf_counter()
    result = split(src, tmp_path / "out", devices=99_999_999, costs="estimate")
    assert time.perf_counter() - start < 30
    assert result.devices.count <= len(result.graph.names)
    assert any("of the 99999999 devices" in w for w in result.warnings)
    names = [n.name for n in chain(2).graph.node]
    plan = _write(tmp_path / "p.json", {name: 0 if i < 4 else 5_000_000 for i, name in enumerate(names)})
    result = split(src, tmp_path / "out2", devices=99_999_999, costs="estimate", plan=plan)
    assert result.devices.count <= len(result.graph.names)


def test_cap_devices_keeps_every_kind_and_the_links_between_kept_devices():
    slow, fast = Link(1e9), Link(1e11)
    devices = Devices((DeviceKind("cpu", 5, memory=1e9), DeviceKind("gpu", 3, device_ids=(4, 5, 6))),
                      pairs=(((0, 1), slow), ((1, 6), fast), ((5, 7), fast), ((4, 5), slow)))
    capped = cap_devices(devices, 2)
    assert [(k.name, k.count, k.device_ids) for k in capped.kinds] == [("cpu", 2, ()), ("gpu", 2, (4, 5))]
    # cpu 0, 1 stay 0, 1; gpu 5, 6 (the first two) become 2, 3; cpu 4 and gpu 7 are gone.
    assert capped.pairs == (((0, 1), slow), ((1, 3), fast))
    assert capped.kinds[0].memory == 1e9
    assert cap_devices(devices, 8) is devices
    assert cap_devices(devices, 0).count == 2 and math.isinf(capped.kinds[1].memory)


def test_costs_are_measured_on_the_representative_inputs(tmp_path, monkeypatch):
    import numpy as np

    from onnxsplit.profile import measure

    seen = []
    real = measure.profile_model

    def spy(model, **kwargs):
        seen.append(kwargs.get("feeds"))
        return real(model, **kwargs)

    monkeypatch.setattr(measure, "profile_model", spy)
    feeds = {"x": np.full((2, 3), 0.5, np.float32)}
    result = split(_unnamed(tmp_path), tmp_path / "out", devices=2, costs="measure", inputs=feeds)
    assert len(seen) == 1 and np.array_equal(seen[0]["x"], feeds["x"])
    assert dict(result.manifest.input_shapes) == {"x": (2, 3)}


def test_a_sequence_input_cannot_be_measured_and_says_so(tmp_path):
    from onnx import TensorProto

    from onnxsplit.errors import UsageError

    nodes = [helper.make_node("SequenceLength", ["s"], ["n"], name="length")]
    src = save(model(nodes, [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)],
                     [helper.make_tensor_value_info("n", TensorProto.INT64, [])], opset=18), tmp_path / "s.onnx")
    with pytest.raises(UsageError, match="input 's' is not a tensor"):
        split(src, tmp_path / "out", devices=2, costs="measure")


# -- estimated costs: a model nothing can run is refused before anything is written ------------------------------------


def _unknown_op(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Frobnicate", ["a"], ["y"], name="frob", domain="com.example")]
    m = model(nodes, [f32("x", [2, 3])], [f32("y", [2, 3])], extra_opsets=[helper.make_opsetid("com.example", 1)])
    path = tmp_path / "unknown.onnx"
    onnx.save_model(m, str(path))  # the checker cannot know a custom domain's op either
    return path


def _defined_twice(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r1"), helper.make_node("Neg", ["x"], ["a"], name="n1"),
             helper.make_node("Abs", ["a"], ["y"], name="abs")]
    path = tmp_path / "twice.onnx"
    onnx.save_model(model(nodes, [f32("x", [2, 3])], [f32("y", [2, 3])]), str(path))
    return path


def _unrunnable(name, *, inputs=("x",), outputs=("y",), **kwargs):
    """Relu, Neg: a model that is wrong only in the way ``kwargs`` or the names of its inputs and outputs make it."""
    def make(tmp_path):
        nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"), helper.make_node("Neg", ["a"], ["y"], name="n")]
        path = tmp_path / f"{name}.onnx"
        onnx.save_model(model(nodes, [f32(i, [2, 3]) for i in inputs], [f32(o, [2, 3]) for o in outputs], **kwargs),
                        str(path))
        return path
    return make


@pytest.mark.parametrize("make, needle", [
    (_unknown_op, "node 'frob' (com.example:Frobnicate)"),
    (_defined_twice, "'a'"),
    (_unrunnable("opset", opset=onnx.defs.onnx_opset_version() + 50), "is newer than"),
    (_unrunnable("ir", ir=onnx.IR_VERSION + 50), "IR version"),
    (_unrunnable("no-outputs", outputs=()), "no outputs"),
    (_unrunnable("two-inputs", inputs=("x", "x")), "input 'x' twice"),
])
def test_estimated_costs_refuse_a_model_onnxruntime_cannot_run(tmp_path, capsys, make, needle):
    path = make(tmp_path)
    with pytest.raises(OnnxSplitError) as info:
        split(path, tmp_path / "out", devices=2, costs="estimate")
    assert "\n" not in str(info.value) and needle in str(info.value), str(info.value)
    assert not (tmp_path / "out").exists()
    code = main(["split", str(path), "--costs", "estimate", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("onnxsplit: error: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_estimated_costs_refuse_a_provider_not_installed_here(tmp_path):
    path = save(chain(4), tmp_path / "chain.onnx")
    gpus = Devices((DeviceKind("gpu", 2, provider="CUDAExecutionProvider"),))
    with pytest.raises(UsageError, match="'CUDAExecutionProvider' is not available here"):
        split(path, tmp_path / "out", devices=gpus, costs="estimate")
    assert not (tmp_path / "out").exists()
