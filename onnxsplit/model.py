"""Load and normalise a model: names, topological order, inferred shapes.

Weights stored as external data stay external: the model is read without
them and every later step reaches a tensor's bytes through
:func:`tensor_bytes`, so a model over 2 GB is never held whole in a protobuf.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxsplit.dag import topological_order
from onnxsplit.errors import ModelError

log = logging.getLogger(__name__)

# Ops that may give a different value on every run must never be duplicated.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})


@dataclass(frozen=True)
class Model:
    """A loaded model, normalised so that every node has a unique name and
    nodes are in topological order.

    ``proto`` holds no external data; ``base_dir`` is where its external data
    files live. ``value_info`` maps every tensor shape inference could type.
    """

    proto: onnx.ModelProto
    path: Path
    sha256: str
    value_info: dict[str, onnx.ValueInfoProto] = field(repr=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def graph(self) -> onnx.GraphProto:
        return self.proto.graph

    @property
    def initializer_names(self) -> set[str]:
        return {t.name for t in self.graph.initializer}

    @property
    def inputs(self) -> list[onnx.ValueInfoProto]:
        """Graph inputs that are real inputs (old IR lists initializers too)."""
        inits = self.initializer_names
        return [i for i in self.graph.input if i.name not in inits]

    @property
    def outputs(self) -> list[onnx.ValueInfoProto]:
        return list(self.graph.output)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so big models are not held in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_source(source: str | os.PathLike | Model, sha256: str, *, what: str) -> Path:
    """The model file ``source``, after checking that it still has the digest ``sha256``.

    ``what`` completes "the model ...", naming whatever recorded the digest,
    e.g. ``"this folder was split from"``. A loaded :class:`Model` is checked
    by the digest taken when it was loaded, without reading its file again.
    Raises ModelError (one line) when the file is missing or its content
    differs.
    """
    if isinstance(source, Model):
        path, actual = source.path, source.sha256
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelError(f"{path}: no such file (the model {what}; did it move?)")
        actual = sha256_of(path)
    if actual != sha256:
        raise ModelError(f"{path} is not the model {what} (its sha256 is {actual[:12]}..., "
                         f"expected {sha256[:12]}...)")
    return path


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror or exc})") from None
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a readable ONNX model (truncated or corrupt protobuf: {exc})") from None
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no IR version or no graph nodes)")
    return proto


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def external_info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def stored_tensors(graph: onnx.GraphProto):
    """Every tensor of a graph that may hold data: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from stored_tensors(attr.g)
            for g in attr.graphs:
                yield from stored_tensors(g)


def _external_int(t: onnx.TensorProto, key: str, path: Path) -> int | None:
    text = external_info(t).get(key)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ModelError(f"{path}: external data {key} {text!r} of initializer {t.name!r} is not a "
                         f"non-negative integer")
    return value


def external_data_path(t: onnx.TensorProto, base: Path, path: Path) -> Path:
    """The file holding an external tensor's bytes, checked to lie inside the model's folder.

    As onnx's own loader does, a ``location`` that is empty, absolute, climbs
    out with ``..``, or resolves (through symlinks) to a file outside
    ``base`` is refused: a model file must not make onnxsplit read, copy or
    publish files it was not given. Raises ModelError naming ``path`` (the
    model file) and the tensor.
    """
    loc = external_info(t).get("location", "")
    if not loc:
        raise ModelError(f"{path}: initializer {t.name!r} is stored externally but names no file")
    where = f"{path}: external data file {loc!r} of initializer {t.name!r}"
    parts = re.split(r"[/\\]", loc)
    if Path(loc).is_absolute() or loc.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", loc) or ".." in parts:
        raise ModelError(f"{where} lies outside the model's folder (only files beside the model are read)")
    if "\x00" in loc:
        raise ModelError(f"{where} is not a file name")
    target = base / loc
    try:
        real_base, real = base.resolve(strict=True), target.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ModelError(f"{where} cannot be resolved ({exc})") from None
    if real_base not in real.parents:
        raise ModelError(f"{where} lies outside the model's folder (a link to {real})")
    return target


def _check_external_files(proto: onnx.ModelProto, base: Path, path: Path) -> None:
    """Every external tensor's file exists, lies in the model's folder and holds all its bytes."""
    sizes: dict[Path, int] = {}
    for t in stored_tensors(proto.graph):
        if not is_external(t):
            continue
        target = external_data_path(t, base, path)
        loc = external_info(t)["location"]
        if target not in sizes:
            try:
                if not target.is_file():
                    raise FileNotFoundError
                sizes[target] = target.stat().st_size
            except OSError:
                raise ModelError(f"{path}: external data file {loc!r} of initializer {t.name!r} is missing") from None
        offset = _external_int(t, "offset", path) or 0
        length = _external_int(t, "length", path)
        if length is None:
            length = _expected_nbytes(t)
        if length is not None and offset + length > sizes[target]:
            raise ModelError(f"{path}: external data file {loc!r} is truncated: initializer {t.name!r} needs "
                             f"bytes {offset}..{offset + length}, the file has {sizes[target]}")


# Element types packed several to a byte: their file size is not count * itemsize.
_PACKED = frozenset(getattr(onnx.TensorProto, n) for n in ("UINT4", "INT4", "FLOAT4E2M1", "UINT2", "INT2",
                                                          "FLOAT6E2M3", "FLOAT6E3M2") if hasattr(onnx.TensorProto, n))


def _expected_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes a tensor's dims and type call for; None for strings, packed or unknown types."""
    if t.data_type in (0, onnx.TensorProto.STRING) or t.data_type in _PACKED:
        return None
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    count = 1
    for d in t.dims:
        count *= int(d)
    return count * itemsize


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.name for t in graph.sparse_initializer}
    reads: set[str] = set()
    for node in graph.node:
        for name in node_reads(node):
            if name not in defined:
                reads.add(name)
        defined.update(o for o in node.output if o)
    # An output may name an outer value directly.
    reads.update(o.name for o in graph.output if o.name not in defined)
    return reads


def node_subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs and its subgraphs' outer-scope references, in order."""
    seen: dict[str, None] = {}
    for name in node.input:
        if name:
            seen.setdefault(name)
    for g in node_subgraphs(node):
        for name in sorted(subgraph_reads(g)):
            seen.setdefault(name)
    return list(seen)


def _name_nodes(graph: onnx.GraphProto) -> int:
    """Give every node a unique, non-empty name; return how many were renamed."""
    counts: dict[str, int] = defaultdict(int)
    for node in graph.node:
        counts[node.name] += 1
    taken = set(counts)
    renamed = 0
    next_id: dict[str, int] = defaultdict(int)
    seen: set[str] = set()
    for node in graph.node:
        if node.name and node.name not in seen and counts[node.name] == 1:
            seen.add(node.name)
            continue
        base = node.name or node.op_type
        while True:
            candidate = f"{base}_{next_id[base]}"
            next_id[base] += 1
            if candidate not in taken:
                break
        node.name = candidate
        taken.add(candidate)
        seen.add(candidate)
        renamed += 1
    return renamed


def _toposort(graph: onnx.GraphProto, where: Path) -> None:
    """Reorder nodes topologically, keeping the file's order among ready nodes."""
    nodes = list(graph.node)
    producer = {}
    for i, node in enumerate(nodes):
        for o in node.output:
            if o:
                producer[o] = i
    reads = [node_reads(node) for node in nodes]
    deps = [sorted({producer[r] for r in rs if r in producer and producer[r] != i}) for i, rs in enumerate(reads)]
    self_loops = [nodes[i].name for i, rs in enumerate(reads) if any(producer.get(r) == i for r in rs)]
    if self_loops:
        raise ModelError(f"{where}: the graph has a cycle: node {self_loops[0]!r} reads its own output")
    order, stuck = topological_order(range(len(nodes)), [(j, i) for i, d in enumerate(deps) for j in d])
    if stuck:
        raise ModelError(f"{where}: the graph has a cycle through nodes {[nodes[i].name for i in stuck][:6]}")
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def copy_without_initializers(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A copy of ``proto`` with no main-graph initializers, and those initializers (``proto`` is left as it was).

    The weights are never copied, so a copy of a big model costs no memory.
    """
    copy = onnx.ModelProto()
    saved = list(proto.graph.initializer)
    del proto.graph.initializer[:]
    try:
        copy.CopyFrom(proto)
    finally:
        proto.graph.initializer.extend(saved)
    return copy, saved


def light_copy(proto: onnx.ModelProto, *, keep_bytes: int = 1 << 16) -> onnx.ModelProto:
    """A copy whose large initializers are data-less stubs.

    Shape inference needs dims and small constant values (shapes), not
    weights; the stubs keep memory flat for big models.
    """
    copy, saved = copy_without_initializers(proto)
    for t in saved:
        if is_external(t) or len(t.raw_data) <= keep_bytes:
            copy.graph.initializer.append(t)
        else:
            stub = copy.graph.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            stub.external_data.add(key="location", value="__stub__")
    return copy


def infer(proto: onnx.ModelProto, *, copy: bool = True) -> dict[str, onnx.ValueInfoProto]:
    """Shape-infer a light copy; return name -> ValueInfo for everything typed.

    ``copy=False``: ``proto`` is a light copy already (see :func:`light_copy`) and is inferred as it is.
    """
    light = light_copy(proto) if copy else proto
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception as exc:  # shape inference is best effort: missing shapes are found by running
        log.warning("shape inference failed (%s); hand-off types will be found by running the model", exc)
        inferred = light
    info: dict[str, onnx.ValueInfoProto] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            info[vi.name] = vi
    for t in proto.graph.initializer:
        if t.name not in info:
            info[t.name] = onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    return info


def _graph_value_infos(graph: onnx.GraphProto):
    """Every ValueInfo of a graph and of its nodes' subgraphs."""
    yield from graph.input
    yield from graph.output
    yield from graph.value_info
    for node in graph.node:
        for g in node_subgraphs(node):
            yield from _graph_value_infos(g)


def _unfix_negative_dims(graph: onnx.GraphProto) -> int:
    """Make every dim stored as a negative ``dim_value`` unknown; return how many there were.

    Some exporters write ``dim_value: -1`` for a dynamic dim. No tensor has a
    negative extent, and onnxruntime treats -1 as "any", so it is a symbolic
    dim, not a fixed one: given a size like any other unknown dim.
    """
    count = 0
    for vi in _graph_value_infos(graph):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.ClearField("dim_value")
                count += 1
    return count


def load_model(path: str | os.PathLike) -> Model:
    """Read, check and normalise a model. Raises ModelError on bad input.

    After: external data files (kept external) lie inside the model's folder
    and hold every byte their tensors need; every node has a unique name;
    nodes are in topological order; dims stored as negative numbers are
    unknown (symbolic) dims.
    """
    try:
        path = Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: RuntimeError before Python 3.13, OSError since
        raise ModelError(f"{path}: cannot follow symlink (a symlink loop)") from None
    proto = _read_proto(path)
    _check_external_files(proto, path.parent, path)
    unfixed = _unfix_negative_dims(proto.graph)
    if unfixed:
        log.info("%d dims stored as negative numbers are taken as symbolic", unfixed)
    renamed = _name_nodes(proto.graph)
    if renamed:
        log.info("named %d unnamed or duplicate nodes", renamed)
    _toposort(proto.graph, path)
    return Model(proto=proto, path=path, sha256=sha256_of(path), value_info=infer(proto))


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of an initializer's data, without loading it."""
    if is_external(t):
        length = external_info(t).get("length")
        if length is not None:
            return int(length)
    count = int(np.prod(t.dims)) if len(t.dims) else 1
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type != onnx.TensorProto.STRING else 0
    return count * itemsize
