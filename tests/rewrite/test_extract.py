"""The rewrite on tiny graphs: what each stage holds and how tensors are routed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphs import chain, f32, model, save, weight
from conftest import split_and_check
from onnxsplit.errors import PlanError


def _plan(path, mapping):
    path.write_text(json.dumps(mapping))
    return path


def _load_stage(outdir, k):
    return onnx.load(str(outdir / f"stage_{k}.onnx"))


def test_constants_are_copied_not_handed_off(tmp_path):
    src = save(chain(6), tmp_path / "chain.onnx")
    names = [n.name for n in chain(6).graph.node if n.op_type != "Constant"]
    mapping = {n: i * 3 // len(names) for i, n in enumerate(names)}
    result, report = split_and_check(src, tmp_path / "out", 3, plan=_plan(tmp_path / "p.json", mapping))
    assert report.passed
    assert len(result.manifest.stages) == 3
    handed = {h.name for h in result.manifest.handoffs}
    assert "c" not in handed
    stage_ops = [[n.op_type for n in _load_stage(tmp_path / "out", k).graph.node] for k in range(3)]
    assert stage_ops[0].count("Constant") == 1 and stage_ops[-1].count("Constant") == 1


def test_graph_input_goes_straight_to_every_reader_and_tensor_sent_once(tmp_path):
    src = save(chain(6), tmp_path / "chain.onnx")
    names = [n.name for n in chain(6).graph.node]
    # Stage 0: first layer; stage 1: middle; stage 2: the rest, which reads x and r0 again.
    mapping = {}
    for n in names:
        mapping[n] = 0 if n in ("mm0", "scale0", "relu0") else 1 if n in ("mm1", "relu1", "mm2", "relu2") else 2
    mapping.pop("const")
    result, report = split_and_check(src, tmp_path / "out", 3, plan=_plan(tmp_path / "p.json", mapping))
    assert report.passed
    m = result.manifest
    last = m.stages[2]
    assert next(i for i in last.inputs if i.name == "x").producer is None  # "from": "graph"
    r0 = [h for h in m.handoffs if h.name == "r0"]
    assert len(r0) == 1 and r0[0].producer == 0 and r0[0].consumers == (1, 2)
    assert r0[0].bytes_per_sample == 8 * 4  # N defaults to 1
    assert r0[0].shape == ("N", 8)  # the symbolic dim is kept
    assert m.outputs[0].stage == 2
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {"name": "x", "from": "graph"}.items() <= next(i for i in doc["stages"][2]["inputs"] if i["name"] == "x").items()


def test_stage_cycle_is_rejected_with_the_nodes(tmp_path):
    src = save(chain(4), tmp_path / "chain.onnx")
    names = [n.name for n in chain(4).graph.node if n.name != "const"]
    mapping = {n: 0 for n in names}
    mapping["mm1"] = 1  # mm1 reads stage 0 and feeds stage 0 back
    with pytest.raises(PlanError, match="feed each other.*mm1"):
        split_and_check(src, tmp_path / "out", 2, plan=_plan(tmp_path / "p.json", mapping))
    assert not (tmp_path / "out").exists()


def test_plan_with_unknown_node(tmp_path):
    src = save(chain(2), tmp_path / "chain.onnx")
    with pytest.raises(PlanError, match="nosuch"):
        split_and_check(src, tmp_path / "out", 2, plan=_plan(tmp_path / "p.json", {"nosuch": 0}))


def _outer_scope_model():
    """An If whose branches read h, made by an earlier node; an initializer read only inside a branch."""
    then_g = helper.make_graph([helper.make_node("Mul", ["h", "K"], ["t"], name="then_mul")], "then", [], [f32("t", None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["t2"], name="else_neg")], "else", [], [f32("t2", None)])
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["h0"], name="mm0"),
        helper.make_node("Relu", ["h0"], ["h"], name="relu"),
        helper.make_node("ReduceSum", ["h"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["b"], name="branch", then_branch=then_g, else_branch=else_g),
        helper.make_node("Add", ["b", "h"], ["y"], name="out"),
    ]
    inits = [weight("W0", [4, 4]), numpy_helper.from_array(np.float32(0), "zero"), weight("K", [4], seed=3)]
    return model(nodes, [f32("x", [2, 4])], [f32("y", [2, 4])], inits)


def test_outer_scope_reads_become_stage_inputs(tmp_path):
    src = save(_outer_scope_model(), tmp_path / "if.onnx")
    mapping = {"mm0": 0, "relu": 0, "sum": 1, "gt": 1, "branch": 1, "out": 1}
    result, report = split_and_check(src, tmp_path / "out", 2, plan=_plan(tmp_path / "p.json", mapping))
    assert report.passed
    stage1 = _load_stage(tmp_path / "out", 1)
    assert "h" in [i.name for i in stage1.graph.input]
    assert "K" in [t.name for t in stage1.graph.initializer]  # read only inside the If body
    assert "K" not in [t.name for t in _load_stage(tmp_path / "out", 0).graph.initializer]


def test_old_ir_unnamed_nodes_and_optional_inputs(tmp_path):
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["a"]),
        helper.make_node("Clip", ["a", "", "hi"], ["b"]),  # optional min left empty
        helper.make_node("MatMul", ["b", "W1"], ["c"], name="dup"),
        helper.make_node("Relu", ["c"], ["y"], name="dup"),
    ]
    inits = [weight("W0", [4, 4]), weight("W1", [4, 4], seed=1), numpy_helper.from_array(np.float32(0.2), "hi")]
    m = model(nodes, [f32("x", [1, 4])] + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits],
              [f32("y", [1, 4])], inits, opset=11, ir=3)
    src = save(m, tmp_path / "old.onnx")
    mapping = {"MatMul_0": 0, "Clip_0": 1, "dup_0": 2, "dup_1": 3}
    result, report = split_and_check(src, tmp_path / "out", 4, plan=_plan(tmp_path / "p.json", mapping))
    assert report.passed and len(result.manifest.stages) == 4
    names = [n.name for k in range(len(result.manifest.stages)) for n in _load_stage(tmp_path / "out", k).graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert [i.name for i in result.manifest.inputs] == ["x"]  # initializers are not model inputs


def test_untyped_handoff_is_typed_by_running(tmp_path):
    # onnx's shape inference does not know com.microsoft ops; onnxruntime runs them.
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["a"], name="mm0"),
        helper.make_node("Gelu", ["a"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "W1"], ["y"], name="mm1"),
    ]
    m = model(nodes, [f32("x", [3, 4])], [f32("y", [3, 4])], [weight("W0", [4, 4]), weight("W1", [4, 4], seed=1)],
              extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    onnx.save_model(m, str(tmp_path / "ms.onnx"))
    mapping = {"mm0": 0, "gelu": 0, "mm1": 1}
    result, report = split_and_check(tmp_path / "ms.onnx", tmp_path / "out", 2, plan=_plan(tmp_path / "p.json", mapping))
    assert report.passed
    g = result.manifest.handoffs[0]
    assert g.name == "g" and g.dtype == "float32" and g.bytes_per_sample == 3 * 4 * 4
    stage1 = _load_stage(tmp_path / "out", 1)
    assert [o.domain for o in stage1.opset_import] == [""]  # only the opsets a stage uses


def test_stage_metadata_and_producer_kept(tmp_path):
    m = chain(3)
    m.producer_name = "tests"
    m.metadata_props.add(key="author", value="onnxsplit")
    src = save(m, tmp_path / "chain.onnx")
    names = [n.name for n in m.graph.node if n.op_type != "Constant"]
    mapping = {n: int(i >= len(names) // 2) for i, n in enumerate(names)}
    split_and_check(src, tmp_path / "out", 2, plan=_plan(tmp_path / "p.json", mapping))
    for k in range(2):
        s = _load_stage(tmp_path / "out", k)
        props = {p.key: p.value for p in s.metadata_props}
        assert props["author"] == "onnxsplit" and props["onnxsplit.stage"] == str(k)
        assert s.producer_name == "tests" and s.ir_version == m.ir_version


def test_plan_object_cuts_like_the_plan_file(tmp_path):
    from onnxsplit.solve.plan import Plan
    from onnxsplit.splitting import split

    src = save(chain(6), tmp_path / "chain.onnx")
    names = [n.name for n in chain(6).graph.node if n.op_type != "Constant"]
    mapping = {n: i * 3 // len(names) for i, n in enumerate(names)}
    by_file = split(src, tmp_path / "file", devices=3, plan=_plan(tmp_path / "p.json", mapping), costs="estimate")
    # A Plan names cost-graph node ids in the model's node order; const nodes' stages do not matter.
    stage_of = tuple(mapping.get(name, 0) for name in by_file.graph.names)
    plan = Plan(stage_of, (0, 1, 2), value=0.0, lower_bound=0.0, solver="user")
    by_object = split(src, tmp_path / "object", devices=3, plan=plan, costs="estimate")
    assert by_object.manifest == by_file.manifest
    for name in ("manifest.json", "plan.json"):
        assert (tmp_path / "object" / name).read_text() == (tmp_path / "file" / name).read_text()

    moved = split(src, tmp_path / "moved", devices=3, plan=Plan(stage_of, (2, 0, 1), 0.0, 0.0, "user"),
                  costs="estimate")
    assert [s.device for s in moved.manifest.stages] == [2, 0, 1]  # a Plan keeps its stages' devices
    with pytest.raises(PlanError, match="places 2 nodes"):
        split(src, tmp_path / "bad", devices=3, plan=Plan((0, 1), (0, 1), 0.0, 0.0, "user"), costs="estimate")
    with pytest.raises(PlanError, match="not distinct devices"):
        split(src, tmp_path / "bad", devices=3, plan=Plan(stage_of, (0, 1, 3), 0.0, 0.0, "user"), costs="estimate")
    assert not (tmp_path / "bad").exists()
