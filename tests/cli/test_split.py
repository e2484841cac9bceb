"""`split` and `costgraph` hand the shared flags to the library unchanged."""

from __future__ import annotations

import pytest

from conftest import MODELS
from onnxsplit.cli.main import main
from onnxsplit.errors import UsageError


@pytest.fixture
def captured(monkeypatch):
    """Replace split() and prepare() by fakes that record their keyword arguments and stop."""
    import onnxsplit.splitting

    seen: dict = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise UsageError("stopped")

    monkeypatch.setattr(onnxsplit.splitting, "split", fake)
    monkeypatch.setattr(onnxsplit.splitting, "prepare", fake)
    return seen


@pytest.mark.parametrize("command", [["split", "-o", "OUT"], ["costgraph"]])
def test_inputs_reach_the_library(captured, tmp_path, capsys, command):
    argv = [command[0], str(MODELS / "transformer.onnx"), *[str(tmp_path / "out") if a == "OUT" else a
                                                            for a in command[1:]]]
    assert main([*argv, "--inputs", "feeds.npz", "--input-shape", "input_ids:4x32", "--costs", "estimate"]) == 1
    assert capsys.readouterr().err == "onnxsplit: error: stopped\n"
    assert captured["inputs"] == "feeds.npz" and captured["input_shapes"] == {"input_ids": (4, 32)}
    assert captured["costs"] == "estimate" and captured["profile_path"] is None


def test_split_options_reach_the_library(captured, tmp_path, capsys):
    assert main(["split", str(MODELS / "transformer.onnx"), "-o", str(tmp_path / "out"), "--solver", "dp",
                 "--objective", "latency", "--time-limit", "7.5", "--force", "--devices", "3",
                 "--device-memory", "1G"]) == 1
    capsys.readouterr()
    assert captured["solver"] == "dp" and captured["objective"] == "latency" and captured["time_limit"] == 7.5
    assert captured["force"] is True and captured["devices"].count == 3
    assert captured["devices"].kinds[0].memory == 1e9
    assert "inputs" not in captured  # not given: the library's default


def test_input_shape_errors_name_the_flag(tmp_path, capsys):
    assert main(["split", str(MODELS / "transformer.onnx"), "-o", str(tmp_path / "out"), "--input-shape", "x:1xq"]) == 1
    assert capsys.readouterr().err.startswith("onnxsplit: error: --input-shape: ")


def test_state_options_reach_the_library(captured, tmp_path, capsys):
    from onnxsplit.state import StatePair

    assert main(["split", str(MODELS / "transformer.onnx"), "-o", str(tmp_path / "out"), "--state", "a:b",
                 "--state", "c:d", "--max-seq-len", "128", "--max-batch", "4"]) == 1
    capsys.readouterr()
    assert captured["state"] == (StatePair("a", "b"), StatePair("c", "d"))
    assert captured["max_seq_len"] == 128 and captured["max_batch"] == 4


def test_no_state_options_leave_the_library_defaults(captured, tmp_path, capsys):
    assert main(["split", str(MODELS / "transformer.onnx"), "-o", str(tmp_path / "out")]) == 1
    capsys.readouterr()
    assert not {"state", "max_seq_len", "max_batch"} & set(captured)


@pytest.mark.parametrize("flags, message", [
    (["--state", "past"], "state pair 'past': expected INPUT:OUTPUT"),
    (["--state", "past:"], "state pair 'past:': expected INPUT:OUTPUT"),
    (["--state", "ghost:logits"], "state pair ghost:logits: the model has no input 'ghost'"),
    (["--max-batch", "2"], "--max-batch needs --max-seq-len"),
    (["--max-seq-len", "0"], "--max-seq-len must be at least 1, got 0"),
    (["--max-seq-len", "1.5"], "--max-seq-len must be a whole number"),
])
def test_state_flag_errors_are_one_line(tmp_path, capsys, flags, message):
    from graphs import save
    from stategraphs import decoder

    src = save(decoder(2), tmp_path / "decoder.onnx")
    code = main(["split", str(src), "-o", str(tmp_path / "out"), "--costs", "estimate", *flags])
    assert code in (1, 2)  # 2: argparse refused the value itself
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith(("onnxsplit: error: ", "usage: ", "onnxsplit split: error: ")), err
    assert not (tmp_path / "out").exists()
