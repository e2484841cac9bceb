"""`export_triton` writes a model repository Triton's own schema accepts, wired as the manifest routes tensors.

Every config is parsed into Triton's ModelConfig (check_repository); the
stage models are then chained as the ensemble's steps say, with onnxruntime,
and must reproduce the original. Triton's onnxruntime backend is not in the
bundled server, so configs for it are checked this way only; the Python
backend runs for real in tests/test_triton_server.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import graphs
from conftest import MODELS, one_line, run_cli
from onnxsplit.errors import OutputError, OutputExists, UsageError
from onnxsplit.export.triton import (
    MARKER, TritonExportError, batch_dim, check_repository, default_name, export_triton,
)
from onnxsplit.manifest import load_manifest
from onnxsplit.splitting import split

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="Triton's ModelConfig ships with tritonclient[grpc]")


@pytest.fixture(scope="module")
def chain_split(tmp_path_factory):
    """The chain graph (every tensor batch-first) split over 3 devices."""
    folder = tmp_path_factory.mktemp("chain")
    model = graphs.save(graphs.chain(), folder / "chain.onnx")
    split(model, folder / "out", devices=3, costs="estimate", input_shapes={"x": (4, 8)})
    return folder / "out"


@pytest.fixture(scope="module")
def scalar_split(tmp_path_factory):
    """x -> s = ReduceSum(x) (a scalar) on stage 0; y = x * s on stage 1: no batch dim shared by every tensor."""
    folder = tmp_path_factory.mktemp("scalar")
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Mul", ["x", "s"], ["y"], name="mul")]
    m = graphs.model(nodes, [graphs.f32("x", ["N", 3])], [graphs.f32("y", ["N", 3])])
    path = graphs.save(m, folder / "scalar model.onnx")
    plan = folder / "plan.json"
    plan.write_text(json.dumps([0, 1]))
    split(path, folder / "out", devices=2, costs="estimate", plan=plan, input_shapes={"x": (2, 3)})
    return folder / "out"


def _config(repo: Path, model: str):
    return check_repository(repo)[model]


def _run_ensemble(repo: Path, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the ensemble as Triton would: each step's model.onnx, fed and read through the step's maps."""
    configs = check_repository(repo)
    ensemble = configs[name]
    values = dict(feeds)
    for step in ensemble.ensemble_scheduling.step:
        session = ort.InferenceSession(str(repo / step.model_name / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        out = session.run(list(step.output_map), {k: values[v] for k, v in step.input_map.items()})
        values.update({step.output_map[k]: v for k, v in zip(step.output_map, out)})
    return {t.name: values[t.name] for t in ensemble.output}


def _original(split_folder: Path, feeds):
    session = ort.InferenceSession(str(load_manifest(split_folder).source_path()), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_batched_repository_matches_the_manifest(chain_split, tmp_path):
    manifest = load_manifest(chain_split)
    repo = export_triton(chain_split, tmp_path / "repo")
    assert repo.name == "chain" and repo.max_batch_size == 8 and repo.backend == "onnxruntime"
    assert repo.stage_models == tuple(f"chain_stage_{k}" for k in range(len(manifest.stages)))
    configs = check_repository(tmp_path / "repo")
    assert set(configs) == {"chain", *repo.stage_models}
    ensemble = configs["chain"]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    assert (tmp_path / "repo" / "chain" / "1").is_dir() and not any((tmp_path / "repo" / "chain" / "1").iterdir())
    assert [(t.name, list(t.dims)) for t in ensemble.input] == [("x", [8])]
    assert [(t.name, list(t.dims)) for t in ensemble.output] == [("y", [8])]
    for stage, step in zip(manifest.stages, ensemble.ensemble_scheduling.step):
        config = configs[step.model_name]
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
        assert config.HasField("dynamic_batching")
        assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_CPU]
        # The steps route exactly the tensors the manifest routes.
        assert dict(step.input_map) == {i.name: i.name for i in stage.inputs}
        assert dict(step.output_map) == {o.name: o.name for o in stage.outputs}
        assert [t.name for t in config.input] == [i.name for i in stage.inputs]
        assert all(t.data_type == model_config_pb2.TYPE_FP32 and list(t.dims) == [8] for t in config.input)
        written = tmp_path / "repo" / step.model_name / "1" / "model.onnx"
        assert written.read_bytes() == manifest.stage_path(stage.index).read_bytes()
    assert json.loads((tmp_path / "repo" / MARKER).read_text())["models"] == ["chain", *repo.stage_models]
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(_run_ensemble(tmp_path / "repo", "chain", {"x": x})["y"],
                               _original(chain_split, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_max_batch_zero_declares_every_dim(chain_split, tmp_path):
    repo = export_triton(chain_split, tmp_path / "repo", max_batch=0, name="mlp")
    assert repo.max_batch_size == 0 and repo.name == "mlp"
    configs = check_repository(tmp_path / "repo")
    assert [list(t.dims) for t in configs["mlp"].input] == [[-1, 8]]
    assert not configs["mlp_stage_0"].HasField("dynamic_batching") and configs["mlp_stage_0"].max_batch_size == 0


def test_scalar_handoffs_travel_as_vectors(scalar_split, tmp_path):
    manifest = load_manifest(scalar_split)
    assert batch_dim(manifest) is None and default_name(manifest) == "scalar_model"
    repo = export_triton(scalar_split, tmp_path / "repo")
    assert repo.max_batch_size == 0
    configs = check_repository(tmp_path / "repo")
    first, second = configs["scalar_model"].ensemble_scheduling.step
    assert dict(first.output_map) == {"s__1d": "s"} and dict(second.input_map) == {"x": "x", "s__1d": "s"}
    out = configs["scalar_model_stage_0"].output[0]
    assert out.name == "s__1d" and list(out.dims) == [1] and not out.HasField("reshape")
    stage0 = onnx.load(str(tmp_path / "repo" / "scalar_model_stage_0" / "1" / "model.onnx"))
    onnx.checker.check_model(stage0, full_check=True)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(_run_ensemble(tmp_path / "repo", "scalar_model", {"x": x})["y"],
                               _original(scalar_split, {"x": x})["y"])


def test_external_data_is_copied_under_the_name_the_model_references(tmp_path):
    split(MODELS / "external_data.onnx", tmp_path / "out", devices=2, costs="estimate")
    manifest = load_manifest(tmp_path / "out")
    assert any(s.external_data for s in manifest.stages)
    repo = export_triton(tmp_path / "out", tmp_path / "repo")
    for stage, model_name in zip(manifest.stages, repo.stage_models):
        version = tmp_path / "repo" / model_name / "1"
        if stage.external_data is not None:
            assert (version / stage.external_data).read_bytes() == (tmp_path / "out" / stage.external_data).read_bytes()
        onnx.checker.check_model(str(version / "model.onnx"), full_check=True)  # finds its weights beside it
    feeds = {i.name: np.random.default_rng(1).standard_normal(manifest.input_shapes[i.name]).astype(i.dtype)
             for i in manifest.inputs}
    got = _run_ensemble(tmp_path / "repo", repo.name, feeds)
    for name, want in _original(tmp_path / "out", feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


def test_python_backend_stages(chain_split, tmp_path):
    export_triton(chain_split, tmp_path / "repo", backend="python")
    config = _config(tmp_path / "repo", "chain_stage_0")
    assert config.backend == "python" and not config.platform
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"onnxsplit_provider": "CPUExecutionProvider", "onnxsplit_provider_options": "{}",
                      "onnxsplit_threads": "1"}
    source = (tmp_path / "repo" / "chain_stage_0" / "1" / "model.py").read_text()
    compile(source, "model.py", "exec")
    assert "class TritonPythonModel" in source


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _copy(src: Path, dst: Path) -> Path:
    from conftest import copy_split

    return copy_split(src, dst)[0]


def test_gpu_stage_runs_on_its_gpu(chain_split, tmp_path):
    folder = _copy(chain_split, tmp_path / "split")

    def to_gpu(doc):
        doc["stages"][1]["provider"] = "CUDAExecutionProvider"
        doc["stages"][1]["provider_options"] = {"device_id": "1"}
    _edit_manifest(folder, to_gpu)
    export_triton(folder, tmp_path / "repo", backend="python")
    group = _config(tmp_path / "repo", "chain_stage_1").instance_group[0]
    assert group.kind == group.KIND_GPU and list(group.gpus) == [1]
    assert _config(tmp_path / "repo", "chain_stage_0").instance_group[0].kind == group.KIND_CPU


@pytest.mark.parametrize("field, value, needle", [
    ("dtype", "complex64", "Triton has no data type for complex64"),
    ("shape", None, "its rank is unknown"),
    ("dtype", None, "its dtype is unknown"),
])
def test_tensors_triton_cannot_declare_are_named(chain_split, tmp_path, field, value, needle):
    folder = _copy(chain_split, tmp_path / "split")
    name = load_manifest(folder).handoffs[0].name

    def edit(doc):
        for spec in [*doc["handoffs"], *(t for s in doc["stages"] for t in s["inputs"] + s["outputs"])]:
            if spec["name"] == name:
                spec[field] = value
    _edit_manifest(folder, edit)
    with pytest.raises(TritonExportError) as exc:
        export_triton(folder, tmp_path / "repo")
    assert name in one_line(exc) and needle in str(exc.value)
    assert not (tmp_path / "repo").exists() and [p.name for p in tmp_path.iterdir()] == ["split"]


def test_an_existing_repository_is_replaced_only_when_ours(chain_split, tmp_path):
    repo = tmp_path / "repo"
    export_triton(chain_split, repo)
    with pytest.raises(OutputExists):
        export_triton(chain_split, repo, name="other")
    export_triton(chain_split, repo, name="other", force=True)
    assert sorted(p.name for p in repo.iterdir()) == sorted([MARKER, "other", "other_stage_0", "other_stage_1",
                                                              "other_stage_2"])
    (repo / "mine").mkdir()
    with pytest.raises(OutputError) as exc:
        export_triton(chain_split, repo, force=True)
    assert "mine" in one_line(exc) and (repo / "mine").is_dir()
    _copy(chain_split, tmp_path / "split")
    with pytest.raises(OutputError):  # a split folder is not a repository
        export_triton(chain_split, tmp_path / "split", force=True)
    assert (tmp_path / "split" / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxsplit-")]


@pytest.mark.parametrize("name", ["", ".hidden", "_x", "a/b", "x y"])
def test_bad_model_names(chain_split, tmp_path, name):
    with pytest.raises(UsageError) as exc:
        export_triton(chain_split, tmp_path / "repo", name=name)
    assert repr(name) in one_line(exc)


def test_check_repository_names_a_tensor_nobody_makes(chain_split, tmp_path):
    export_triton(chain_split, tmp_path / "repo")
    path = tmp_path / "repo" / "chain" / "config.pbtxt"
    text = path.read_text()
    path.write_text(text.replace('input_map { key: "r1" value: "r1" }', 'input_map { key: "r1" value: "nowhere" }'))
    with pytest.raises(TritonExportError) as exc:
        check_repository(tmp_path / "repo")
    assert "nowhere" in one_line(exc) and str(path) in str(exc.value)
    path.write_text(text.replace("data_type: TYPE_FP32", "data_type: TYPE_NOPE", 1))
    with pytest.raises(TritonExportError) as exc:
        check_repository(tmp_path / "repo")
    assert "not a Triton model configuration" in one_line(exc)


def test_cli(chain_split, tmp_path, capsys):
    code, err = run_cli(["export", "triton", chain_split, "-o", tmp_path / "repo", "--backend", "python",
                         "--max-batch", "4", "--name", "mlp"], capsys)
    assert code == 0, err
    assert _config(tmp_path / "repo", "mlp").max_batch_size == 4
    code, err = run_cli(["export", "triton", chain_split, "-o", tmp_path / "repo"], capsys)
    assert code == 1 and err.startswith("onnxsplit: error: ") and "already exists (use --force to replace it)" in err
    from onnxsplit.cli.main import main

    assert main(["export", "triton", str(chain_split), "-o", str(tmp_path / "repo"), "--force", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ensemble"] == "chain" and doc["max_batch_size"] == 8 and len(doc["stage_models"]) == 3
    code, err = run_cli(["export", "triton", tmp_path / "nowhere", "-o", tmp_path / "repo2"], capsys)
    assert code == 1 and "nowhere" in err and len(err.splitlines()) == 1
