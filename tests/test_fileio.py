"""Atomic writes: the whole new file or the old one, and never a temporary file left behind."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from onnxsplit import fileio
from onnxsplit.fileio import save_npz_atomic, write_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic


def _only(folder, *names):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_writers(tmp_path):
    write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_text_atomic(tmp_path / "a.txt", "één\n")
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    save_npz_atomic(tmp_path / "a.npz", {"x": np.arange(3)})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "één\n"
    text = (tmp_path / "a.json").read_text()
    assert json.loads(text) == {"b": 1, "a": [1, 2]} and text.endswith("}\n") and text.index('"b"') < text.index('"a"')
    with np.load(tmp_path / "a.npz") as data:
        assert data["x"].tolist() == [0, 1, 2]
    _only(tmp_path, "a.bin", "a.txt", "a.json", "a.npz")  # .npz kept its name: numpy added no second suffix


def test_replaces_and_respects_umask(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    write_json_atomic(target, [1])
    assert json.loads(target.read_text()) == [1]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not the 0600 of a bare mkstemp


class Boom(Exception):
    pass


def test_a_failing_write_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def half(f):
        f.write(b"half of the new")
        raise Boom()

    with pytest.raises(Boom):
        write_atomic(target, half)
    assert target.read_text() == "old"
    _only(tmp_path, "out.txt")
    with pytest.raises(KeyboardInterrupt):  # an interrupt cleans up too
        write_atomic(tmp_path / "new.txt", lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    _only(tmp_path, "out.txt")


def test_a_failing_rename_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", refuse)
    with pytest.raises(OSError):
        save_npz_atomic(target, {"x": np.zeros(4)})
    assert target.read_bytes() == b"old"
    _only(tmp_path, "out.npz")


def test_unwritable_values_fail_before_any_file(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"a": object()})
    _only(tmp_path)


def test_temporary_names_are_unique(tmp_path, monkeypatch):
    """Two writers of one target never share a temporary file."""
    seen = []
    real = fileio._temp_beside

    def spy(path):
        tmp, fd = real(path)
        seen.append(tmp.name)
        return tmp, fd

    monkeypatch.setattr(fileio, "_temp_beside", spy)
    for _ in range(20):
        write_text_atomic(tmp_path / "t.txt", "x")
    assert len(set(seen)) == 20 and all(n.startswith(".t.txt.") and n.endswith(".tmp") for n in seen)
