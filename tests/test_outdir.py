"""Writing a split folder into place: nothing onnxsplit did not write is ever deleted, moved or overwritten.

Every case runs the real `onnxsplit split` command on a tiny model (costs
estimated, so each split takes a few milliseconds) and then checks what is
on disk: the user's files untouched, OUTDIR either the old split or the new
one, and no scratch folder or parent folder left behind.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MODELS, ROOT
from graphs import chain, save
from onnxsplit.cli.main import main
from onnxsplit.errors import OutputError
from onnxsplit.manifest import load_manifest
from onnxsplit.outdir import MARKER, PREFIX, check_replaceable, clean_stale, discard, make_scratch, place

SPLIT = ["--costs", "estimate", "--devices", "2"]


def _split(model, out, *flags):
    return main(["split", str(model), "-o", str(out), *SPLIT, *[str(f) for f in flags]])


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def _one_line(code, err, pattern):
    assert code == 1, err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("onnxsplit: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert all(line.startswith("onnxsplit: ") for line in lines), err  # no traceback
    assert pattern in errors[0], errors[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links not followed) with its bytes; folders as None."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = None if p.is_dir() and not p.is_symlink() else (os.readlink(p) if p.is_symlink() else p.read_bytes())
    return out


def _scratch(parent: Path) -> list[str]:
    """Folders a split may leave beside its output: ours (by prefix) and the old naming."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(PREFIX) or ".onnxsplit-old" in p.name
                  or (p.name.startswith(".out.") and p.is_dir()))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _set_marker(folder: Path, **fields) -> None:
    marker = folder / MARKER
    doc = json.loads(marker.read_text())
    doc.update(fields)
    marker.write_text(json.dumps(doc))


@pytest.fixture
def good(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    return save(chain(4), src / "good.onnx")


# -- 1. --force replaces only a previous split ---------------------------------------------------------------------


def test_force_refuses_the_models_own_folder(good, capsys):
    folder = good.parent
    (folder / "notes.txt").write_text("mine")
    before = _snapshot(folder)
    code, err = _run(["split", good, "-o", folder, "--force", *SPLIT], capsys)
    _one_line(code, err, "good.onnx")
    assert _snapshot(folder) == before
    assert _scratch(folder.parent) == []


def test_force_refuses_a_split_with_a_foreign_file(good, tmp_path, capsys):
    out = tmp_path / "out"
    assert _split(good, out) == 0
    (out / "notes.txt").write_text("mine")
    (out / "zz").mkdir()
    before = _snapshot(out)
    code, err = _run(["split", good, "-o", out, "--force", *SPLIT], capsys)
    _one_line(code, err, "notes.txt")
    assert _snapshot(out) == before


def test_force_refuses_a_folder_that_is_not_a_split(good, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stage_0.onnx").write_bytes(good.read_bytes())
    before = _snapshot(out)
    code, err = _run(["split", good, "-o", out, "--force", *SPLIT], capsys)
    _one_line(code, err, "manifest.json")
    assert _snapshot(out) == before
    # A manifest.json that is not ours does not make it a split either.
    (out / "manifest.json").write_text(json.dumps({"format": "something.else"}))
    before = _snapshot(out)
    code, err = _run(["split", good, "-o", out, "--force", *SPLIT], capsys)
    _one_line(code, err, "manifest.json")
    assert _snapshot(out) == before


def test_force_replaces_a_previous_split_and_an_empty_folder(good, tmp_path):
    out = tmp_path / "out"
    assert _split(good, out) == 0
    first = (out / "manifest.json").stat().st_ino
    assert _split(good, out, "--force") == 0
    assert (out / "manifest.json").stat().st_ino != first
    assert load_manifest(out).stages
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _split(good, empty, "--force") == 0
    assert load_manifest(empty).stages
    assert _scratch(tmp_path) == []
    assert not (out / MARKER).exists()


def test_check_replaceable_names_the_first_foreign_entry(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": "onnxsplit.manifest"}))
    for name in ("stage_0.onnx", "stage_0.onnx.data", "stage_12.onnx", "plan.json", MARKER):
        (folder / name).write_text("")
    check_replaceable(folder)
    for bad in ("b.txt", "a.onnx"):
        (folder / bad).write_text("")
    with pytest.raises(OutputError, match="a.onnx"):
        check_replaceable(folder)


# -- 2. an existing file ---------------------------------------------------------------------------------------------


def test_force_refuses_an_existing_file(good, tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("mine")
    code, err = _run(["split", good, "-o", target, "--force", *SPLIT], capsys)
    _one_line(code, err, "not a folder")
    assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# -- 3. a sibling named like the old backup ------------------------------------------------------------------------


def test_a_foreign_onnxsplit_old_sibling_is_kept(good, tmp_path):
    out = tmp_path / "out"
    assert _split(good, out) == 0
    sibling = tmp_path / "out.onnxsplit-old"
    sibling.mkdir()
    (sibling / "thesis.tex").write_text("years of work")
    assert _split(good, out, "--force") == 0
    assert (sibling / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.onnxsplit-old", "src"]


# -- 4. a symlinked OUTDIR is followed -------------------------------------------------------------------------------


def test_symlinked_outdir_is_followed(good, tmp_path, capsys):
    real = tmp_path / "disk" / "real"
    real.parent.mkdir()
    assert _split(good, real) == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    first = (real / "manifest.json").stat().st_ino
    assert _split(good, link, "--force") == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real / "manifest.json").stat().st_ino != first
    assert load_manifest(link).source_path() == good.resolve()
    assert load_manifest(real).source_path() == good.resolve()
    assert _scratch(tmp_path) == [] and _scratch(real.parent) == []
    # A link to a folder that is not a split: refused, the target untouched.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("mine")
    (tmp_path / "link2").symlink_to(tmp_path / "mine")
    code, err = _run(["split", good, "-o", tmp_path / "link2", "--force", *SPLIT], capsys)
    _one_line(code, err, "a.txt")
    assert (tmp_path / "mine" / "a.txt").read_text() == "mine" and (tmp_path / "link2").is_symlink()


def test_symlink_loop_and_dangling_link(good, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, err = _run(["split", good, "-o", loop, "--force", *SPLIT], capsys)
    _one_line(code, err, "symlink")
    assert loop.is_symlink()
    # A dangling link is followed like any other: the split is written at its target.
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "target")
    assert _split(good, dangling) == 0
    assert dangling.is_symlink() and load_manifest(tmp_path / "target").stages


# -- 5. replacing is atomic, with rollback -------------------------------------------------------------------------


def _fail_rename_into(monkeypatch, target: Path, exc: BaseException):
    """os.rename raises ``exc`` the first time something is moved onto ``target``, then works again."""
    real = os.rename
    calls = []

    def rename(src, dst, *args, **kwargs):
        calls.append((Path(src), Path(dst)))
        if Path(dst) == target and not any(c for c in calls[:-1] if c[1] == target):
            raise exc
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    return calls


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "injected"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_replace_rolls_back_when_the_move_fails(good, tmp_path, monkeypatch, capsys, exc):
    out = tmp_path / "out"
    assert _split(good, out) == 0
    before = _snapshot(out)
    calls = _fail_rename_into(monkeypatch, out, exc)
    code = _split(good, out, "--force")
    monkeypatch.undo()
    assert code == (130 if isinstance(exc, KeyboardInterrupt) else 1)
    assert calls[0][0] == out  # the old split moved aside first, then the move of the new one failed
    assert _snapshot(out) == before
    assert _scratch(tmp_path) == []
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_replace_keeps_the_old_split_when_moving_it_aside_fails(good, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _split(good, out) == 0
    before = _snapshot(out)
    real = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(src) == out:
            raise OSError(errno.EBUSY, "injected")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    code, err = _run(["split", good, "-o", out, "--force", *SPLIT], capsys)
    monkeypatch.undo()
    _one_line(code, err, "injected")
    assert _snapshot(out) == before
    assert _scratch(tmp_path) == []


def _failing_call(real, index: int):
    """``real``, except that call number ``index`` (from 0) raises an injected OSError."""
    calls = []

    def call(*args, **kwargs):
        calls.append(args)
        if len(calls) == index + 1:
            raise OSError(errno.EIO, "injected")
        return real(*args, **kwargs)

    return call


def test_place_is_old_or_new_at_every_step(tmp_path, monkeypatch):
    """Fail each rename of a replacement in turn: the target is always a whole split, old or new."""
    def make(folder, tag):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"format": "onnxsplit.manifest", "tag": tag}))
        (folder / "stage_0.onnx").write_text(tag)

    for step in range(2):
        root = tmp_path / str(step)
        root.mkdir()
        make(root / "out", "old")
        scratch = make_scratch(root, target="out")
        (scratch.path / "manifest.json").write_text(json.dumps({"format": "onnxsplit.manifest", "tag": "new"}))
        (scratch.path / "stage_0.onnx").write_text("new")
        monkeypatch.setattr(os, "rename", _failing_call(os.rename, step))
        try:
            with pytest.raises(OutputError, match="injected"):
                place(scratch.path, root / "out", force=True)
        finally:
            monkeypatch.undo()
            discard(scratch)
        assert json.loads((root / "out" / "manifest.json").read_text())["tag"] == "old", step
        assert (root / "out" / "stage_0.onnx").read_text() == "old", step
        assert sorted(p.name for p in root.iterdir()) == ["out"], step


def test_a_failed_rollback_is_finished_by_the_next_split(good, tmp_path, monkeypatch, caplog):
    """Moving the new split in and moving the old one back both fail: the old split waits in a marked backup."""
    out = tmp_path / "out"
    assert _split(good, out) == 0
    before = _snapshot(out)
    real = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(dst) == out:
            raise OSError(errno.EIO, "injected")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    assert _split(good, out, "--force") == 1
    monkeypatch.undo()
    assert not out.exists()
    (backup,) = [tmp_path / name for name in _scratch(tmp_path)]
    assert json.loads((backup / MARKER).read_text())["role"] == "backup"
    _set_marker(backup, pid=_dead_pid())  # as if this process had ended
    assert _split(good, tmp_path / "other") == 0
    assert _snapshot(out) == before
    assert _scratch(tmp_path) == []


# -- 6. scratch folders: ours, short, cleaned when stale -------------------------------------------------------------


def test_scratch_folders_are_marked_and_short(tmp_path):
    scratch = make_scratch(tmp_path, target="x" * 250)
    try:
        assert scratch.path.name.startswith(PREFIX) and len(scratch.path.name) == len(PREFIX) + 8
        doc = json.loads((scratch.path / MARKER).read_text())
        assert doc["pid"] == os.getpid() and doc["host"] == socket.gethostname()
    finally:
        discard(scratch)
    assert list(tmp_path.iterdir()) == []


def test_a_250_character_outdir(good, tmp_path):
    out = tmp_path / ("o" * 250)
    assert _split(good, out) == 0
    assert load_manifest(out).stages
    assert _split(good, out, "--force") == 0
    assert _scratch(tmp_path) == []


def test_stale_scratch_is_removed_and_live_scratch_kept(good, tmp_path):
    dead = make_scratch(tmp_path, target="other")
    (dead.path / "stage_0.onnx.data").write_bytes(b"\0" * 1000)
    _set_marker(dead.path, pid=_dead_pid())
    live = make_scratch(tmp_path, target="other")  # this very process: alive
    elsewhere = make_scratch(tmp_path, target="other")
    _set_marker(elsewhere.path, pid=_dead_pid(), host="another-host")  # cannot tell: kept
    unmarked = tmp_path / f"{PREFIX}0badf00d"  # named like ours but without a marker: not ours
    unmarked.mkdir()
    (unmarked / "x").write_text("mine")
    assert _split(good, tmp_path / "out") == 0
    assert not dead.path.exists()
    assert live.path.exists() and elsewhere.path.exists() and (unmarked / "x").read_text() == "mine"
    discard(live)
    discard(elsewhere)


def test_stale_backup_is_restored_when_its_split_is_missing(good, tmp_path):
    """A split killed between moving the old split aside and moving the new one in: the next split restores it."""
    assert _split(good, tmp_path / "out") == 0
    before = _snapshot(tmp_path / "out")
    backup = make_scratch(tmp_path, role="backup", target="out")
    os.rename(tmp_path / "out", backup.path / "old")
    _set_marker(backup.path, pid=_dead_pid())
    assert clean_stale(tmp_path) == (backup.path,)
    assert _snapshot(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


_KILLED = """
import sys, time
from pathlib import Path
import onnxsplit.rewrite.write as write
from onnxsplit.cli.main import main
real = write.save_plan
def save_plan(*args, **kwargs):
    real(*args, **kwargs)
    Path(sys.argv[1]).write_text("ready")
    time.sleep(60)
write.save_plan = save_plan
main(sys.argv[2:])
"""


def test_a_sigkilled_split_is_cleaned_up_by_the_next_one(good, tmp_path):
    out = tmp_path / "deep" / "out"
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(ready), "split", str(good), "-o", str(out), *SPLIT],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = _scratch(out.parent)
    assert len(left) == 1 and (out.parent / left[0] / MARKER).is_file()
    assert (out.parent / left[0] / "manifest.json").is_file()
    assert not out.exists()
    assert _split(good, out) == 0
    assert _scratch(out.parent) == [] and load_manifest(out).stages


def test_a_failed_split_removes_the_parents_it_created(good, tmp_path, monkeypatch, capsys):
    from onnxsplit.errors import InfeasibleError
    from onnxsplit.rewrite import write

    def too_big(*args, **kwargs):  # fails after the scratch folder (and its parents) exist
        raise InfeasibleError("stage 0 needs more memory than its device has")

    monkeypatch.setattr(write, "_write_stages", too_big)
    out = tmp_path / "a" / "b" / "c" / "out"
    code, err = _run(["split", good, "-o", out, *SPLIT], capsys)
    _one_line(code, err, "memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    # Parents that existed before stay.
    (tmp_path / "a").mkdir()
    code, err = _run(["split", good, "-o", out, *SPLIT], capsys)
    _one_line(code, err, "memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "src"] and list((tmp_path / "a").iterdir()) == []


# -- 7. refine's trial folders ---------------------------------------------------------------------------------------


def test_refine_trials_are_marked_scratch_folders(tmp_path, monkeypatch):
    from onnxsplit import refine

    seen = []

    def measure(folder, seconds):
        folder = Path(folder)
        seen.append((folder, (folder / MARKER).is_file()))
        stages = len(load_manifest(folder).stages)
        return 100.0 * len(seen), [50.0] + [1.0] * (stages - 1)

    monkeypatch.setattr(refine, "_measure", measure)
    out = tmp_path / "out"
    code = main(["split", str(MODELS / "branchy_cnn.onnx"), "--devices", "2", "--input-shape", "image:8x3x32x32",
                 "--costs", "estimate", "--refine", "2", "-o", str(out)])
    assert code == 0
    trials = seen[1:]
    assert trials, "the plan never changed, so no trial was written"
    for folder, marked in trials:
        assert folder.parent == tmp_path and folder.name.startswith(PREFIX) and marked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not (out / MARKER).exists()
    assert json.loads((out / "plan.json").read_text())["refine"][-1]["kept"]


# -- 8. the file system says no ----------------------------------------------------------------------------------------


def test_read_only_parent(good, tmp_path, monkeypatch, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the file system refuse as it would for a user
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(path).parent == parent:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != parent)
    try:
        code, err = _run(["split", good, "-o", parent / "out", *SPLIT], capsys)
        _one_line(code, err, "ermission denied")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_parent_is_a_file(good, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    code, err = _run(["split", good, "-o", tmp_path / "file" / "sub" / "out", *SPLIT], capsys)
    _one_line(code, err, "not a folder")
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("force", [False, True])
def test_outdir_created_by_someone_else_meanwhile(good, tmp_path, monkeypatch, capsys, force):
    from onnxsplit.rewrite import write

    out = tmp_path / "out"
    real = write.save_plan

    def save_plan(*args, **kwargs):
        real(*args, **kwargs)
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")

    monkeypatch.setattr(write, "save_plan", save_plan)
    code, err = _run(["split", good, "-o", out, *SPLIT, *(["--force"] if force else [])], capsys)
    _one_line(code, err, str(out))
    assert _snapshot(out) == {"theirs.txt": b"theirs"}
    assert _scratch(tmp_path) == []


def test_a_write_that_fails_midway_is_one_line_and_leaves_nothing(good, tmp_path, monkeypatch, capsys):
    """The disk fills up while the stages are written: one line, no OUTDIR, no scratch, no parent it created."""
    import onnx

    def full(proto, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(onnx, "save_model", full)
    out = tmp_path / "a" / "b" / "out"
    code, err = _run(["split", good, "-o", out, *SPLIT], capsys)
    _one_line(code, err, "No space left on device")
    assert str(out) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    # With --force over a previous split: the previous split stays as it was.
    monkeypatch.undo()
    assert _split(good, tmp_path / "out") == 0
    before = _snapshot(tmp_path / "out")
    monkeypatch.setattr(onnx, "save_model", full)
    code, err = _run(["split", good, "-o", tmp_path / "out", "--force", *SPLIT], capsys)
    _one_line(code, err, "No space left on device")
    assert _snapshot(tmp_path / "out") == before and _scratch(tmp_path) == []



def test_an_immutable_parent(good, immutable, capsys):
    for flags in ([], ["--force"]):
        code, err = _run(["split", good, "-o", immutable / "out", *SPLIT, *flags], capsys)
        _one_line(code, err, str(immutable))
        assert list(immutable.iterdir()) == []
    # The immutable folder as OUTDIR: an empty folder --force may replace, but it cannot be moved aside.
    code, err = _run(["split", good, "-o", immutable, "--force", *SPLIT], capsys)
    _one_line(code, err, str(immutable))
    assert list(immutable.iterdir()) == [] and _scratch(immutable.parent) == []
