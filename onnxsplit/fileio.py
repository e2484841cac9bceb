"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Every writer here puts the data in a temporary file with a unique name in
the target's folder (so the final rename stays on one file system), flushes
and fsyncs it, and renames it over the target with :func:`os.replace`. On
any failure, an interrupt included, the temporary file is removed and the
target is left as it was. The target's folder must exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import numpy as np


def _temp_beside(path: Path) -> tuple[Path, int]:
    """A new, empty file next to ``path`` with a name no other writer uses, and its descriptor."""
    import secrets  # here, not at the top: `onnxsplit solve` imports this module but writes nothing

    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            # Mode 0o666 lets the umask decide, as for a file opened the ordinary way.
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows syncing a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` with a binary file that becomes ``path`` once it returns; returns ``path``.

    Before: ``path``'s folder exists. After: ``path`` holds exactly what
    ``write`` wrote; if ``write`` or the rename fails, ``path`` is unchanged
    and no temporary file is left.
    """
    path = Path(path)
    tmp, fd = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, newlines written as given (no platform translation), so files are the same everywhere."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, doc: Any, *, indent: int = 2) -> Path:
    """``doc`` as indented JSON with a final newline; keys keep their order, so output is deterministic."""
    return write_text_atomic(path, json.dumps(doc, indent=indent) + "\n")


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Arrays as an uncompressed .npz at exactly ``path`` (numpy adds no suffix to an open file)."""
    import numpy as np  # not at the top: commands that write no arrays start faster

    return write_atomic(path, lambda f: np.savez(f, **arrays))
