"""Every bundled model and three real architectures, split at 2, 3, 4 and 8 devices and proven equal."""

from __future__ import annotations

import json

import pytest

from conftest import LIGHT, MODELS, split_and_check

CASES = {
    "transformer": (MODELS / "transformer.onnx", {"input_ids": (4, 32)}),
    "branchy_cnn": (MODELS / "branchy_cnn.onnx", {"image": (8, 3, 32, 32)}),
    "control_flow": (MODELS / "control_flow.onnx", {"x": (8, 16)}),
    "fp16": (MODELS / "fp16.onnx", {}),
    "local_function": (MODELS / "local_function.onnx", {}),
    "external_data": (MODELS / "external_data.onnx", {}),
    "resnet50": (LIGHT / "light_resnet50.onnx", {}),
    "squeezenet": (LIGHT / "light_squeezenet.onnx", {}),
    "inception_v1": (LIGHT / "light_inception_v1.onnx", {}),
}


def _chunk_plan(path, model_path, k):
    """Cut the topological order into k equal runs of nodes: always a valid k-stage plan."""
    from onnxsplit.graphinfo import graph_info
    from onnxsplit.model import load_model

    info = graph_info(load_model(model_path))
    names = [n for v, n in enumerate(info.names) if v not in info.const]
    mapping = {n: min(i * k // len(names), k - 1) for i, n in enumerate(names)}
    path.write_text(json.dumps(mapping))
    return path


@pytest.mark.parametrize("devices", [2, 3, 4, 8])
@pytest.mark.parametrize("name", sorted(CASES))
def test_split_validates(name, devices, tmp_path):
    model_path, shapes = CASES[name]
    # The split's correctness is under test here, not the solver's proof: a short limit keeps the fallbacks short.
    result, report = split_and_check(model_path, tmp_path / "solved", devices, input_shapes=shapes, time_limit=10)
    assert report.passed, report.as_dict()
    assert 1 <= len(result.manifest.stages) <= devices

    # The same model forced into exactly `devices` stages, wherever the cuts fall.
    n_nodes = sum(s.nodes for s in result.manifest.stages)
    if n_nodes < devices:
        pytest.skip(f"{name} has too few nodes for {devices} stages")
    plan = _chunk_plan(tmp_path / "plan.json", model_path, devices)
    forced, report = split_and_check(model_path, tmp_path / "forced", devices, input_shapes=shapes, plan=plan)
    assert report.passed, report.as_dict()
    assert len(forced.manifest.stages) == devices
