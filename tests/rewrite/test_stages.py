"""cut_stages on graphs that used to break it: dead nodes, a model of constants only."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import split_and_check
from graphs import f32, model, save
from onnx import helper, numpy_helper

from onnxsplit.graphinfo import graph_info
from onnxsplit.model import load_model
from onnxsplit.errors import PlanError
from onnxsplit.rewrite.stages import cut_stages, dead_nodes


def _plan(path, mapping):
    path.write_text(json.dumps(mapping))
    return path


def _with_dead_branch(tmp_path):
    """x -> a -> b -> y, and a dead branch: 'dead1' reads a, 'dead2' reads dead1, nothing reads dead2."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="a"),
        helper.make_node("Neg", ["a"], ["d1"], name="dead1"),
        helper.make_node("Neg", ["a"], ["b"], name="b"),
        helper.make_node("Abs", ["d1"], ["d2"], name="dead2"),
        helper.make_node("Sigmoid", ["b"], ["y"], name="y"),
    ]
    return save(model(nodes, [f32("x", [2, 3])], [f32("y", [2, 3])]), tmp_path / "dead.onnx")


def test_dead_nodes_are_the_ones_no_output_depends_on(tmp_path):
    info = graph_info(load_model(_with_dead_branch(tmp_path)))
    assert sorted(info.names[v] for v in dead_nodes(info)) == ["dead1", "dead2"]


def test_a_stage_of_dead_nodes_alone_is_never_made(tmp_path):
    src = _with_dead_branch(tmp_path)
    # The plan puts the dead branch alone on stage 3: that stage would have no outputs.
    mapping = {"a": 0, "b": 1, "y": 2, "dead1": 3, "dead2": 3}
    result, report = split_and_check(src, tmp_path / "out", 4, plan=_plan(tmp_path / "p.json", mapping),
                                     costs="estimate")
    assert report.passed
    stages = result.manifest.stages
    assert len(stages) == 3 and all(s.outputs for s in stages)
    assert any("3 of the 4 devices" in w for w in result.warnings)
    # The dead nodes joined the stage of their producer: nothing is handed off for them.
    stage0 = onnx.load(str(tmp_path / "out" / "stage_0.onnx"))
    assert {n.name for n in stage0.graph.node} == {"a", "dead1", "dead2"}
    assert [h.name for h in result.manifest.handoffs] == ["a", "b"]
    assert result.plan.stage_of == (0, 0, 1, 0, 2)


def test_the_solver_never_leaves_a_dead_node_alone(tmp_path):
    result, report = split_and_check(_with_dead_branch(tmp_path), tmp_path / "out", 4, costs="estimate")
    assert report.passed and all(s.outputs for s in result.manifest.stages)


def test_a_lone_constant_is_one_stage(tmp_path):
    value = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))
    nodes = [helper.make_node("Constant", [], ["values"], name="c", value=value)]
    src = save(model(nodes, [], [f32("values", [2, 3])]), tmp_path / "const.onnx")
    for case, kwargs in (("solver", {}), ("plan", {"plan": _plan(tmp_path / "p.json", {"c": 0})})):
        result, report = split_and_check(src, tmp_path / case, 2, costs="estimate", **kwargs)
        assert report.passed
        assert len(result.manifest.stages) == 1 and result.manifest.outputs[0].stage == 0
        assert result.plan.stage_of == (0,)


def test_a_model_whose_outputs_are_all_constant_keeps_its_dead_nodes_in_one_stage(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="unused"),
        helper.make_node("Constant", [], ["y"], name="c", value=numpy_helper.from_array(np.ones(2, np.float32))),
    ]
    src = save(model(nodes, [f32("x", [2])], [f32("y", [2])]), tmp_path / "m.onnx")
    info = graph_info(load_model(src))
    cut = cut_stages(info, {0: 5})
    assert len(cut.stages) == 1 and cut.stages[0].outputs == ("y",)
    result, report = split_and_check(src, tmp_path / "out", 2, costs="estimate")
    assert report.passed and len(result.manifest.stages) == 1


@pytest.mark.parametrize("stage", [0, 1])
def test_every_stage_has_an_output(tmp_path, stage):
    info = graph_info(load_model(_with_dead_branch(tmp_path)))
    cut = cut_stages(info, {0: 0, 1: stage, 2: 1, 3: 1, 4: 1})
    assert all(s.outputs for s in cut.stages)
    assert cut.stages[0].label == 0 and cut.stages[-1].label == 1


# -- cut_stages on models written as ONNX text ----------------------------------------------------------------------

DIAMOND = """
<ir_version: 8, opset_import: ["" : 17]>
diamond (float[N, 4] x) => (float[N, 4] y, float[N, 4] side) {
    half = Constant <value = float {0.5}> ()
    a = Relu (x)
    b = Mul (a, half)
    c = Neg (a)
    d = Abs (x)
    e = Add (b, c)
    y = Add (e, d)
    side = Sigmoid (c)
}
"""


def _info(tmp_path, text: str):
    path = tmp_path / "m.onnx"
    onnx.save_model(onnx.parser.parse_model(text), str(path))
    m = load_model(path)
    return graph_info(m)


def _stages(info, placement: dict[str, int]) -> dict[int, int]:
    return {info.names.index(name): s for name, s in placement.items()}


def test_a_cut_hands_off_each_tensor_once_and_graph_inputs_go_straight(tmp_path):
    info = _info(tmp_path, DIAMOND)
    names = info.names  # unnamed nodes are named OPTYPE_K by the loader
    const = [v for v in range(len(names)) if v in info.const]
    assert [names[v] for v in const] == ["Constant_0"]
    cut = cut_stages(info, _stages(info, {"Relu_0": 0, "Neg_0": 0, "Abs_0": 0, "Mul_0": 1, "Add_0": 1,
                                          "Add_1": 1, "Sigmoid_0": 1}))
    first, second = cut.stages
    assert first.outputs == ("a", "c", "d") and second.inputs == ("a", "c", "d")
    assert {n: cut.source[n] for n in second.inputs} == {"a": 0, "c": 0, "d": 0}
    assert cut.consumers["a"] == (1,) and cut.consumers["c"] == (1,)  # c is read twice in stage 1, sent once
    assert cut.source["x"] is None and first.inputs == ("x",)
    assert cut.output_stage == {"y": 1, "side": 1}
    # The Constant is copied into the stage that reads it and never handed off.
    assert names.index("Constant_0") in second.nodes and names.index("Constant_0") not in second.own
    assert "half" not in cut.consumers and "half" not in second.inputs


def test_a_graph_input_read_by_two_stages_goes_to_each(tmp_path):
    info = _info(tmp_path, DIAMOND)
    cut = cut_stages(info, _stages(info, {"Relu_0": 0, "Neg_0": 0, "Mul_0": 0, "Add_0": 0, "Sigmoid_0": 0,
                                          "Abs_0": 1, "Add_1": 1}))
    first, second = cut.stages
    assert "x" in first.inputs and "x" in second.inputs and cut.source["x"] is None
    assert second.outputs == ("y",) and first.outputs == ("e", "side")
    assert cut.output_stage == {"y": 1, "side": 0}


def test_stages_that_feed_each_other_are_refused_naming_the_nodes(tmp_path):
    info = _info(tmp_path, DIAMOND)
    with pytest.raises(PlanError) as exc:
        cut_stages(info, _stages(info, {"Relu_0": 0, "Neg_0": 1, "Mul_0": 0, "Add_0": 0, "Abs_0": 0,
                                        "Add_1": 0, "Sigmoid_0": 1}))
    message = str(exc.value)
    assert "\n" not in message and "'Neg_0' (stage 1) feeds 'Add_0' (stage 0)" in message, message


def test_stages_are_numbered_in_pipeline_order(tmp_path):
    """A plan may number its stages in any order; the cut numbers them so each reads only earlier ones."""
    info = _info(tmp_path, DIAMOND)
    cut = cut_stages(info, _stages(info, {"Relu_0": 5, "Neg_0": 5, "Abs_0": 5, "Mul_0": 2, "Add_0": 2,
                                          "Add_1": 2, "Sigmoid_0": 2}))
    assert [s.index for s in cut.stages] == [0, 1] and [s.label for s in cut.stages] == [5, 2]
    assert cut.stages[1].inputs == ("a", "c", "d")


def test_a_split_of_the_text_model_validates_with_estimated_costs(tmp_path):
    path = tmp_path / "diamond.onnx"
    onnx.save_model(onnx.parser.parse_model(DIAMOND), str(path))
    plan = _plan(tmp_path / "plan.json", {"Relu_0": 0, "Neg_0": 0, "Abs_0": 1, "Mul_0": 1, "Add_0": 2, "Add_1": 2,
                                          "Sigmoid_0": 2})
    result, report = split_and_check(path, tmp_path / "out", 3, costs="estimate", input_shapes={"x": (2, 4)},
                                     plan=plan)
    assert report.passed and len(result.manifest.stages) == 3
    assert [h.name for h in result.manifest.handoffs] == ["a", "c", "b", "d"]
