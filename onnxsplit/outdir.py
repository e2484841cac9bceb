"""Put a split folder in place without ever losing a file onnxsplit did not write.

A split is built in a *scratch folder* beside OUTDIR and moved into place
with one rename, so OUTDIR is always either absent, the previous split or
the new one, never half of either. The rules:

- Only a previous split is replaced: a folder whose ``manifest.json`` has
  the onnxsplit format key and whose every entry is a file a split writes
  (``stage_K.onnx``, ``stage_K.onnx.data``, ``manifest.json``,
  ``plan.json``), or an empty folder. Anything else is refused, naming the
  first entry that is not ours; a file at OUTDIR is refused.
- A symlinked OUTDIR is followed: the split is written (or replaced) at the
  link's target, and the link itself is left as it is.
- Replacing moves the old split into a backup folder, moves the new one in,
  then deletes the backup; if the second move fails, the old split is moved
  back. Should that fail too, or the process be killed between the moves,
  the next split into the same parent moves it back (below).
- Scratch and backup folders are named ``.onnxsplit-`` plus 8 hex digits
  (short and fixed-length whatever OUTDIR's name) and hold a marker file,
  ``.onnxsplit-scratch``: JSON with the creating process's ``pid`` and
  ``host``, the folder's ``role`` (``scratch``, ``backup`` or ``trial``) and
  the ``target`` name it was made for. A split removes the marked folders in
  its parent whose process is gone (same host, no such pid), first moving a
  backup's old split back to its target when that target is missing.
  Nothing without a marker is ever removed.
- Missing parents of OUTDIR are created; if the split then fails, exactly
  the parents it created are removed again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxsplit.errors import OutputError, OutputExists
from onnxsplit.fileio import write_json_atomic
from onnxsplit.manifest import FILENAME as MANIFEST_FILE
from onnxsplit.manifest import FORMAT as MANIFEST_FORMAT

log = logging.getLogger(__name__)

PREFIX = ".onnxsplit-"
MARKER = ".onnxsplit-scratch"
MARKER_FORMAT = "onnxsplit.scratch"
ROLES = ("scratch", "backup", "trial")
# The old split's name inside a backup folder.
_OLD = "old"
_SCRATCH_NAME = re.compile(re.escape(PREFIX) + r"[0-9a-f]{8}")
# What a split writes, and the temporary files of the atomic writers (a crash may leave one).
_SPLIT_ENTRY = re.compile(r"(stage_\d+\.onnx(\.data)?|manifest\.json|plan\.json)")
_SPLIT_TEMP = re.compile(r"\.(stage_\d+\.onnx(\.data)?|manifest\.json|plan\.json)\.[0-9a-f]{12}\.tmp")


@dataclass(frozen=True)
class Scratch:
    """A marked scratch folder and the missing parents that were created for it (outermost first)."""

    path: Path
    created_parents: tuple[Path, ...] = ()


# -- where OUTDIR really is, and whether it may be replaced ------------------------------------------------------------


def resolve_outdir(outdir: str | os.PathLike) -> Path:
    """The absolute path a split at ``outdir`` is written to: a symlink at the last component is followed.

    Raises OutputError for a symlink loop or a path with no folder name (the root).
    """
    path = Path(os.path.abspath(outdir))
    if path.is_symlink():
        try:
            os.stat(path)
        except FileNotFoundError:
            pass  # a dangling link: the split goes where it points
        except OSError as exc:
            raise OutputError(f"{outdir}: cannot follow symlink ({exc.strerror})") from None
        path = Path(os.path.realpath(path))
    if not path.name:
        raise OutputError(f"{outdir}: not a folder a split can be written to")
    return path


def _is_split_entry(name: str) -> bool:
    """A file name a split writes into its folder (or its marker, or an atomic writer's leftover)."""
    return bool(_SPLIT_ENTRY.fullmatch(name) or _SPLIT_TEMP.fullmatch(name)) or name == MARKER


def check_replaceable(folder: Path) -> None:
    """Raise OutputError unless ``folder`` is empty or a previous split holding only files a split writes.

    The message names the first entry (in name order) that is not ours, so
    the user sees why nothing was replaced.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot read the folder ({exc.strerror})") from None
    names = {e.name for e in entries}
    if not names - {MARKER}:
        return
    for e in entries:
        if not (_is_split_entry(e.name) and e.is_file(follow_symlinks=False)):
            raise OutputError(f"{folder}: not replaced: {e.name} was not written by a split "
                              "(only a folder holding a previous split is replaced)")
    if MANIFEST_FILE not in names:
        raise OutputError(f"{folder}: not replaced: it is not a split folder (no {MANIFEST_FILE})")
    try:
        doc = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise OutputError(f"{folder}: not replaced: {MANIFEST_FILE} is not an onnxsplit manifest")


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_outdir(outdir: str | os.PathLike, *, force: bool = False,
                 replaceable: Callable[[Path], None] = check_replaceable) -> Path:
    """Refuse an output path before any work is done; returns where the split will be written.

    Also removes stale scratch folders beside it (see the module's docstring).
    Raises UsageError when it exists and ``force`` is not given, OutputError
    when it exists but is not a previous split, or its parent is not a
    writable folder.
    """
    target = resolve_outdir(outdir)
    if target.parent.is_dir():
        clean_stale(target.parent)
    if os.path.lexists(target):
        if not force:
            raise OutputExists(f"{outdir} already exists (ask to replace it with force)")
        if not target.is_dir():
            raise OutputError(f"{outdir}: not a folder; not replaced")
        replaceable(target)
    existing = _nearest_existing(target.parent)
    if not existing.is_dir():
        raise OutputError(f"{existing}: not a folder, so {outdir} cannot be created in it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{existing}: cannot write here (Permission denied)")
    return target


# -- scratch folders -----------------------------------------------------------------------------------------------


def _make_parents(parent: Path) -> tuple[Path, ...]:
    """Create the missing folders down to ``parent``; returns those created, outermost first."""
    existing = _nearest_existing(parent)
    if not existing.is_dir():
        raise OutputError(f"{existing}: not a folder")
    missing = []
    p = parent
    while p != existing:
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not d.is_dir():
                    raise OutputError(f"{d}: not a folder") from None
                continue  # made meanwhile by someone else: not ours to remove
            except OSError as exc:
                raise OutputError(f"{d}: cannot create folder ({exc.strerror})") from None
            created.append(d)
    except BaseException:
        _remove_parents(tuple(created))
        raise
    return tuple(created)


def _remove_parents(created: tuple[Path, ...]) -> None:
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:  # someone put something there meanwhile: it stays
            return


def make_scratch(parent: str | os.PathLike, *, role: str = "scratch", target: str = "") -> Scratch:
    """Create a new marked scratch folder in ``parent`` (creating missing parents) for ``target``.

    After: the folder exists, is empty but for its marker, and has a name no
    other folder had. Raises OutputError when ``parent`` cannot be written.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    parent = Path(parent)
    created = _make_parents(parent)
    try:
        for _ in range(100):
            path = parent / f"{PREFIX}{secrets.token_hex(4)}"
            try:
                # The umask decides the mode, as for any folder the user makes: the split ends up as OUTDIR.
                os.mkdir(path)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(f"{parent}: cannot write here ({exc.strerror})") from None
        else:
            raise OutputError(f"{parent}: no free name for a scratch folder")
        try:
            write_json_atomic(path / MARKER, {"format": MARKER_FORMAT, "pid": os.getpid(),
                                              "host": socket.gethostname(), "role": role, "target": target})
        except BaseException:
            os.rmdir(path)
            raise
    except BaseException:
        _remove_parents(created)
        raise
    return Scratch(path, created)


def _marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker document, or None when it has none (or one onnxsplit did not write)."""
    marker = folder / MARKER
    try:
        if not marker.is_file() or marker.is_symlink():
            return None
        doc = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT or not isinstance(doc.get("pid"), int)
            or not isinstance(doc.get("host"), str) or doc.get("role") not in ROLES):
        return None
    return doc


def _remove_marked(folder: Path) -> None:
    """Delete a marked folder, its marker last, so an interrupted delete leaves it still recognisable."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for e in entries:
        if e.name == MARKER:
            continue
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path)
        else:
            os.unlink(e.path)
    Path(folder, MARKER).unlink(missing_ok=True)
    os.rmdir(folder)


def discard(scratch: Scratch | Path) -> None:
    """Remove a scratch folder of ours (if still there) and the parents created for it.

    Before: the folder is one ``make_scratch`` made (or what was built in it).
    """
    if isinstance(scratch, Path):
        scratch = Scratch(scratch)
    if scratch.path.is_dir() and not scratch.path.is_symlink():
        _remove_marked(scratch.path)
    _remove_parents(scratch.created_parents)


def remove_scratch(path: Path) -> None:
    """Remove ``path`` if it is a marked scratch folder; anything else is left alone."""
    if path.is_dir() and not path.is_symlink() and _marker(path) is not None:
        _remove_marked(path)


def _alive(pid: int, host: str) -> bool:
    """Whether the process that made a marker may still run; unsure answers count as alive."""
    if host != socket.gethostname() or os.name == "nt":  # os.kill(pid, 0) would signal on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_stale(parent: str | os.PathLike) -> tuple[Path, ...]:
    """Remove the marked scratch folders in ``parent`` whose creating process is gone; returns them.

    A stale backup whose target is missing (its split was stopped between
    the two renames of a replacement) first gets its old split moved back.
    Unmarked folders, and those of live processes or other hosts, stay.
    """
    parent = Path(parent)
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return ()
    for e in entries:
        if not _SCRATCH_NAME.fullmatch(e.name) or not e.is_dir(follow_symlinks=False):
            continue
        folder = Path(e.path)
        doc = _marker(folder)
        if doc is None or _alive(doc["pid"], doc["host"]):
            continue
        try:
            target = doc.get("target")
            old = folder / _OLD
            if (doc["role"] == "backup" and isinstance(target, str) and target and "/" not in target
                    and old.is_dir() and not os.path.lexists(parent / target)):
                os.rename(old, parent / target)
                log.warning("restored %s from an interrupted replacement", parent / target)
            _remove_marked(folder)
        except OSError as exc:  # another split may be cleaning the same folder
            log.info("could not remove stale scratch folder %s: %s", folder, exc)
            continue
        removed.append(folder)
    return tuple(removed)


# -- moving a split into place ---------------------------------------------------------------------------------------


def _move_in(folder: Path, target: Path) -> None:
    try:
        os.rename(folder, target)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise OutputError(f"{target}: created by another process while the split was written; "
                              "left as it is") from None
        raise OutputError(f"{target}: cannot move the split into place ({exc.strerror})") from None


def place(folder: Path, outdir: str | os.PathLike, *, force: bool = False,
          replaceable: Callable[[Path], None] = check_replaceable) -> Path:
    """Move the finished split ``folder`` to ``outdir``; returns where it now is.

    Before: ``folder`` is a marked scratch folder in the same parent as
    ``outdir`` (symlink followed). With ``force`` an existing ``outdir``
    that ``replaceable`` accepts (default: a split) is replaced; otherwise, or if it is
    not replaceable, OutputError and nothing moves. After: ``outdir`` is the
    new split, without a marker unless the folder it replaced was itself a
    marked scratch folder (so a refine trial stays recognisable). On any
    failure it is what it was before; only if moving the old split back
    fails too does that split wait in its marked backup folder, which the
    next split into this parent puts back (see :func:`clean_stale`).
    """
    target = resolve_outdir(outdir)
    stays_scratch = bool(_SCRATCH_NAME.fullmatch(target.name)) and target.is_dir() and _marker(target) is not None
    if not os.path.lexists(target):
        _move_in(folder, target)
    else:
        if not force:
            raise OutputError(f"{target}: created by another process while the split was written; left as it is")
        if not target.is_dir():
            raise OutputError(f"{target}: not a folder; not replaced")
        replaceable(target)
        backup = make_scratch(target.parent, role="backup", target=target.name)
        old = backup.path / _OLD
        try:
            os.rename(target, old)
        except OSError as exc:
            discard(backup)
            raise OutputError(f"{target}: cannot move the previous split aside ({exc.strerror})") from None
        try:
            _move_in(folder, target)
        except BaseException:
            try:
                os.rename(old, target)
            except OSError as exc:
                # The backup keeps its marker: the next split into this folder puts it back.
                log.warning("could not restore %s (%s); the previous split is in %s", target, exc.strerror, old)
            else:
                discard(backup)
            raise
        try:
            discard(backup)
        except OSError as exc:  # the new split is in place; a stale backup is removed by a later split
            log.warning("could not remove the previous split from %s: %s", backup.path, exc)
    if not stays_scratch:
        (target / MARKER).unlink(missing_ok=True)
    return target


@contextmanager
def output_folder(outdir: str | os.PathLike, *, force: bool = False,
                  replaceable: Callable[[Path], None] = check_replaceable) -> Iterator[Path]:
    """A scratch folder to write a split into, moved to ``outdir`` when the block ends without error.

    On any error, the block's or the move's, the scratch folder and the
    parents created for it are removed and ``outdir`` is as it was. An
    OSError of the block (a full disk, a quota, a file system gone
    read-only) is raised as OutputError naming ``outdir``.
    """
    target = resolve_outdir(outdir)
    scratch = make_scratch(target.parent, target=target.name)
    try:
        yield scratch.path
        place(scratch.path, target, force=force, replaceable=replaceable)
    except OSError as exc:
        discard(scratch)
        where = f"{exc.filename}: " if exc.filename else ""
        raise OutputError(f"{target}: cannot write the split ({where}{exc.strerror or exc})") from None
    except BaseException:
        discard(scratch)
        raise
