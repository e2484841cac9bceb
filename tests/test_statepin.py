"""State pairs end to end: a decoder's caches stay on the stage of their layer, whatever the solver."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import MODELS, split_and_check
from graphs import chain, save
from onnxsplit.cli.main import main
from onnxsplit.devices import Link, identical_devices
from onnxsplit.errors import InfeasibleError, PlanError, UsageError
from onnxsplit.manifest import Manifest, StateSpec, load_manifest
from onnxsplit.splitting import split
from onnxsplit.state import StatePair
from stategraphs import decoder, decoder_shapes, layer_of

LAYERS, HEADS, HEAD_DIM = 4, 2, 8
SHAPES = decoder_shapes(LAYERS, heads=HEADS, head_dim=HEAD_DIM, past_len=4)
ODD = dict(past="cache_in_{i}_{kv}", present="cache_out_{i}_{kv}")  # names no convention knows


def _free_links(n: int):
    """Devices whose links cost nothing: the solver then cuts wherever compute balances best, inside a layer too."""
    return replace(identical_devices(n), link=Link(bandwidth=1e15, latency=0.0))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    work = tmp_path_factory.mktemp("statepin")
    return {"optimum": save(decoder(LAYERS, hidden=HEADS * HEAD_DIM), work / "decoder.onnx"),
            "odd": save(decoder(LAYERS, hidden=HEADS * HEAD_DIM, **ODD), work / "odd.onnx")}


def _pairs(fmt=None):
    past, present = (fmt or {}).get("past", "past_key_values.{i}.{kv}"), (fmt or {}).get("present", "present.{i}.{kv}")
    return [StatePair(past.format(i=i, kv=kv), present.format(i=i, kv=kv)) for i in range(LAYERS)
            for kv in ("key", "value")]


def _separated(m: Manifest, pairs) -> list[str]:
    """The pairs a split separates: the past read on a stage that does not make the present, or the present sent on."""
    made = {o.name: o.stage for o in m.outputs}
    sent = {h.name for h in m.handoffs}
    bad = []
    for p in pairs:
        readers = {s.index for s in m.stages if any(i.name == p.input for i in s.inputs)}
        if readers != {made[p.output]} or p.output in sent:
            bad.append(str(p))
    return bad


def test_pairs_land_in_the_manifest_with_their_stage(models, tmp_path):
    result, report = split_and_check(models["optimum"], tmp_path / "out", _free_links(3), input_shapes=SHAPES,
                                     costs="estimate")
    assert report.passed  # the split is still an ordinary model split
    m = load_manifest(tmp_path / "out")
    assert [(s.input, s.output) for s in m.state] == [(p.input, p.output) for p in _pairs()]
    for spec in m.state:
        stage = m.stages[spec.stage]
        assert spec.input in [i.name for i in stage.inputs if i.producer is None]
        assert spec.output in [o.name for o in stage.outputs if o.graph_output and not o.consumers]
    assert {s.stage for s in m.state} == {0, 1, 2}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["state"][0] == m.state[0].to_json()
    # The plan's cost graph holds one co-location group per pair.
    assert len(result.graph.groups) == 2 * LAYERS


def _bundled_shapes(path, *, past_len=6):
    """One decode step after ``past_len`` tokens, for a bundled decoder (Optimum names)."""
    import onnx

    shapes = {"input_ids": (1, 1), "position_ids": (1, 1), "attention_mask": (1, past_len + 1)}
    for i in onnx.load(str(path)).graph.input:
        if i.name.startswith("past_key_values."):
            dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
            shapes[i.name] = (1, dims[1], past_len, dims[3])
    return shapes


@pytest.mark.parametrize("solver", ["auto", "dp", "ip", "linear", "greedy"])
@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("which", ["built", "bundled"])
def test_no_solver_separates_a_pair(models, tmp_path, solver, count, which):
    if which == "built":  # free links: unpinned, these solvers cut through caches (see the test below)
        src, devices, shapes, layers = models["optimum"], _free_links(count), SHAPES, LAYERS
    else:
        src, devices, layers = MODELS / "decoder.onnx", identical_devices(count), 4
        shapes = _bundled_shapes(src)
    result = split(src, tmp_path / "out", devices=devices, input_shapes=shapes, costs="estimate", solver=solver,
                   time_limit=30)
    m = result.manifest
    assert len(m.stages) > 1 and len(m.state) == 2 * layers
    assert _separated(m, [StatePair(s.input, s.output) for s in m.state]) == []
    load_manifest(tmp_path / "out")  # the checked reader agrees


def test_a_real_exporters_decoder(tmp_path):
    """GPT-2 as Optimum exports it: its first cache is also read by a Shape node (the past length) far upstream."""
    src = MODELS / "gpt2_tiny.onnx"
    result, report = split_and_check(src, tmp_path / "out", 3, input_shapes=_bundled_shapes(src), costs="estimate")
    assert report.passed
    m = result.manifest
    assert [(s.input, s.output) for s in m.state] == [(f"past_key_values.{i}.{kv}", f"present.{i}.{kv}")
                                                      for i in range(2) for kv in ("key", "value")]
    assert _separated(m, [StatePair(s.input, s.output) for s in m.state]) == []


def test_unpinned_pairs_would_be_separated(models, tmp_path):
    """Without the pairs, the same solver on the same devices cuts through a layer's cache: the pins do the work."""
    devices = _free_links(3)
    free = split(models["odd"], tmp_path / "free", devices=devices, input_shapes=_odd_shapes(), costs="estimate",
                 solver="dp")
    assert free.manifest.state == () and _separated(free.manifest, _pairs(ODD))
    pinned = split(models["odd"], tmp_path / "pinned", devices=devices, input_shapes=_odd_shapes(),
                   costs="estimate", solver="dp", state=_pairs(ODD))
    assert _separated(pinned.manifest, _pairs(ODD)) == []
    assert [StatePair(s.input, s.output) for s in pinned.manifest.state] == _pairs(ODD)


def _odd_shapes():
    return decoder_shapes(LAYERS, heads=HEADS, head_dim=HEAD_DIM, past_len=4, past=ODD["past"])


def _separating_plan(model_path, path):
    """Layer 0's caches on stage 0, its attention on stage 1."""
    import onnx

    names = [n.name for n in onnx.load(str(model_path)).graph.node]
    cut = names.index("l0_value_cache")
    path.write_text(json.dumps({n: 0 if j <= cut else 1 for j, n in enumerate(names)}))
    return path


def test_a_plan_that_separates_a_pair_is_refused(models, tmp_path, capsys):
    plan = _separating_plan(models["optimum"], tmp_path / "plan.json")
    with pytest.raises(PlanError, match=r"^the plan separates state pair past_key_values\.0\.key:present\.0\.key: "
                                        r"its output is made on stage 0 and sent to stage 1$"):
        split(models["optimum"], tmp_path / "out", devices=2, plan=plan, input_shapes=SHAPES, costs="estimate")
    assert not (tmp_path / "out").exists()
    shapes = [f"--input-shape={k}:{'x'.join(map(str, v))}" for k, v in SHAPES.items()]
    assert main(["split", str(models["optimum"]), "-o", str(tmp_path / "out"), "--plan", str(plan),
                 "--costs", "estimate", *shapes]) == 1
    err = capsys.readouterr().err
    assert err.startswith("onnxsplit: error: the plan separates state pair past_key_values.0.key:present.0.key")
    assert err.count("\n") == 1


def test_declared_pairs_with_other_names(models, tmp_path, capsys):
    shapes = [f"--input-shape={k}:{'x'.join(map(str, v))}" for k, v in _odd_shapes().items()]
    declared = [f"--state={p}" for p in _pairs(ODD)[:2]]
    assert main(["split", str(models["odd"]), "-o", str(tmp_path / "out"), "--devices", "2", "--costs", "estimate",
                 *declared, *shapes]) == 0
    capsys.readouterr()
    m = load_manifest(tmp_path / "out")
    assert [(s.input, s.output) for s in m.state] == [("cache_in_0_key", "cache_out_0_key"),
                                                      ("cache_in_0_value", "cache_out_0_value")]
    assert m.state[0].stage == m.state[1].stage == next(o.stage for o in m.outputs if o.name == "cache_out_0_key")


def _plan_by_layer(model_path, path):
    import onnx

    names = [n.name for n in onnx.load(str(model_path)).graph.node]
    path.write_text(json.dumps({n: layer_of(n, last=LAYERS - 1) for n in names}))
    return path


def test_stage_memory_counts_the_caches(models, tmp_path):
    plan = _plan_by_layer(models["optimum"], tmp_path / "plan.json")
    common = dict(devices=LAYERS, plan=plan, input_shapes=SHAPES, costs="estimate")
    plain = split(models["optimum"], tmp_path / "plain", **common)
    cached = split(models["optimum"], tmp_path / "cached", max_seq_len=32, max_batch=3, **common)
    # [batch 3, heads 2, 32 positions, head_dim 8] float32, a key and a value per layer, one layer per stage.
    per_layer = 2 * 3 * HEADS * 32 * HEAD_DIM * 4
    def memory(name):
        return [s["memory_bytes"] for s in json.loads((tmp_path / name / "plan.json").read_text())["stages"]]

    assert [a - b for a, b in zip(memory("cached"), memory("plain"))] == [per_layer] * LAYERS
    # Without a maximum batch the caches count at the input shapes' batch (1).
    split(models["optimum"], tmp_path / "one", max_seq_len=32, **common)
    assert [a - b for a, b in zip(memory("one"), memory("plain"))] == [per_layer // 3] * LAYERS
    assert cached.manifest.to_json()["state"] == plain.manifest.to_json()["state"]  # sizes are the plan's business


def test_a_cache_too_large_for_every_device_is_one_line(models, tmp_path, capsys):
    with pytest.raises(InfeasibleError, match=r"^state pair past_key_values\.0\.key:present\.0\.key: its cache needs "
                                              r"8192 bytes at batch 2 and sequence length 64, more than any device"):
        split(models["optimum"], tmp_path / "out", devices=identical_devices(2, memory=8000), input_shapes=SHAPES,
              costs="estimate", max_seq_len=64, max_batch=2)
    shapes = [f"--input-shape={k}:{'x'.join(map(str, v))}" for k, v in SHAPES.items()]
    assert main(["split", str(models["optimum"]), "-o", str(tmp_path / "out"), "--devices", "2", "--device-memory",
                 "8000", "--max-seq-len", "64", "--max-batch", "2", "--costs", "estimate", *shapes]) == 1
    err = capsys.readouterr().err
    assert err.startswith("onnxsplit: error: state pair past_key_values.0.key:present.0.key: its cache needs 8192 "
                          "bytes") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_stage_with_its_caches_over_memory_is_refused(models, tmp_path):
    """A given plan whose stage fits without its caches, and not with them."""
    plan = _plan_by_layer(models["optimum"], tmp_path / "plan.json")
    common = dict(plan=plan, input_shapes=SHAPES, costs="estimate")
    plain = split(models["optimum"], tmp_path / "plain", devices=LAYERS, **common)
    need = max(s.weight_bytes + s.activation_peak_bytes for s in plain.manifest.stages)
    with pytest.raises(InfeasibleError, match=r"caches 1024\) but its cpu device has"):
        split(models["optimum"], tmp_path / "out", devices=identical_devices(LAYERS, memory=need + 100),
              max_seq_len=8, max_batch=1, **common)


def test_a_batch_without_a_length_is_refused(models, tmp_path):
    with pytest.raises(UsageError, match="needs a maximum sequence length"):
        split(models["optimum"], tmp_path / "out", devices=2, input_shapes=SHAPES, costs="estimate", max_batch=2)


def test_a_model_without_state_writes_no_state(tmp_path):
    src = save(chain(4), tmp_path / "chain.onnx")
    result = split(src, tmp_path / "out", devices=2, costs="estimate")
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert list(doc) == ["format", "version", "source", "input_shapes", "inputs", "outputs", "stages", "handoffs",
                         "plan", "predicted_bottleneck_ms"]
    assert result.manifest.state == () and result.graph.groups == ()


def test_state_spec_is_a_value():
    spec = StateSpec("past_key_values.0.key", "present.0.key", 1)
    assert spec.to_json() == {"input": "past_key_values.0.key", "output": "present.0.key", "stage": 1}
    assert spec == StateSpec("past_key_values.0.key", "present.0.key", 1) and hash(spec)


def test_cli_says_where_the_pairs_are(models, tmp_path, capsys):
    shapes = [f"--input-shape={k}:{'x'.join(map(str, v))}" for k, v in SHAPES.items()]
    plan = _plan_by_layer(models["optimum"], tmp_path / "plan.json")
    argv = ["split", str(models["optimum"]), "--devices", str(LAYERS), "--plan", str(plan), "--costs", "estimate",
            *shapes]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 0
    assert "8 state pairs kept on their stages (stage 0: 2, stage 1: 2, stage 2: 2, stage 3: 2)" in \
        " ".join(capsys.readouterr().out.split())
    assert main([*argv, "-o", str(tmp_path / "json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"][2] == {"input": "past_key_values.1.key", "output": "present.1.key", "stage": 1}


@pytest.mark.parametrize("solver", ["auto", "dp", "ip", "linear", "greedy"])
def test_the_solvers_see_the_caches(models, tmp_path, solver):
    """Devices that hold the model without its caches refuse it with them, whatever the solver."""
    common = dict(devices=identical_devices(2, memory=200e3), input_shapes=SHAPES, costs="estimate", solver=solver)
    assert len(split(models["optimum"], tmp_path / "plain", **common).manifest.stages) == 2
    with pytest.raises(InfeasibleError, match=r"^the model needs \d+ bytes of memory, the devices have 400000 in all$"):
        split(models["optimum"], tmp_path / "cached", max_seq_len=256, max_batch=4, **common)


@pytest.mark.parametrize("solver", ["greedy", "linear"])
def test_a_plan_solved_on_costgraphs_file_keeps_every_pair(tmp_path, capsys, solver):
    """costgraph writes the groups split solves with, so costgraph -> solve -> split --plan keeps each cache."""
    from conftest import run_cli
    from onnxsplit.costgraph_io import load_costgraph

    model = MODELS / "decoder.onnx"
    graph_file = tmp_path / "graph.json"
    code, err = run_cli(["costgraph", model, "--devices", "4", "--costs", "estimate", "-o", graph_file], capsys)
    assert code == 0, err
    graph, _ = load_costgraph(graph_file)
    assert len(graph.groups) == 8
    assert main(["solve", str(graph_file), "--devices", "4", "--solver", solver, "--json"]) == 0
    plan = tmp_path / "plan.json"
    plan.write_text(capsys.readouterr().out)
    code, err = run_cli(["split", model, "--devices", "4", "--costs", "estimate", "--plan", plan,
                         "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    manifest = load_manifest(tmp_path / "out")
    assert len(manifest.state) == 8
