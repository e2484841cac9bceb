"""The bundled test models: reproducible from tools/make_models.py, valid, runnable."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import make_models  # noqa: E402

MODELS = ROOT / "models"
# Feeds a model needs beyond the defaults: the decoder's cache lengths must add up, its ids stay in its vocabulary.
FEED_OPTIONS = {
    "decoder.onnx": {"dims": {"sequence_length": 4, "past_sequence_length": 3, "total_sequence_length": 7},
                     "int_high": 64},
}


def test_regenerated_models_are_byte_identical(tmp_path: Path) -> None:
    written = make_models.write_bundled(tmp_path)
    assert sorted(p.name for p in written) == sorted(make_models.bundled_files())
    for path in written:
        committed = MODELS / path.name
        assert committed.exists(), f"{committed} missing: run tools/make_models.py"
        assert path.read_bytes() == committed.read_bytes(), f"{path.name} differs from the committed file"


@pytest.mark.parametrize("name", list(make_models.BUNDLED))
def test_model_checks_and_runs(name: str) -> None:
    path = MODELS / name
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert model.ir_version == make_models.IR_VERSION
    assert {o.domain: o.version for o in model.opset_import}[""] == make_models.OPSET
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed_options = FEED_OPTIONS.get(name, {})
    for seed, n in ((0, 1), (1, 3)):
        dims = {"N": n, "batch": n, "batch_size": n, "seq": 7, **feed_options.get("dims", {})}
        feeds = make_models.random_feeds(model, seed=seed, dims=dims, int_high=feed_options.get("int_high", 100))
        outputs = session.run(None, feeds)
        assert len(outputs) == len(model.graph.output)
        for out in outputs:
            assert np.isfinite(out.astype(np.float64)).all()


def test_external_data_model_keeps_weights_outside() -> None:
    model = onnx.load(str(MODELS / "external_data.onnx"), load_external_data=False)
    assert model.graph.initializer
    for t in model.graph.initializer:
        assert t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data
        assert {e.key: e.value for e in t.external_data}["location"] == "external_data.onnx.data"


def test_control_flow_bodies_read_main_graph_outputs() -> None:
    model = onnx.load(str(MODELS / "control_flow.onnx"))
    produced = {o for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type not in ("If", "Loop"):
            continue
        for attr in node.attribute:
            body = attr.g
            local = {i.name for i in body.input} | {o for n in body.node for o in n.output}
            outer = {i for n in body.node for i in n.input if i and i not in local}
            assert outer & produced, f"{node.op_type}.{attr.name} reads no main-graph node output"


def test_local_function_model_calls_its_function() -> None:
    model = onnx.load(str(MODELS / "local_function.onnx"))
    (fn,) = model.functions
    assert fn.domain == make_models.CUSTOM_DOMAIN
    assert make_models.CUSTOM_DOMAIN in {o.domain for o in model.opset_import}
    calls = [n for n in model.graph.node if (n.domain, n.op_type) == (fn.domain, fn.name)]
    assert len(calls) >= 3


def test_deep_transformer_shares_the_builder() -> None:
    two = make_models.make_deep_transformer(layers=2)
    bundled = onnx.load(str(MODELS / "transformer.onnx"))
    assert [n.op_type for n in two.graph.node] == [n.op_type for n in bundled.graph.node]
    deeper = make_models.make_deep_transformer(layers=4)
    per_layer = (len(deeper.graph.node) - len(two.graph.node)) // 2
    assert 150 <= per_layer <= 450


def test_detector_is_a_deterministic_branchy_model_that_runs() -> None:
    model = make_models.make_detector()
    assert model.SerializeToString() == make_models.make_detector().SerializeToString()
    onnx.checker.check_model(model, full_check=True)
    assert 250 <= len(model.graph.node) <= 350
    assert {"Split", "Concat", "Resize", "MaxPool"} <= {n.op_type for n in model.graph.node}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (boxes,) = session.run(None, make_models.random_feeds(model, dims={"N": 1}))
    assert boxes.shape == (1, 12, 2100) and np.isfinite(boxes).all()
