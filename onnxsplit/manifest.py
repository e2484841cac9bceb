"""The manifest: everything needed to run a split folder's stages in order.

Schema (version 1) is documented in the README. Readers go through
:func:`load_manifest`, which checks the version and the files it names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from onnxsplit.errors import UsageError

FORMAT = "onnxsplit.manifest"
VERSION = 1


def write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def load_manifest(outdir: str | os.PathLike) -> dict[str, Any]:
    outdir = Path(outdir)
    path = outdir / "manifest.json"
    if not outdir.is_dir():
        raise UsageError(f"{outdir}: not a split folder (no such directory)")
    if not path.is_file():
        raise UsageError(f"{outdir}: not a split folder (no manifest.json)")
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if doc.get("format") != FORMAT:
        raise UsageError(f"{path}: not an onnxsplit manifest")
    if doc.get("version") != VERSION:
        raise UsageError(f"{path}: manifest version {doc.get('version')} is not supported (expected {VERSION})")
    for stage in doc["stages"]:
        if not (outdir / stage["file"]).is_file():
            raise UsageError(f"{outdir}: stage file {stage['file']} is missing")
    return doc


def stage_paths(outdir: str | os.PathLike, manifest: dict[str, Any]) -> list[Path]:
    return [Path(outdir) / s["file"] for s in manifest["stages"]]


def source_model_path(outdir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    return (Path(outdir) / manifest["source"]["path"]).resolve()
