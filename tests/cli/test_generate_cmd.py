"""`onnxsplit generate`: the ids after a prompt, as text or JSON; every mistake one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MODELS
from onnxsplit.cli.main import main
from onnxsplit.decoding import OriginalDecoder
from onnxsplit.splitting import split

DECODER = MODELS / "decoder.onnx"


@pytest.fixture(scope="module")
def decoder_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("generate") / "out"
    split(DECODER, out, devices=2, costs="estimate")
    return out


@pytest.fixture(scope="module")
def expected():
    return [int(t) for t in OriginalDecoder(DECODER).generate(np.array([[1, 2, 3]]), 8).tokens[0, 3:]]


def test_prints_the_new_ids(decoder_split, expected, capsys):
    assert main(["generate", str(decoder_split), "--prompt-ids", "1,2,3", "--max-new-tokens", "8"]) == 0
    first, summary = capsys.readouterr().out.strip().splitlines()
    assert first == ",".join(map(str, expected))
    assert summary.startswith("8 tokens after a prompt of 3 in ") and summary.endswith(" s on 2 stages")


def test_json(decoder_split, expected, capsys):
    assert main(["generate", str(decoder_split), "--prompt-ids", "1, 2,3", "--max-new-tokens", "8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["new_ids"] == expected and doc["prompt_ids"] == [1, 2, 3] and doc["ids"] == [1, 2, 3, *expected]
    assert doc["stages"] == 2 and doc["seconds"] > 0


def _error(argv, capsys, *parts):
    assert main([str(a) for a in argv]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxsplit: error: "), captured.err
    for part in parts:
        assert part in lines[0], lines[0]
    return captured.out


@pytest.mark.parametrize("ids", ["1,x", "", "1,,2", "-1"])
def test_bad_prompt_ids(decoder_split, capsys, ids):
    _error(["generate", decoder_split, "--prompt-ids", ids], capsys, f"--prompt-ids {ids!r}: expected token ids")


def test_errors_are_one_line(decoder_split, tmp_path, capsys):
    _error(["generate", decoder_split, "--prompt-ids", "1,2,3", "--max-new-tokens", "8", "--max-seq-len", "5"],
           capsys, "a cache of 6 positions would pass max_seq_len 5")
    _error(["generate", decoder_split, "--prompt-ids", "1,2,3", "--max-seq-len", "0"], capsys,
           "--max-seq-len must be at least 1, got 0")
    _error(["generate", decoder_split, "--prompt-ids", "1,2,999"], capsys, "stage 0 (stage_0.onnx", "failed")
    _error(["generate", tmp_path / "nowhere", "--prompt-ids", "1"], capsys, "not a split folder")
    plain = tmp_path / "plain"
    split(MODELS / "transformer.onnx", plain, devices=2, costs="estimate")
    capsys.readouterr()  # the split's own warnings
    _error(["generate", plain, "--prompt-ids", "1"], capsys, "the split keeps no state")
