"""-o FILE: never overwrite without --force; a missing, read-only or impossible folder is one line and writes nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import MODELS
from onnxsplit.cli.main import main


def _error(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("onnxsplit: error: "), err
    return err.strip()


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("output") / "out"
    assert main(["split", str(MODELS / "transformer.onnx"), "--input-shape", "input_ids:4x32", "--costs", "estimate",
                 "-o", str(out)]) == 0
    return out


@pytest.fixture
def feeds(tmp_path):
    np.savez(tmp_path / "in.npz", input_ids=np.zeros((4, 32), dtype=np.int64))
    return tmp_path / "in.npz"


def _run(split_dir, feeds, out):
    return ["run", split_dir, "--inputs", feeds, "-o", out, "--no-pin"]


def _costgraph(out):
    return ["costgraph", MODELS / "branchy_cnn.onnx", "--input-shape", "image:8x3x32x32", "--costs", "estimate",
            "-o", out]


def test_run_overwrites_only_with_force(split_dir, feeds, tmp_path, capsys):
    out = tmp_path / "mine.npz"
    out.write_bytes(b"the user's own file")
    err = _error(_run(split_dir, feeds, out), capsys)
    assert "exists" in err and "--force" in err
    assert out.read_bytes() == b"the user's own file"
    assert main([str(a) for a in _run(split_dir, feeds, out)] + ["--force"]) == 0
    with np.load(out) as data:
        assert data.files


def test_costgraph_overwrites_only_with_force(tmp_path, capsys):
    out = tmp_path / "g.json"
    out.write_text("keep")
    assert "--force" in _error(_costgraph(out), capsys)
    assert out.read_text() == "keep"
    assert main([str(a) for a in _costgraph(out)] + ["--force"]) == 0
    assert out.read_text() != "keep"


@pytest.mark.parametrize("command", ["run", "costgraph"])
def test_missing_folder(split_dir, feeds, tmp_path, capsys, command):
    out = tmp_path / "nowhere" / "x.out"
    argv = _run(split_dir, feeds, out) if command == "run" else _costgraph(out)
    assert _error(argv, capsys) == f"onnxsplit: error: -o {out}: folder {out.parent} does not exist"
    assert not out.parent.exists()


@pytest.mark.parametrize("command", ["run", "costgraph"])
def test_parent_is_a_file(split_dir, feeds, tmp_path, capsys, command):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "x.out", tmp_path / "afile" / "deeper" / "x.out"):
        argv = _run(split_dir, feeds, out) if command == "run" else _costgraph(out)
        assert _error(argv, capsys) == f"onnxsplit: error: -o {out}: {tmp_path / 'afile'} is a file, not a folder"
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("command", ["run", "costgraph"])
def test_output_is_a_folder(split_dir, feeds, tmp_path, capsys, command):
    (tmp_path / "adir").mkdir()
    argv = _run(split_dir, feeds, tmp_path / "adir") if command == "run" else _costgraph(tmp_path / "adir")
    assert "is a folder" in _error(argv, capsys)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("command", ["run", "costgraph"])
def test_read_only_folder(split_dir, feeds, tmp_path, capsys, command):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        argv = _run(split_dir, feeds, ro / "x.out") if command == "run" else _costgraph(ro / "x.out")
        assert "is not writable" in _error(argv, capsys)
        assert not list(ro.iterdir())
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("command", ["run", "costgraph"])
def test_immutable_folder(split_dir, feeds, immutable, capsys, command):
    """chattr +i: a folder even root cannot write into (the test above is skipped for root)."""
    for force in ([], ["--force"]):
        argv = _run(split_dir, feeds, immutable / "x.out") if command == "run" else _costgraph(immutable / "x.out")
        assert str(immutable) in _error([*argv, *force], capsys)
        assert not list(immutable.iterdir())


@pytest.mark.parametrize("command", ["run", "costgraph"])
def test_a_write_that_fails_anyway_is_one_line(split_dir, feeds, tmp_path, monkeypatch, capsys, command):
    """The folder looked writable but the write failed (read-only mount, full disk, or root's checks): one line."""
    import onnxsplit.fileio

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(onnxsplit.fileio, "save_npz_atomic", refuse)
    monkeypatch.setattr(onnxsplit.fileio, "write_json_atomic", refuse)
    out = tmp_path / "x.out"
    argv = _run(split_dir, feeds, out) if command == "run" else _costgraph(out)
    assert _error(argv, capsys) == f"onnxsplit: error: -o {out}: cannot write: Permission denied"
    assert not out.exists()


def test_bench_refuses_a_batch_beyond_memory(split_dir, capsys):
    err = _error(["bench", split_dir, "--batch", 10**11, "--seconds", 0.1], capsys)
    assert err.startswith("onnxsplit: error: --batch 100000000000: the inputs would take 25.6 TB, more than this "
                          "machine's "), err
    assert err.endswith(" of memory")


def test_bench_batch_needs_a_symbolic_first_dim(tmp_path, capsys):
    from onnx import helper

    from graphs import f32, model, save

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")]
    fixed = save(model(nodes, [f32("x", [4])], [f32("y", [4])]), tmp_path / "fixed.onnx")
    assert main(["split", str(fixed), "--costs", "estimate", "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    err = _error(["bench", tmp_path / "out", "--batch", 4, "--seconds", 0.1], capsys)
    assert err == "onnxsplit: error: --batch: no model input has a symbolic first dimension to batch"
