"""The README's quick start, run as written (minus the install step)."""

from __future__ import annotations

import re
import shlex

from conftest import ROOT
from onnxsplit.cli.main import main


def _quick_start_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", text, re.S).group(1)
    commands = []
    for part in block.replace("\n", " ").split("&&"):
        words = shlex.split(part)
        if words and words[0].endswith("onnxsplit"):
            commands.append(words[1:])
    return commands


def test_quick_start_splits_and_validates(tmp_path, monkeypatch, capsys):
    commands = _quick_start_commands()
    assert [c[0] for c in commands] == ["split", "validate"]
    monkeypatch.chdir(ROOT)
    # Written where the README says, but inside the test's folder.
    for words in commands:
        words = [str(tmp_path / w) if w.startswith("out/") else w for w in words]
        assert main(words) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "PASSED"
    # A newcomer's first plan is proven optimal.
    assert "gap 0.0%" in out, out


def test_decoder_commands_split_validate_and_generate(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### Decoder models.*?```sh\n(.*?)```", text, re.S).group(1)
    commands = [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("onnxsplit ")]
    assert [c[0] for c in commands] == ["split", "validate", "generate"]
    monkeypatch.chdir(ROOT)
    outputs = []
    for words in commands:
        words = [str(tmp_path / w) if w.startswith("out/") else w for w in words]
        assert main(words) == 0, capsys.readouterr()
        outputs.append(capsys.readouterr().out)
    assert "8 state pairs kept on their stages (stage 0: 4, stage 1: 4)" in outputs[0]
    assert outputs[1].strip().splitlines()[-1] == "PASSED"
    import numpy as np

    from onnxsplit.decoding import OriginalDecoder

    new_ids = [int(i) for i in outputs[2].strip().splitlines()[0].split(",")]
    unsplit = OriginalDecoder(ROOT / "models" / "decoder.onnx").generate(np.array([[1, 2, 3]]), 8)
    assert new_ids == unsplit.tokens[0, 3:].tolist()
