"""validate trusts nothing it reads: the user's inputs, the manifest, the stage files and their weights.

Every damage is one OnnxSplitError of one line naming the file, field, input,
stage or node at fault (and through the CLI: one `onnxsplit: error:` line,
exit 1); the Python API never lets a raw KeyError or ValueError out.
"""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import onnx
import pytest
from conftest import ROOT, copy_split
from graphs import model, weight
from onnx import TensorProto, helper

from onnxsplit.cli.main import main
from onnxsplit.errors import ModelError, OnnxSplitError, UsageError
from onnxsplit.manifest import load_manifest
from onnxsplit.runtime import Pipeline
from onnxsplit.splitting import split
from onnxsplit.validation import validate


def embed_model() -> onnx.ModelProto:
    """ids (int64, [N, 4]) -> Gather from a 10-word table -> MatMul -> Relu: an input whose values index."""
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "W"], ["m"], name="mm"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    return model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])],
                 [weight("E", [10, 8]), weight("W", [8, 8], seed=1)])


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A two-stage split (Gather | MatMul, Relu) of a model whose weights are external, so each stage has a .data file."""
    work = tmp_path_factory.mktemp("validation")
    m = embed_model()
    onnx.checker.check_model(m, full_check=True)
    onnx.save_model(m, str(work / "embed.onnx"), save_as_external_data=True, location="embed.data", size_threshold=0)
    (work / "plan.json").write_text(json.dumps({"embed": 0, "mm": 1, "relu": 1}))
    split(work / "embed.onnx", work / "out", devices=2, plan=work / "plan.json", costs="estimate")
    assert (work / "out" / "stage_1.onnx.data").is_file()
    return work / "out"


@pytest.fixture
def folder(good, tmp_path):
    """A copy of the good split that a test may damage; its manifest still finds the original model."""
    return copy_split(good, tmp_path / "out")[0]


def _feeds(folder, **arrays):
    np.savez(folder / "feeds.npz", **arrays)
    return folder / "feeds.npz"


def _one_line(exc: BaseException, *parts: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, text
    return text


def _cli(argv, capsys, *parts):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxsplit: error: "), err  # one line, no traceback
    for part in parts:
        assert part in lines[0], lines[0]


def test_the_good_split_validates(folder):
    assert validate(folder).passed
    assert validate(folder, inputs_path=_feeds(folder, ids=np.arange(12).reshape(3, 4) % 10)).passed


# -- the user's inputs -------------------------------------------------------------------------------------------


def _not_npz_text(folder):
    (folder / "feeds.npz").write_text("ids = [1, 2, 3]\n")
    return folder / "feeds.npz"


def _not_npz_npy(folder):
    with open(folder / "feeds.npz", "wb") as f:  # a single .npy array under an .npz name
        np.save(f, np.zeros((1, 4), np.int64))
    return folder / "feeds.npz"


def _not_npz_pickle(folder):
    (folder / "feeds.npz").write_bytes(pickle.dumps({"ids": np.zeros((1, 4), np.int64)}))
    return folder / "feeds.npz"


INPUTS = {
    "text file": (_not_npz_text, "not a readable .npz file"),
    "a .npy": (_not_npz_npy, "not a readable .npz file"),
    "a pickle": (_not_npz_pickle, "not a readable .npz file"),
    "missing name": (lambda f: _feeds(f, tokens=np.zeros((1, 4), np.int64)), "no array for model input 'ids'"),
    "extra name": (lambda f: _feeds(f, ids=np.zeros((1, 4), np.int64), mask=np.ones((1, 4))),
                   "'mask' is not an input of the model"),
    "dtype": (lambda f: _feeds(f, ids=np.zeros((1, 4), np.int32)), "input 'ids' is an array of int32, the model takes int64"),
    "float dtype": (lambda f: _feeds(f, ids=np.zeros((1, 4), np.float32)), "input 'ids' is an array of float32"),
    "rank": (lambda f: _feeds(f, ids=np.zeros((1, 4, 1), np.int64)),
             "input 'ids' has rank 3 (1x4x1), the model takes rank 2"),
    "fixed dim": (lambda f: _feeds(f, ids=np.zeros((2, 5), np.int64)),
                  "input 'ids' has 5 in dim 1, the model fixes it to 4"),
}


@pytest.mark.parametrize("case", sorted(INPUTS))
def test_bad_inputs_are_one_line(folder, case):
    make, message = INPUTS[case]
    path = make(folder)
    with pytest.raises(UsageError) as info:
        validate(folder, inputs_path=path)
    _one_line(info.value, str(path), message)


def test_index_out_of_range_names_the_node(folder, capsys):
    path = _feeds(folder, ids=np.full((2, 4), 12, np.int64))  # the table has 10 rows
    with pytest.raises(UsageError) as info:
        validate(folder, inputs_path=path)
    _one_line(info.value, "embed.onnx: onnxruntime cannot run the model", "on the inputs in", "node 'embed' (Gather)",
              "out of data bounds")
    assert "[ONNXRuntimeError]" not in str(info.value)
    _cli(["validate", folder, "--inputs", path], capsys, "node 'embed' (Gather)")


def test_cli_reports_bad_inputs_in_one_line(folder, capsys):
    _cli(["validate", folder, "--inputs", _feeds(folder, ids=np.zeros((1, 4), np.int32))], capsys,
         "input 'ids' is an array of int32")
    _cli(["validate", folder, "--inputs", _not_npz_npy(folder)], capsys, "not a readable .npz file")
    _cli(["validate", folder, "--inputs", _feeds(folder, ids=np.zeros((4,), np.int64))], capsys, "has rank 1")


def test_a_stage_that_fixed_the_batch_says_so(folder):
    """A stage that kept a dim fixed at the split's input shapes fails in one line naming it and the shapes."""
    stage = onnx.load(str(folder / "stage_1.onnx"), load_external_data=False)
    stage.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save_model(stage, str(folder / "stage_1.onnx"))
    assert validate(folder, inputs_path=_feeds(folder, ids=np.zeros((1, 4), np.int64))).passed
    with pytest.raises(ModelError) as info:
        validate(folder, inputs_path=_feeds(folder, ids=np.zeros((2, 4), np.int64)))
    _one_line(info.value, "stage_1.onnx: stage 1: onnxruntime cannot run the model", "the split was made for input shapes ids:1x4",
              "these inputs are ids:2x4")


# -- the manifest, the stage files and their weights ----------------------------------------------------------------


def _edit(fn):
    def damage(folder):
        doc = json.loads((folder / "manifest.json").read_text())
        fn(doc)
        (folder / "manifest.json").write_text(json.dumps(doc, indent=2))
    return damage


def _write(text: bytes):
    def damage(folder):
        (folder / "manifest.json").write_bytes(text)
    return damage


def _truncate(folder):
    text = (folder / "manifest.json").read_bytes()
    (folder / "manifest.json").write_bytes(text[: len(text) // 2])


def _rename_handoff(doc):
    doc["handoffs"][0]["name"] = "e2"


def _rename_handoff_everywhere(doc):
    for t in (doc["handoffs"][0], doc["stages"][0]["outputs"][0], doc["stages"][1]["inputs"][0]):
        t["name"] = "e2"


def _remove_last_stage(doc):
    doc["stages"].pop()


def _remove_first_stage(doc):
    doc["stages"].pop(0)


# broken manifest -> (error type, what the one line must say); every API must raise it, never a raw error.
MANIFESTS = {
    "truncated": (_truncate, UsageError, "not valid JSON"),
    "empty": (_write(b""), UsageError, "empty file"),
    "whitespace": (_write(b"  \n"), UsageError, "empty file"),
    "binary": (_write(b"\xff\xfe\x00\x01"), UsageError, "not valid JSON"),
    "a list": (_write(b"[1, 2]"), UsageError, "not an onnxsplit manifest"),
    "renamed hand-off": (_edit(_rename_handoff), ModelError, "'e' goes to stages [1] but is not in handoffs"),
    "stage removed": (_edit(_remove_last_stage), ModelError, "stages[0].outputs[0].to: stage 1 is not a later stage"),
    "first stage removed": (_edit(_remove_first_stage), ModelError, "stages[0].index: is 1"),
    "outputs stage wrong": (_edit(lambda d: d["outputs"][0].update(stage=0)), ModelError,
                            "outputs[0].stage: stage 0 has no output 'y'"),
    "outputs stage a string": (_edit(lambda d: d["outputs"][0].update(stage="1")), ModelError,
                               "outputs[0].stage: expected an integer"),
    "threads a string": (_edit(lambda d: d["stages"][0].update(threads="2")), ModelError,
                         "stages[0].threads: expected an integer"),
    "input dtype unknown": (_edit(lambda d: d["inputs"][0].update(dtype="float33")), ModelError,
                            "inputs[0].dtype: expected the name of a value type"),
    "input dtype null": (_edit(lambda d: d["inputs"][0].update(dtype=None)), ModelError, "inputs[0].dtype"),
    "device_id not a number": (_edit(lambda d: d["stages"][0]["provider_options"].update(device_id="gpu")),
                               ModelError, "stages[0].provider_options.device_id: expected a device number"),
    "input_shapes rank": (_edit(lambda d: d["input_shapes"].update(ids=[1, 4, 1])), ModelError,
                          "input_shapes.ids: has rank 3"),
    "stage file outside": (_edit(lambda d: d["stages"][1].update(file="../../stage_1.onnx")), ModelError,
                           "stages[1].file: '../../stage_1.onnx' is not a file name inside the split folder"),
    "hand-off dtype": (_edit(lambda d: d["handoffs"][0].update(dtype="int64")), ModelError,
                       "handoffs[0] says int64"),
    "graph_output flag": (_edit(lambda d: d["stages"][0]["outputs"][0].update(graph_output=True)), ModelError,
                          "stages[0].outputs[0].graph_output: says 'e' is a model output"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
@pytest.mark.parametrize("api", ["load_manifest", "validate", "Pipeline"])
def test_every_api_raises_our_error_for_a_broken_manifest(folder, case, api):
    damage, error, message = MANIFESTS[case]
    damage(folder)
    call = {"load_manifest": load_manifest, "validate": validate, "Pipeline": lambda f: Pipeline(f).close()}[api]
    with pytest.raises(OnnxSplitError) as info:
        call(folder)
    assert isinstance(info.value, error)
    _one_line(info.value, "manifest.json: ", message)


def _swap(folder):
    (folder / "stage_0.onnx").rename(folder / "tmp.onnx")
    (folder / "stage_1.onnx").rename(folder / "stage_0.onnx")
    (folder / "tmp.onnx").rename(folder / "stage_1.onnx")


def _cut(name, keep):
    def damage(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:keep(len(data))])
    return damage


def _weights_outside(folder):
    stage = onnx.load(str(folder / "stage_1.onnx"), load_external_data=False)
    for entry in stage.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../../embed.data"
    onnx.save_model(stage, str(folder / "stage_1.onnx"))


def _renamed_everywhere_but_the_files(folder):
    _edit(_rename_handoff_everywhere)(folder)


# damaged files -> what the one line must say
FILES = {
    "swapped stage files": (_swap, "stage_0.onnx: stage 0: the file reads ['e'] but the manifest says ['ids']"),
    "truncated stage file": (_cut("stage_1.onnx", lambda n: n // 2), "stage_1.onnx: stage 1: not a"),
    "stage file cut to one byte": (_cut("stage_1.onnx", lambda n: 1), "stage_1.onnx: stage 1: not a"),
    "empty stage file": (_cut("stage_1.onnx", lambda n: 0), "stage_1.onnx: stage 1: empty file"),
    "truncated weights": (_cut("stage_1.onnx.data", lambda n: n - 8),
                          "stage_1.onnx: stage 1: weights file stage_1.onnx.data is truncated: weight 'W'"),
    "empty weights": (_cut("stage_1.onnx.data", lambda n: 0), "weights file stage_1.onnx.data is truncated"),
    "missing weights": (lambda f: (f / "stage_0.onnx.data").unlink(),
                        "stages[0].external_data: stage_0.onnx.data is missing"),
    "weights outside the folder": (_weights_outside, "weight 'W' points at '../../embed.data', outside the split folder"),
    "hand-off renamed in the manifest only": (_renamed_everywhere_but_the_files,
                                              "stage_0.onnx: stage 0: the file makes ['e'] but the manifest says ['e2']"),
    "model input dtype edited": (_edit(lambda d: d["inputs"][0].update(dtype="int32")),
                                 "manifest.json: inputs[0].dtype: int32 but the model embed.onnx declares 'ids' as int64"),
    "stage output dtype edited": (_edit(lambda d: (d["stages"][1]["outputs"][0].update(dtype="float64"),
                                                   d["outputs"][0].update(dtype="float64"))),
                                  ("stage_1.onnx: stage 1: the file declares 'y' as float32 but "
                                   "stages[1].outputs[0].dtype says float64")),
    "stage output rank edited": (_edit(lambda d: d["stages"][1]["outputs"][0].update(shape=["N", 32])),
                                 "the file declares 'y' with rank 3 but stages[1].outputs[0].shape has rank 2"),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_damaged_files_are_one_line(folder, case):
    damage, message = FILES[case]
    damage(folder)
    with pytest.raises(ModelError) as info:
        validate(folder)
    _one_line(info.value, message)


@pytest.mark.parametrize("case", ["swapped stage files", "truncated weights", "empty stage file"])
def test_cli_reports_damaged_files_in_one_line(folder, capsys, case):
    damage, message = FILES[case]
    damage(folder)
    _cli(["validate", folder], capsys, message)


@pytest.mark.parametrize("case", ["renamed hand-off", "stage removed", "outputs stage wrong", "empty", "truncated"])
def test_cli_reports_broken_manifests_in_one_line(folder, capsys, case):
    damage, _, message = MANIFESTS[case]
    damage(folder)
    _cli(["validate", folder], capsys, "manifest.json: ", message)


def test_damage_checks_leave_the_good_split_alone(good):
    """The checks read, never write: the fixture's folder is unchanged and still validates with hand-offs."""
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    doc = copy.deepcopy(json.loads((good / "manifest.json").read_text()))
    assert validate(good, check_handoffs=True).passed
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert json.loads((good / "manifest.json").read_text()) == doc


# -- decode steps on a decoder split --------------------------------------------------------------------------------

DECODER = ROOT / "models" / "decoder.onnx"


@pytest.fixture(scope="module")
def decoder_split(tmp_path_factory):
    """models/decoder.onnx split in 2 stages, each keeping the caches of its layers."""
    out = tmp_path_factory.mktemp("decoder") / "out"
    split(DECODER, out, devices=2, costs="estimate")
    assert {p.stage for p in load_manifest(out).state} == {0, 1}
    return out


def _tamper(folder) -> None:
    """Change one weight of the last stage a little: the files still match the manifest, the numbers do not."""
    path = folder / "stage_1.onnx"
    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    values = onnx.numpy_helper.to_array(init).copy()
    values.flat[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    onnx.save(proto, str(path))


def test_decode_steps_pass_on_a_good_split(decoder_split):
    report = validate(decoder_split, steps=4)
    assert report.passed
    assert [c.name for c in report.outputs] == ["logits (prefill)", *(f"logits (step {i})" for i in range(1, 5)),
                                                "tokens"]
    assert report.outputs[-1].dtype == "int64" and report.outputs[-1].atol == 0
    assert report.notes == ("prompt of 4 tokens, batch 1; prefill + 4 decode steps",)


def test_decode_steps_fail_on_a_tampered_stage(decoder_split, tmp_path, capsys):
    folder = copy_split(decoder_split, tmp_path / "out")[0]
    _tamper(folder)
    report = validate(folder, steps=4)
    assert not report.passed
    assert not report.outputs[0].passed  # the prefill's logits already differ
    assert main(["validate", str(folder), "--steps", "4"]) == 1
    assert capsys.readouterr().out.strip().endswith("FAILED")
    assert main(["validate", str(decoder_split), "--steps", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True


def test_decode_steps_take_the_prompt_from_the_inputs(decoder_split, tmp_path):
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, input_ids=np.array([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]]))
    report = validate(decoder_split, inputs_path=feeds, steps=2)
    assert report.passed and report.notes == ("prompt of 6 tokens, batch 2; prefill + 2 decode steps",)


def test_decode_step_errors_are_one_line(decoder_split, good, tmp_path, capsys):
    with pytest.raises(UsageError) as exc:
        validate(good, steps=2)
    _one_line(exc.value, "the split keeps no state", "no decode steps to validate")
    with pytest.raises(UsageError) as exc:
        validate(decoder_split, steps=2, check_handoffs=True)
    _one_line(exc.value, "hand-off checking compares one run")
    with pytest.raises(UsageError) as exc:
        validate(decoder_split, steps=2, inputs_path={"attention_mask": np.ones((1, 2), dtype=np.int64)})
    _one_line(exc.value, "no 'input_ids' to take the prompt from")
    _cli(["validate", decoder_split, "--steps", "2", "--check-handoffs"], capsys,
         "--check-handoffs compares one run: it does not combine with --steps")
    _cli(["validate", decoder_split, "--steps", "-1"], capsys, "--steps must be 0 or more, got -1")
