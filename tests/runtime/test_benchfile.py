"""Reading back `bench --json`: a real result round-trips, a damaged file is refused naming the field."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import MODELS, one_line
from onnxsplit.cli.main import main
from onnxsplit.errors import UsageError
from onnxsplit.runtime.bench import bench
from onnxsplit.runtime.benchfile import load_bench
from onnxsplit.splitting import split


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchfile") / "transformer2"
    split(MODELS / "transformer.onnx", out, devices=2, input_shapes={"input_ids": (2, 16)})
    return out, bench(out, seconds=0.2, warmup=0.05, rounds=2)


def test_a_dumped_result_reads_back_equal(measured, tmp_path):
    _, result = measured
    assert result.timeline  # the round trip covers the timeline too
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result.as_dict(), indent=2))
    assert load_bench(path) == result


def test_what_the_cli_printed_reads_back(measured, tmp_path, capsys):
    outdir, _ = measured
    assert main(["bench", str(outdir), "--seconds", "0.2", "--warmup", "0", "--rounds", "1", "--json"]) == 0
    path = tmp_path / "bench.json"
    path.write_text(capsys.readouterr().out)
    result = load_bench(path)
    assert result.outdir == str(outdir) and len(result.stages) == 2 and result.rounds == 1
    assert result.as_dict() == json.loads(path.read_text())


def test_non_finite_figures_as_the_cli_writes_them(measured, tmp_path):
    _, result = measured
    doc = result.as_dict()
    doc["spread_limit"] = "inf"  # --json writes what JSON cannot hold as strings
    doc["reliable"] = True  # no spread exceeds an infinite limit
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    assert load_bench(path) == replace(result, spread_limit=float("inf"))


def test_a_file_without_a_timeline_reads_with_none(measured, tmp_path):
    _, result = measured
    doc = result.as_dict()
    del doc["timeline"]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    assert load_bench(path) == replace(result, timeline=())


DELETE = object()


def _damage(doc, where, value):
    """Set (or, with value DELETE, delete) the field at ``where``, a list of keys and indices."""
    *parents, last = where
    for key in parents:
        doc = doc[key]
    if value is DELETE:
        del doc[last]
    else:
        doc[last] = value


@pytest.mark.parametrize("where, value, field", [
    (["pipeline"], DELETE, "pipeline: missing"),
    (["pipeline", "samples_per_s"], "fast", "pipeline.samples_per_s: expected a number"),
    (["original_1", "per_round", 0], None, "original_1.per_round[0]: expected a number, got null"),
    (["stages", 1, "busy"], 1.5, "stages[1].busy: expected a fraction"),
    (["stages", 1, "index"], 0, "stages[1].index: expected 1"),
    (["stages", 0, "cores"], [0, "one"], "stages[0].cores[1]: expected an integer"),
    (["rounds"], True, "rounds: expected an integer"),
    (["input_shapes", "input_ids"], [2, 16.5], "input_shapes['input_ids'][1]: expected an integer"),
    (["warnings"], "none", "warnings: expected a list"),
    (["timeline", 3, "stage"], 7, "timeline[3].stage: stage 7 does not exist"),
    (["timeline", 0, "end_ms"], -1.0, "timeline[0].end_ms: -1.0 is before start_ms"),
    (["timeline", 2], "span", "timeline[2]: expected an object"),
    (["vs_original_1"], 123456.0, "vs_original_1: 123456.0 disagrees"),
    (["reliable"], "yes", "reliable: expected true or false"),
    (["spread_limit"], "-inf", "spread_limit: must be zero or more"),
])
def test_a_damaged_file_is_refused_naming_the_field(measured, tmp_path, where, value, field):
    _, result = measured
    doc = result.as_dict()
    _damage(doc, where, value)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError) as info:
        load_bench(path)
    assert one_line(info).startswith(f"{path}: {field}")


def test_a_file_that_is_not_a_bench_result(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read a JSON bench result"):
        load_bench(path)
    path.write_text("[]")
    with pytest.raises(UsageError, match="expected an object, got a list"):
        load_bench(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_bench(tmp_path / "missing.json")
