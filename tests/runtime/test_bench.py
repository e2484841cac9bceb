"""The benchmark: structure and sanity of what it measures (never its speed)."""

from __future__ import annotations

import json
import math
import threading

import pytest

from conftest import MODELS
from onnxsplit.cli.main import main
from onnxsplit.errors import ModelError, UsageError
from onnxsplit.runtime.bench import (TIMELINE_REQUESTS, BenchResult, Throughput, TimelineSpan, bench, bench_shapes,
                                      core_warning, spread_warning, timeline)
from onnxsplit.runtime.pipeline import Span
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


def _throughput(label: str, per_round: tuple[float, ...]) -> Throughput:
    return Throughput(label, 1, 10, 1.0, sum(per_round) / len(per_round), 1.0, 2.0, per_round)


def test_core_warning():
    assert core_warning(2, 2) is None and core_warning(1, 8) is None
    assert core_warning(4, 2) == ("the CPU stages run 4 threads in all on 2 cores: they share cores, so the pipeline "
                                  "is slower and its stages' times longer than on separate devices")
    assert "on 1 core:" in core_warning(2, 1)


def test_spread_warning():
    steady = _throughput("pipeline (2 stages)", (100.0, 110.0, 105.0))
    assert steady.spread == pytest.approx(0.1)
    assert _throughput("one round", (50.0,)).spread == 0.0
    assert spread_warning([steady]) is None
    assert spread_warning([steady], limit=0.05) is not None
    busy = _throughput("original, 1 thread", (100.0, 40.0))
    assert busy.spread == pytest.approx(1.5)
    assert spread_warning([steady, busy]) == (
        "rounds spread by 150% (original, 1 thread: 40.0 to 100.0 samples/s, more than the 20% a quiet machine "
        "stays within): the machine is busy, so the speed-up ratios are unreliable")
    assert spread_warning([]) is None


def test_bench_warns_when_stages_outnumber_cores(transformer, monkeypatch):
    # Two one-thread stages on a process allowed one core: they cannot each have their own.
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    result = _within(bench, transformer, seconds=0.1, warmup=0.0, rounds=1, spread_limit=math.inf)
    assert result.warnings == (core_warning(2, 1),)
    assert all(s.cores == () for s in result.stages)  # not pinned either
    assert json.loads(json.dumps(result.as_dict()))["warnings"] == [core_warning(2, 1)]


@pytest.fixture
def uneven_rounds(monkeypatch):
    """The original model's rounds alternate between 1000 and 500 samples/s, whatever the machine does."""
    from onnxsplit.runtime import bench as bench_module

    turns: dict[int, int] = {}

    def measure(session, feeds, *, seconds, warmup):
        turn = turns[id(session)] = turns.get(id(session), -1) + 1
        return bench_module._Window(10, 0.01 if turn % 2 == 0 else 0.02, (0.001,) * 10)

    monkeypatch.setattr(bench_module, "_measure_session", measure)


def test_bench_warns_when_rounds_spread(transformer, uneven_rounds, capsys):
    result = _within(bench, transformer, seconds=0.2, warmup=0.0, rounds=2, pin=False)
    assert result.original_1.spread >= 0.5 and not result.reliable
    assert any(w.startswith("rounds spread by") for w in result.warnings)
    calm = _within(bench, transformer, seconds=0.2, warmup=0.0, rounds=2, pin=False, spread_limit=math.inf)
    assert calm.reliable and not any(w.startswith("rounds spread") for w in calm.warnings)
    with pytest.raises(UsageError, match="spread_limit must be zero or more"):
        bench(transformer, seconds=0.1, spread_limit=float("nan"))

    code = _within(main, ["bench", str(transformer), "--seconds", "0.2", "--warmup", "0", "--rounds", "2", "--no-pin"])
    captured = capsys.readouterr()
    assert code == 0
    assert "onnxsplit: warning: rounds spread by " in captured.err
    ratio_lines = [line for line in captured.out.splitlines() if line.startswith("pipeline / original")]
    assert len(ratio_lines) == 2 and all("x (unreliable: rounds spread " in line for line in ratio_lines)

    code = _within(main, ["bench", str(transformer), "--seconds", "0.2", "--warmup", "0", "--rounds", "2", "--no-pin",
                          "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert code == 0 and doc["reliable"] is False and doc["spread"] >= 0.5
    assert any(w.startswith("rounds spread by") for w in doc["warnings"])
    assert "onnxsplit: warning: rounds spread by " in captured.err


def check_timeline(spans: tuple[TimelineSpan, ...], stages: int) -> None:
    """A timeline of real runs: consecutive requests from 0, each through every stage in order, one at a time per
    stage, times from 0."""
    requests = sorted({s.request for s in spans})
    assert requests == list(range(len(requests))) and 1 <= len(requests) <= TIMELINE_REQUESTS
    assert [(s.request, s.stage) for s in spans] == [(r, k) for r in requests for k in range(stages)]
    assert min(s.start_ms for s in spans) == 0.0
    for s in spans:
        assert s.start_ms <= s.end_ms
    for r in requests:
        runs = spans[r * stages:(r + 1) * stages]
        for earlier, later in zip(runs, runs[1:]):
            assert later.start_ms >= earlier.end_ms  # stage k+1 starts after stage k ended for this request
    for k in range(stages):
        own = [s for s in spans if s.stage == k]
        for earlier, later in zip(own, own[1:]):
            assert later.start_ms >= earlier.end_ms  # a stage never runs two requests at once


def test_bench_records_a_timeline(transformer):
    result = _within(bench, transformer, seconds=0.4, warmup=0.05, rounds=1)
    check_timeline(result.timeline, 2)
    # Hundreds of requests fit in the window even on a loaded machine, so the timeline is full.
    assert len({s.request for s in result.timeline}) == TIMELINE_REQUESTS
    # The spans come from inside the measured window, and are part of each stage's busy time there.
    window_ms = result.pipeline.seconds * 1e3
    assert max(s.end_ms for s in result.timeline) <= window_ms
    for k, stage in enumerate(result.stages):
        assert sum(s.end_ms - s.start_ms for s in result.timeline if s.stage == k) <= stage.busy * window_ms * 1.01
    doc = json.loads(json.dumps(result.as_dict()))
    assert doc["timeline"][0] == {"request": 0, "stage": 0, "start_ms": 0.0, "end_ms": result.timeline[0].end_ms}
    assert len(doc["timeline"]) == len(result.timeline)


def _spans(rows) -> list[Span]:
    return [Span(r, k, a, b) for r, k, a, b in rows]


def test_timeline_keeps_the_last_whole_requests_of_the_window():
    rows = [(r, k, 10.0 + r + k * 0.5, 10.0 + r + k * 0.5 + 0.4) for r in range(10) for k in range(2)]
    spans = _spans(rows)
    # Requests 0 and 9 stick out of the window [10.2, 19.0]; 5 lost its stage-1 span.
    spans = [s for s in spans if (s.request, s.stage) != (5, 1)]
    got = timeline(spans, 2, opened=10.2, closed=19.0, requests=8)
    # The latest whole request is 8; going back, 5 is incomplete, so 6, 7, 8 are kept.
    assert [(s.request, s.stage) for s in got] == [(r, k) for r in range(3) for k in range(2)]
    assert got[0] == TimelineSpan(0, 0, 0.0, pytest.approx(400.0))
    assert got[-1].start_ms == pytest.approx((18.5 - 16.0) * 1e3)
    assert len(timeline(_spans(rows), 2, opened=0.0, closed=100.0, requests=4)) == 4 * 2
    assert {s.request for s in timeline(_spans(rows), 2, opened=0.0, closed=100.0, requests=4)} == {0, 1, 2, 3}
    assert timeline(_spans(rows), 2, opened=50.0, closed=60.0) == ()
    assert timeline((), 2, opened=0.0, closed=1.0) == ()


def test_ray_engine_bench_has_an_empty_timeline(transformer):
    pytest.importorskip("ray")
    # Ray actors record no spans: the result says so by an empty timeline, not by a warning.
    result = _within(bench, transformer, seconds=0.2, warmup=0.0, rounds=1, engine="ray", spread_limit=math.inf)
    assert result.timeline == () and result.pipeline.requests >= 1
    assert result.as_dict()["timeline"] == [] and result.warnings == ()
