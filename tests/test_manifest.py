"""The typed manifest: an exact round trip of a real split's file, and one-line errors for edited files."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

from conftest import copy_split
from graphs import chain, save
from onnxsplit.cli.main import main
from onnxsplit.errors import ModelError, UsageError
from onnxsplit.manifest import Manifest, Stage, StateSpec, TensorSpec, load_manifest
from onnxsplit.splitting import split
from stategraphs import decoder, decoder_shapes, layer_of


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A three-stage split of a chain: graph input read by stages 0 and 2, r0 handed to stages 1 and 2."""
    work = tmp_path_factory.mktemp("manifest")
    m = chain(6)
    names = [n.name for n in m.graph.node if n.op_type != "Constant"]
    plan = {n: 0 if n in ("mm0", "scale0", "relu0") else 1 if n in ("mm1", "relu1", "mm2", "relu2") else 2
            for n in names}
    (work / "plan.json").write_text(json.dumps(plan))
    src = save(m, work / "chain.onnx")
    split(src, work / "out", devices=3, plan=work / "plan.json", costs="estimate")
    return work / "out"


def _editable(folder, dst):
    """A copy of the split folder at ``dst``, and a function that rewrites its manifest.json with an edit applied."""
    out, doc = copy_split(folder, dst)

    def write(edit) -> dict:
        changed = copy.deepcopy(doc)
        edit(changed)
        (out / "manifest.json").write_text(json.dumps(changed, indent=2))
        return changed

    return out, write


@pytest.fixture
def edited(folder, tmp_path):
    """A copy of the split folder, and a function that rewrites its manifest.json with an edit applied."""
    out, write = _editable(folder, tmp_path / "out")
    write(lambda d: None)
    return out, write


def test_round_trip_is_exact(folder, tmp_path):
    text = (folder / "manifest.json").read_text()
    doc = json.loads(text)
    manifest = Manifest.from_json(doc, where=folder / "manifest.json")
    assert manifest.to_json() == doc
    assert list(manifest.to_json()) == list(doc)  # same keys in the same order
    assert [list(s) for s in manifest.to_json()["stages"]] == [list(s) for s in doc["stages"]]
    assert load_manifest(folder) == manifest
    manifest.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == text  # byte for byte


def test_typed_fields(folder):
    m = load_manifest(folder)
    assert m.folder == folder
    assert [s.index for s in m.stages] == [0, 1, 2]
    assert m.stage_path(1) == folder / "stage_1.onnx" and m.stage_paths()[2] == folder / "stage_2.onnx"
    assert m.source_path().name == "chain.onnx" and m.source_path().is_file()
    assert m.plan_path() == folder / "plan.json"
    assert m.inputs == (TensorSpec("x", "float32", ("N", 8)),)
    assert m.input_shapes == {"x": (1, 8)}
    assert m.feed_specs() == [("x", "float32", (1, 8))]
    assert m.feed_specs({"x": (3, 8)}) == [("x", "float32", (3, 8))]
    x_in_last = next(i for i in m.stages[2].inputs if i.name == "x")
    assert x_in_last.producer is None  # "from": "graph"
    r0 = next(h for h in m.handoffs if h.name == "r0")
    assert (r0.producer, r0.consumers, r0.shape) == (0, (1, 2), ("N", 8))
    assert isinstance(m.stages[0].predicted.load_ms, float)
    assert m.outputs[0].stage == 2 and m.output_names == ("y",)


def test_manifest_is_frozen_and_pickles(folder):
    m = load_manifest(folder)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.stages[0].threads = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.stages[0].provider_options["device_id"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        m.input_shapes["x"] = (2, 8)  # type: ignore[index]
    again = pickle.loads(pickle.dumps(m))
    assert again == m and again.to_json() == m.to_json()
    assert isinstance(m.stages[0], Stage)


@pytest.mark.parametrize("text, message", [
    (b"", "empty file"), (b" \n\t", "empty file"), (b"{\"format\": \"onnxsplit.manif", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"), (b"null", "not an onnxsplit manifest"),
])
def test_empty_truncated_or_binary_manifest(edited, text, message):
    out, _ = edited
    (out / "manifest.json").write_bytes(text)
    with pytest.raises(UsageError) as info:
        load_manifest(out)
    assert str(info.value) == f"{out / 'manifest.json'}: {message}" or str(info.value).startswith(
        f"{out / 'manifest.json'}: {message} (")


def test_not_a_split_folder(tmp_path):
    with pytest.raises(UsageError, match="not a split folder"):
        load_manifest(tmp_path / "nothing")
    with pytest.raises(UsageError, match="not a split folder"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="something.else"), "not an onnxsplit manifest"),
    (lambda d: d.update(version=2), "manifest version 2 is not supported"),
    (lambda d: d.pop("version"), "manifest version None is not supported"),
])
def test_not_this_format_is_a_usage_error(edited, edit, message):
    out, write = edited
    write(edit)
    with pytest.raises(UsageError, match=message) as info:
        load_manifest(out)
    assert not isinstance(info.value, ModelError) and "manifest.json" in str(info.value)


def _drop(key):
    return lambda d: d.pop(key)


def _set(path, value):
    def edit(d):
        *parents, last = path
        for p in parents:
            d = d[p]
        d[last] = value
    return edit


def _remove_stage_file(name):
    def edit(d):
        d["_remove"] = name  # read by the test, ignored by the reader (unknown keys are)
    return edit


EDITS = {
    # missing keys
    "missing top-level key": (_drop("handoffs"), "handoffs: missing"),
    "missing stage key": (lambda d: d["stages"][1].pop("threads"), "stages[1].threads: missing"),
    "missing input key": (lambda d: d["stages"][2]["inputs"][0].pop("from"), "stages[2].inputs[0].from: missing"),
    "missing source key": (lambda d: d["source"].pop("sha256"), "source.sha256: missing"),
    "missing predicted key": (lambda d: d["stages"][0]["predicted"].pop("load_ms"), "stages[0].predicted.load_ms: missing"),
    # wrong types
    "stages not a list": (_set(["stages"], {"0": {}}), "stages: expected a list"),
    "nodes a string": (_set(["stages", 1, "nodes"], "3"), "stages[1].nodes: expected an integer"),
    "threads zero": (_set(["stages", 0, "threads"], 0), "stages[0].threads: expected an integer of at least 1"),
    "device a bool": (_set(["stages", 0, "device"], True), "stages[0].device: expected an integer"),
    "graph_output a number": (_set(["stages", 0, "outputs", 0, "graph_output"], 1),
                              "stages[0].outputs[0].graph_output: expected true or false"),
    "shape a string": (_set(["handoffs", 0, "shape"], "N,8"), "handoffs[0].shape: expected a list"),
    "dim a float": (_set(["inputs", 0, "shape", 1], 8.5), "inputs[0].shape[1]: expected an integer, a name or null"),
    "from a name": (lambda d: d["stages"][2]["inputs"][0].update({"from": "stage0"}), "stages[2].inputs[0].from"),
    "options a list": (_set(["stages", 0, "provider_options"], []), "stages[0].provider_options: expected an object"),
    "load a string": (_set(["stages", 0, "predicted", "load_ms"], "fast"), "stages[0].predicted.load_ms: expected a number"),
    "input shape missing": (lambda d: d["input_shapes"].clear(), "input_shapes: no shape for model input 'x'"),
    # stage numbering
    "stage index out of range": (_set(["stages", 1, "index"], 7), "stages[1].index: is 7"),
    "stages out of order": (lambda d: d["stages"].reverse(), "stages[0].index: is 2"),
    "no stages": (_set(["stages"], []), "stages: empty"),
    # routing to stages that do not exist
    "hand-off producer": (_set(["handoffs", 0, "producer"], 9), "handoffs[0].producer: stage 9 does not exist"),
    "hand-off consumer": (lambda d: d["handoffs"][0]["consumers"].append(5), "handoffs[0].consumers: stage 5 does not exist"),
    "output stage": (_set(["outputs", 0, "stage"], 3), "outputs[0].stage: stage 3 does not exist"),
    "output not made there": (_set(["outputs", 0, "stage"], 1), "outputs[0].stage: stage 1 has no output 'y'"),
    "input from a later stage": (lambda d: next(i for i in d["stages"][1]["inputs"] if i["from"] == 0).update({"from": 2}),
                                 "stages[1].inputs[0].from: stage 2 is not an earlier stage"),
    "input from nowhere": (lambda d: d["stages"][1]["inputs"][0].update({"name": "ghost"}),
                           "stages[1].inputs[0].from: stage 0 has no output 'ghost'"),
    "graph input that is not one": (lambda d: d["stages"][0]["inputs"][0].update({"name": "ghost"}),
                                    "stages[0].inputs[0].from: 'ghost' comes from the graph but is not a model input"),
    "sent backwards": (lambda d: d["stages"][1]["outputs"][0]["to"].append(0), "stages[1].outputs[0].to: stage 0"),
    # names a reader keys by
    "output listed twice": (lambda d: d["outputs"].append(copy.deepcopy(d["outputs"][0])), "outputs: 'y' is listed twice"),
    "outputs empty": (_set(["outputs"], []), "outputs: empty"),
    "tensor made twice": (lambda d: d["stages"][1]["outputs"][0].update(name=d["stages"][0]["outputs"][0]["name"]),
                          "stages[1].outputs[0]: 'r0' is made by stage 0 already"),
    "stage input listed twice": (lambda d: d["stages"][2]["inputs"].append(copy.deepcopy(d["stages"][2]["inputs"][0])),
                                 "stages[2].inputs: "),
    # model inputs
    "input dtype unknown": (_set(["inputs", 0, "dtype"], "float33"), "inputs[0].dtype: expected the name of a value type"),
    "input dtype null": (_set(["inputs", 0, "dtype"], None), "inputs[0].dtype: expected the name of a value type"),
    "input shape of another rank": (_set(["input_shapes", "x"], [1, 8, 1]), "input_shapes.x: has rank 3"),
    "input shape against a fixed dim": (_set(["input_shapes", "x"], [1, 9]),
                                        "input_shapes.x[1]: is 9 but the model fixes that dim to 8"),
    "input shape for no input": (lambda d: d["input_shapes"].update(ghost=[1]), "input_shapes.ghost: not a model input"),
    "provider option a list": (_set(["stages", 0, "provider_options"], {"device_id": [0]}),
                               "stages[0].provider_options.device_id: expected a string or a number"),
    "device_id not a number": (_set(["stages", 0, "provider_options"], {"device_id": "first"}),
                               "stages[0].provider_options.device_id: expected a device number"),
    # handoffs[] and outputs[] against the stages
    "hand-off renamed": (_set(["handoffs", 0, "name"], "ghost"), "but is not in handoffs"),
    "hand-off removed": (lambda d: d["handoffs"].pop(0), "but is not in handoffs"),
    "hand-off consumers differ": (lambda d: d["handoffs"][0]["consumers"].pop(), "handoffs[0].consumers: "),
    "hand-off shape differs": (_set(["handoffs", 0, "shape"], ["N", 9]), "but handoffs[0] says float32 [N, 9]"),
    "stage input type differs": (lambda d: next(i for i in d["stages"][1]["inputs"] if i["from"] == 0).update(dtype="int8"),
                                 "stages[1].inputs[0]: dtype int8"),
    "sent to a stage that does not read it": (lambda d: d["stages"][2].update(
        inputs=[i for i in d["stages"][2]["inputs"] if i["from"] != 1]),
        "stages[1].outputs[0].to: stage 2 does not read 'r2' from stage 1"),
    "graph_output flag off": (_set(["stages", 2, "outputs", 0, "graph_output"], False),
                              "stages[2].outputs[0].graph_output: says 'y' is not a model output"),
    # files
    "stage file outside the folder": (_set(["stages", 1, "file"], "../stage_1.onnx"),
                                      "stages[1].file: '../stage_1.onnx' is not a file name inside the split folder"),
    "stage file absolute": (_set(["stages", 1, "file"], "/etc/hostname"), "stages[1].file: '/etc/hostname' is not"),
    "weights outside the folder": (_set(["stages", 0, "external_data"], "../../w.data"), "stages[0].external_data: "),
    "two stages, one file": (_set(["stages", 1, "file"], "stage_0.onnx"), "stages: two stages name the file"),
    "stage file missing": (_remove_stage_file("stage_1.onnx"), "stages[1].file: stage_1.onnx is missing"),
    "stage file renamed": (_set(["stages", 2, "file"], "stage_9.onnx"), "stages[2].file: stage_9.onnx is missing"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_edited_manifest_is_a_model_error_naming_the_field(edited, case):
    out, write = edited
    edit, message = EDITS[case]
    doc = write(edit)
    if "_remove" in doc:
        (out / doc["_remove"]).unlink()
    with pytest.raises(ModelError) as info:
        load_manifest(out)
    text = str(info.value)
    assert f"{out / 'manifest.json'}: " in text and message in text, text
    assert "\n" not in text


def test_from_json_names_the_file_it_is_given(folder):
    doc = json.loads((folder / "manifest.json").read_text())
    del doc["stages"][0]["file"]
    with pytest.raises(ModelError, match=r"^elsewhere\.json: stages\[0\]\.file: missing$"):
        Manifest.from_json(doc, where="elsewhere.json", check_files=False)


def test_cli_reports_an_edited_manifest_in_one_line(edited, capsys):
    out, write = edited
    write(_set(["handoffs", 0, "producer"], 9))
    for argv in (["validate", str(out)], ["run", str(out), "--inputs", "x.npz", "-o", "y.npz"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("onnxsplit: error: ") and "handoffs[0].producer" in err and "\n" not in err


# -- state pairs ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_folder(tmp_path_factory):
    """A three-stage split of a three-layer decoder, layer i (and its cache) on stage i."""
    work = tmp_path_factory.mktemp("state")
    m = decoder(3)
    plan = {n.name: layer_of(n.name, last=2) for n in m.graph.node}
    (work / "plan.json").write_text(json.dumps(plan))
    src = save(m, work / "decoder.onnx")
    split(src, work / "out", devices=3, plan=work / "plan.json", costs="estimate", input_shapes=decoder_shapes(3))
    return work / "out"


@pytest.fixture
def state_edited(state_folder, tmp_path):
    return _editable(state_folder, tmp_path / "out")


def test_state_pairs_round_trip_last(state_folder, tmp_path):
    m = load_manifest(state_folder)
    assert m.state == tuple(StateSpec(f"past_key_values.{i}.{kv}", f"present.{i}.{kv}", i)
                            for i in range(3) for kv in ("key", "value"))
    assert m.state_of(1) == m.state[2:4]
    doc = json.loads((state_folder / "manifest.json").read_text())
    assert list(doc)[-1] == "state" and doc["state"][0] == {"input": "past_key_values.0.key",
                                                              "output": "present.0.key", "stage": 0}
    assert m.to_json() == doc
    m.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (state_folder / "manifest.json").read_text()


def test_no_state_no_key(folder):
    m = load_manifest(folder)
    assert m.state == () and m.state_of(0) == ()
    assert "state" not in json.loads((folder / "manifest.json").read_text())
    assert "state" not in m.to_json()


def _state(j, key, value):
    return lambda d: d["state"][j].update({key: value})


STATE_EDITS = {
    "state not a list": (_set(["state"], {}), "state: expected a list"),
    "pair not an object": (_set(["state", 0], "a:b"), "state[0]: expected an object"),
    "pair without stage": (lambda d: d["state"][1].pop("stage"), "state[1].stage: missing"),
    "stage out of range": (_state(0, "stage", 3), "state[0].stage: stage 3 does not exist (the split has 3)"),
    "input not a model input": (_state(0, "input", "h1"), "state[0].input: 'h1' is not a model input"),
    "output not a model output": (_state(0, "output", "h1"), "state[0].output: 'h1' is not a model output"),
    "input read elsewhere": (_state(2, "input", "attention_mask"),
                             "state[2].input: 'attention_mask' is read by stage 0, not only by stage 1"),
    "input not read there": (lambda d: d["stages"][0].update(
        inputs=[i for i in d["stages"][0]["inputs"] if i["name"] != "past_key_values.0.key"]),
        "state[0].input: stage 0 does not read 'past_key_values.0.key'"),
    "output made elsewhere": (_state(2, "output", "logits"), "state[2].output: 'logits' is made by stage 2, not by stage 1"),
    "input twice": (_state(1, "input", "past_key_values.0.key"),
                    "state[1].input: 'past_key_values.0.key' is in state[0] already"),
    "output twice": (_state(1, "output", "present.0.key"), "state[1].output: 'present.0.key' is in state[0] already"),
    "dtypes differ": (lambda d: [o.update(dtype="float16") for o in d["outputs"] if o["name"] == "present.0.key"],
                      "state[0]: input 'past_key_values.0.key' is float32 but output 'present.0.key' is float16"),
}


@pytest.mark.parametrize("case", sorted(STATE_EDITS))
def test_edited_state_is_a_model_error_naming_the_field(state_edited, case):
    out, write = state_edited
    edit, message = STATE_EDITS[case]
    write(edit)
    with pytest.raises(ModelError) as info:
        load_manifest(out)
    text = str(info.value)
    assert f"{out / 'manifest.json'}: " in text and message in text, text
    assert "\n" not in text
