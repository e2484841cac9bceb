"""The benchmark: structure and sanity of what it measures (never its speed)."""

from __future__ import annotations

import json
import math
import threading

import pytest

from conftest import MODELS
from onnxsplit.cli.main import main
from onnxsplit.errors import ModelError, UsageError
from onnxsplit.runtime.bench import BenchResult, bench, bench_shapes
from onnxsplit.manifest import TensorSpec
from onnxsplit.splitting import split

LIMIT_S = 60


def _within(fn, *args, **kwargs):
    """fn(*args, **kwargs), failing the test if it has not returned after LIMIT_S seconds."""
    box: dict[str, object] = {}

    def body():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(LIMIT_S)
    if worker.is_alive():
        pytest.fail(f"{fn.__name__} did not return within {LIMIT_S} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "transformer2"
    split(MODELS / "transformer.onnx", out, devices=2, input_shapes={"input_ids": (2, 16)})
    return out


def _sane(result: BenchResult, stages: int) -> None:
    for t in (result.pipeline, result.original_1, result.original_n):
        assert t.requests >= 1 and t.seconds > 0 and t.samples_per_s > 0
        assert 0 < t.p50_ms <= t.p99_ms
    assert result.original_1.threads == 1
    assert result.original_n.threads == result.pipeline.threads == sum(s.threads for s in result.stages)
    assert len(result.stages) == stages
    for s in result.stages:
        # A steady-state window cuts through requests in flight: each stage ran about as many.
        assert abs(s.runs - result.pipeline.requests) <= result.in_flight * result.rounds
        for fraction in (s.busy, s.starved, s.blocked, s.other):
            assert 0.0 <= fraction <= 1.0
        assert math.isclose(s.busy + s.starved + s.blocked + s.other, 1.0)
        assert s.measured_ms > 0 and s.predicted_ms > 0
    assert result.stages[-1].blocked == 0.0  # the last stage hands off to nobody
    assert result.vs_original_1 > 0 and result.vs_original_n > 0
    assert math.isclose(result.vs_original_1, result.pipeline.samples_per_s / result.original_1.samples_per_s)
    for t in (result.pipeline, result.original_1, result.original_n):
        assert len(t.per_round) == result.rounds and min(t.per_round) > 0


def test_bench_structure(transformer):
    result = _within(bench, transformer, seconds=0.3, warmup=0.05, rounds=3)
    _sane(result, 2)
    assert result.input_shapes == {"input_ids": (2, 16)}
    assert result.samples_per_request == 2 and result.predicted_scale == 1.0
    doc = json.loads(json.dumps(result.as_dict()))
    assert doc["stages"][0]["index"] == 0 and "vs_original_n" in doc


def test_bench_batch(transformer):
    result = _within(bench, transformer, seconds=0.2, warmup=0.0, rounds=1, batch=6, pin=False)
    _sane(result, 2)
    assert result.input_shapes == {"input_ids": (6, 16)}
    assert result.samples_per_request == 6 and result.predicted_scale == 3.0
    assert all(s.cores == () for s in result.stages)


def test_bench_shapes():
    input_shapes = {"a": [4, 3], "b": [2, 5], "c": [7]}
    inputs = [TensorSpec("a", "float32", ("N", 3)), TensorSpec("b", "float32", (2, 5)),
              TensorSpec("c", "float32", (None,))]
    assert bench_shapes(inputs, input_shapes) == ({"a": (4, 3), "b": (2, 5), "c": (7,)}, 1.0)
    assert bench_shapes(inputs, input_shapes, batch=8) == ({"a": (8, 3), "b": (2, 5), "c": (8,)}, 2.0)
    with pytest.raises(UsageError, match="at least 1"):
        bench_shapes(inputs, input_shapes, batch=0)
    fixed = [TensorSpec("b", "float32", (2, 5))]
    with pytest.raises(UsageError, match="no model input has a symbolic first dimension"):
        bench_shapes(fixed, {"b": [2, 5]}, batch=4)


def test_bench_checks_the_original(transformer, tmp_path):
    with pytest.raises(ModelError, match="missing.onnx: no such file"):
        bench(transformer, seconds=0.1, model_path=tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="is not the model this folder was split from"):
        bench(transformer, seconds=0.1, model_path=MODELS / "branchy_cnn.onnx")
    with pytest.raises(UsageError, match="seconds must be positive"):
        bench(transformer, seconds=0)
    with pytest.raises(UsageError, match="rounds and in_flight_per_stage must be at least 1"):
        bench(transformer, seconds=1, rounds=0)


def test_cli_bench(transformer, capsys):
    code = _within(main, ["bench", str(transformer), "--seconds", "0.2", "--warmup", "0", "--rounds", "2", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    assert doc["pipeline"]["samples_per_s"] > 0 and len(doc["stages"]) == 2 and len(doc["pipeline"]["per_round"]) == 2

    code = _within(main, ["bench", str(transformer), "--seconds", "0.2", "--warmup", "0", "--batch", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "pipeline / original, 1 thread:" in out and "pipeline / original, 2 threads:" in out
    assert "predicted times scaled by 1.5" in out

    code = main(["bench", str(transformer), "--seconds", "0.1", "--batch", "0"])
    assert code == 1 and capsys.readouterr().err.strip() == "onnxsplit: error: --batch must be at least 1, got 0"
