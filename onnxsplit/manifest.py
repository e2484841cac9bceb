"""The manifest: everything needed to run a split folder's stages in order.

Schema (version 1) is documented in the README. :class:`Manifest` is the
typed, frozen form every reader uses (the runtime, validation, stage timing,
the CLI tables); :func:`load_manifest` reads one from a split folder and
checks every field, the stage numbering, the routing between stages and
the files it names, so a hand-edited or damaged file fails with one line
naming the file and the field instead of a KeyError deep in a reader.

``to_json`` writes exactly the keys, in exactly the order, that version 1
has always had: tools outside onnxsplit read this file. The one optional
key, ``state`` (a decoder's cache pairs), comes last and only when the
model has state, so a manifest without state is what it always was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, Union

from onnxsplit.errors import UsageError
from onnxsplit.fileio import write_json_atomic

FORMAT = "onnxsplit.manifest"
VERSION = 1
FILENAME = "manifest.json"

Dim = Union[int, str, None]  # a fixed dim, a symbolic dim, or a dim nobody knows
K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """A read-only mapping that, unlike ``types.MappingProxyType``, pickles and compares by value."""

    def __init__(self, items: Mapping[K, V] | Sequence[tuple[K, V]] = ()) -> None:
        self._items: dict[K, V] = dict(items)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))


# -- the records ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the manifest names it: dtype is a numpy name, shape may hold symbolic dims."""

    name: str
    dtype: str | None
    shape: tuple[Dim, ...] | None  # None when not even the rank is known

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class StageInput(TensorSpec):
    producer: int | None  # the stage that makes it; None for a model input ("from": "graph")

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "from": "graph" if self.producer is None else self.producer}


@dataclass(frozen=True)
class StageOutput(TensorSpec):
    consumers: tuple[int, ...]  # later stages that read it ("to")
    graph_output: bool  # a model output

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "to": list(self.consumers), "graph_output": self.graph_output}


@dataclass(frozen=True)
class GraphOutput(TensorSpec):
    stage: int  # the stage that makes it

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "stage": self.stage}


@dataclass(frozen=True)
class Handoff(TensorSpec):
    """A tensor passed from one stage to later ones: sent once, whatever the number of readers."""

    producer: int
    consumers: tuple[int, ...]
    bytes_per_sample: int | None  # at the manifest's input shapes; None when unknown

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "producer": self.producer, "consumers": list(self.consumers),
                "bytes_per_sample": self.bytes_per_sample}


@dataclass(frozen=True)
class PredictedLoad:
    """The plan's cost model for one stage, in milliseconds per request."""

    compute_ms: float
    receive_ms: float
    send_ms: float
    load_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"compute_ms": self.compute_ms, "receive_ms": self.receive_ms, "send_ms": self.send_ms,
                "load_ms": self.load_ms}


@dataclass(frozen=True)
class StateSpec:
    """A state pair (a model input fed each step with a model output of the step before) and its stage.

    ``stage`` is the only stage that reads ``input`` and the one that makes
    ``output``: the state stays there between steps and never travels.
    """

    input: str
    output: str
    stage: int

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "stage": self.stage}


@dataclass(frozen=True)
class Stage:
    index: int  # position in pipeline order
    file: str  # the stage model, relative to the split folder
    external_data: str | None  # its weights file, when they are not inline
    device: int  # index into the devices' expanded list
    device_kind: str
    provider: str  # onnxruntime execution provider
    provider_options: Mapping[str, Any]
    threads: int
    nodes: int  # nodes the plan placed here
    copied_const_nodes: int  # constant nodes copied from elsewhere rather than handed off
    inputs: tuple[StageInput, ...]
    outputs: tuple[StageOutput, ...]
    predicted: PredictedLoad
    weight_bytes: int
    activation_peak_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "file": self.file,
            "external_data": self.external_data,
            "device": self.device,
            "device_kind": self.device_kind,
            "provider": self.provider,
            "provider_options": dict(self.provider_options),
            "threads": self.threads,
            "nodes": self.nodes,
            "copied_const_nodes": self.copied_const_nodes,
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
            "predicted": self.predicted.to_json(),
            "weight_bytes": self.weight_bytes,
            "activation_peak_bytes": self.activation_peak_bytes,
        }


@dataclass(frozen=True)
class Source:
    """The model the folder was split from."""

    path: str  # relative to the split folder
    sha256: str  # of the model file
    ir_version: int


@dataclass(frozen=True)
class Manifest:
    """A split folder's manifest.

    ``folder`` is where the stage files live; it is not part of the JSON
    (a folder can be moved), so two manifests compare equal whatever their
    folder.
    """

    folder: Path = field(compare=False)
    source: Source
    input_shapes: Mapping[str, tuple[int, ...]]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[GraphOutput, ...]
    stages: tuple[Stage, ...]
    handoffs: tuple[Handoff, ...]
    plan_file: str
    predicted_bottleneck_ms: float
    state: tuple[StateSpec, ...] = ()

    # -- paths --

    def stage_path(self, k: int) -> Path:
        return self.folder / self.stages[k].file

    def stage_paths(self) -> tuple[Path, ...]:
        return tuple(self.folder / s.file for s in self.stages)

    def source_path(self) -> Path:
        """The original model, where it was at split time."""
        return (self.folder / self.source.path).resolve()

    def plan_path(self) -> Path:
        return self.folder / self.plan_file

    # -- views --

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def state_of(self, k: int) -> tuple[StateSpec, ...]:
        """The state pairs stage ``k`` keeps, in manifest order."""
        return tuple(p for p in self.state if p.stage == k)

    def feed_specs(self, shapes: Mapping[str, Sequence[int]] | None = None,
                   ) -> list[tuple[str, str | None, tuple[int, ...]]]:
        """(name, dtype, shape) of every model input, at ``shapes`` or the split's input shapes."""
        shapes = self.input_shapes if shapes is None else shapes
        return [(i.name, i.dtype, tuple(shapes[i.name])) for i in self.inputs]

    # -- files --

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "source": {"path": self.source.path, "sha256": self.source.sha256, "ir_version": self.source.ir_version},
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
            "stages": [s.to_json() for s in self.stages],
            "handoffs": [h.to_json() for h in self.handoffs],
            "plan": self.plan_file,
            "predicted_bottleneck_ms": self.predicted_bottleneck_ms,
        }
        if self.state:
            doc["state"] = [p.to_json() for p in self.state]
        return doc

    def write(self, path: str | os.PathLike) -> None:
        """Write the manifest to ``path`` atomically (a reader never sees half a file)."""
        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def from_json(cls, doc: Any, *, where: str | os.PathLike, check_files: bool = True) -> Manifest:
        """A manifest from its JSON document; ``where`` is the manifest file it came from.

        The split folder is ``where``'s parent. Raises UsageError when the
        document is not an onnxsplit manifest or has another version, and
        ModelError, naming the file and the field, when a field is missing or
        of the wrong type, a stage is out of order, a tensor is routed from or
        to a stage that does not exist, or (with ``check_files``) a file it
        names is missing. Beyond each field's type it checks that tensor names
        are unique where they must be, that every model input has a known
        dtype and a shape in ``input_shapes`` of the same rank, that
        ``handoffs[]`` and ``outputs[]`` agree with the stages' own inputs and
        outputs, that the files it names lie inside the split folder, and
        that each ``state`` pair's input is a model input no other stage
        reads and its output a model output of the same dtype made by the
        pair's stage.
        """
        path = Path(where)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise UsageError(f"{path}: not an onnxsplit manifest")
        if doc.get("version") != VERSION:
            raise UsageError(f"{path}: manifest version {doc.get('version')} is not supported (expected {VERSION})")
        from onnxsplit.manifest_checks import read_checked  # the checks need the records defined here

        return read_checked(doc, path, check_files=check_files)


def load_manifest(outdir: str | os.PathLike) -> Manifest:
    """The checked manifest of a split folder (see :meth:`Manifest.from_json`)."""
    outdir = Path(outdir)
    path = outdir / FILENAME
    if not outdir.is_dir():
        raise UsageError(f"{outdir}: not a split folder (no such directory)")
    if not path.is_file():
        raise UsageError(f"{outdir}: not a split folder (no {FILENAME})")
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # not UTF-8: not a text file at all
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if not text.strip():
        raise UsageError(f"{path}: empty file (not an onnxsplit manifest)")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_json(doc, where=path)
