"""Check a split folder's files against its manifest, and the manifest against the original model.

The manifest is checked on its own when it is loaded
(:func:`onnxsplit.manifest.load_manifest`); these checks read the files it
names. They catch what a user can do to a folder by hand: stage files
swapped or replaced, a stage file or its weights file truncated or emptied,
a manifest edited so that its tensors no longer match the models. Each
failure is a ModelError of one line naming the file and what does not
match; nothing here runs a model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxsplit.errors import ModelError
from onnxsplit.manifest import FILENAME, Manifest, TensorSpec
from onnxsplit.model import Model, external_info, is_external, stored_tensors
from onnxsplit.valuetypes import dtype_name

_Declared = dict[str, tuple[str | None, int | None]]  # name -> (dtype, rank) as a model file declares it


def check_stage_files(manifest: Manifest) -> None:
    """Every stage file is the model its manifest entry describes, with all its weights.

    Before: ``manifest`` was loaded by ``load_manifest`` (its fields and
    routing are consistent). After: every stage file parses as ONNX, reads
    and makes exactly the tensors its entry lists, with the same dtypes and
    ranks where both sides know them, and every weight it keeps outside
    lies inside the folder, in a file long enough to hold it. Raises
    ModelError naming the stage file otherwise.
    """
    for k, stage in enumerate(manifest.stages):
        path = manifest.stage_path(k)
        proto = _read_stage(path, k)
        what = f"{path}: stage {k}"
        declared_in = _declared(proto.graph.input, skip={t.name for t in proto.graph.initializer})
        declared_out = _declared(proto.graph.output)
        _same_names(what, "reads", declared_in, stage.inputs)
        _same_names(what, "makes", declared_out, stage.outputs)
        _same_types(what, f"stages[{k}].inputs", declared_in, stage.inputs)
        _same_types(what, f"stages[{k}].outputs", declared_out, stage.outputs)
        _check_weights(proto, manifest.folder, what, stage.external_data)


def check_source_model(manifest: Manifest, model: Model) -> None:
    """The manifest's model inputs, outputs and hand-offs are tensors of ``model``, the model it was split from.

    Before: ``model`` is the source file whose sha256 the manifest records.
    Raises ModelError naming the manifest field that disagrees.
    """
    where = manifest.folder / FILENAME
    inits = {t.name for t in model.graph.initializer}
    for field, declared, listed in (("inputs", _declared(model.graph.input, skip=inits), manifest.inputs),
                                    ("outputs", _declared(model.graph.output), manifest.outputs)):
        names = [t.name for t in listed]
        if sorted(names) != sorted(declared):
            raise ModelError(f"{where}: {field}: {names} but the model {model.path.name} has {field} "
                             f"{sorted(declared)}")
        for j, t in enumerate(listed):
            dtype = declared[t.name][0]
            if t.dtype is not None and dtype is not None and t.dtype != dtype:
                raise ModelError(f"{where}: {field}[{j}].dtype: {t.dtype} but the model {model.path.name} "
                                 f"declares {t.name!r} as {dtype}")
    made = {o for n in model.graph.node for o in n.output if o}
    for j, h in enumerate(manifest.handoffs):
        if h.name not in made:
            raise ModelError(f"{where}: handoffs[{j}].name: {h.name!r} is not a tensor the model "
                             f"{model.path.name} computes")


# -- reading a stage file ------------------------------------------------------------------------------------------


def _read_stage(path: Path, k: int) -> onnx.ModelProto:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"{path}: stage {k}: cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise ModelError(f"{path}: stage {k}: empty file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{path}: stage {k}: not a readable ONNX model (truncated or corrupt: "
                         f"{' '.join(str(exc).split())})") from None
    # A cut-off protobuf can still parse, as a model missing its later fields; comparing the
    # inputs and outputs with the manifest catches the rest.
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelError(f"{path}: stage {k}: not a complete ONNX model (truncated?): no IR version or no graph")
    return proto


def _declared(values: Sequence[onnx.ValueInfoProto], *, skip: set[str] = frozenset()) -> _Declared:  # type: ignore[assignment]
    out: _Declared = {}
    for vi in values:
        if vi.name in skip:
            continue
        dtype: str | None = None
        rank: int | None = None
        if vi.type.HasField("tensor_type"):  # sequences and optionals carry no single dtype or rank
            tt = vi.type.tensor_type
            if tt.elem_type:
                try:
                    dtype = dtype_name(tt.elem_type)
                except (KeyError, ValueError, TypeError):
                    dtype = None  # an element type numpy has no name for: nothing to compare
            if tt.HasField("shape"):
                rank = len(tt.shape.dim)
        out[vi.name] = (dtype, rank)
    return out


def _same_names(what: str, verb: str, declared: _Declared, listed: Sequence[TensorSpec]) -> None:
    names = [t.name for t in listed]
    if sorted(names) != sorted(declared):
        raise ModelError(f"{what}: the file {verb} {sorted(declared)} but the manifest says {sorted(names)} "
                         f"(stage files swapped, replaced or renamed?)")


def _same_types(what: str, field: str, declared: _Declared, listed: Sequence[TensorSpec]) -> None:
    for j, t in enumerate(listed):
        dtype, rank = declared[t.name]
        if t.dtype is not None and dtype is not None and t.dtype != dtype:
            raise ModelError(f"{what}: the file declares {t.name!r} as {dtype} but {field}[{j}].dtype says {t.dtype}")
        if t.shape is not None and rank is not None and len(t.shape) != rank:
            raise ModelError(f"{what}: the file declares {t.name!r} with rank {rank} but {field}[{j}].shape has "
                             f"rank {len(t.shape)}")


# -- weights kept outside the stage file ------------------------------------------------------------------------------


def _check_weights(proto: onnx.ModelProto, folder: Path, what: str, data_file: str | None) -> None:
    sizes: dict[str, int] = {}
    for t in stored_tensors(proto.graph):
        if not is_external(t):
            continue
        info = external_info(t)
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder.resolve()):
            raise ModelError(f"{what}: weight {t.name!r} points at {location!r}, outside the split folder")
        if location != data_file:
            expected = "no weights file" if data_file is None else f"weights file {data_file!r}"
            raise ModelError(f"{what}: weight {t.name!r} is stored in {location!r} but the manifest names "
                             f"{expected} for this stage")
        if location not in sizes:
            try:
                sizes[location] = target.stat().st_size
            except OSError:
                raise ModelError(f"{what}: weights file {location} is missing") from None
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelError(f"{what}: weight {t.name!r} has a malformed offset or length") from None
        end = offset + (length or 0)
        if end > sizes[location]:
            raise ModelError(f"{what}: weights file {location} is truncated: weight {t.name!r} needs bytes up to "
                             f"{end}, the file has {sizes[location]}")
