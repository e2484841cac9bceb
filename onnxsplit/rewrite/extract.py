"""Build and write one stage's standalone ONNX model.

Only this module and the loader touch protobuf. Weights are streamed: an
initializer stored externally in the source is copied in chunks from its
file into the stage's own data file, so no >2 GB protobuf is ever built.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnxsplit.graphinfo import GraphInfo
from onnxsplit.model import Model, external_info, is_external, node_subgraphs
from onnxsplit.rewrite.stages import StageSpec
from onnxsplit.valuetypes import has_type

ALIGN = 4096
# Above this many inline bytes a stage keeps its weights in an external file:
# protobuf cannot serialise a message over 2 GB.
INLINE_LIMIT = 1 << 30


def _walk_nodes(nodes):
    for node in nodes:
        yield node
        for g in node_subgraphs(node):
            yield from _walk_nodes(g.node)


def _used_functions(model: Model, nodes: list[onnx.NodeProto]) -> list[onnx.FunctionProto]:
    local = {(f.domain, f.name): f for f in model.proto.functions}
    used: dict[tuple[str, str], None] = {}
    stack = list(nodes)
    while stack:
        node = stack.pop()
        key = (node.domain, node.op_type)
        if key in local and key not in used:
            used[key] = None
            stack.extend(local[key].node)
        stack.extend(n for g in node_subgraphs(node) for n in g.node)
    return [f for f in model.proto.functions if (f.domain, f.name) in used]


def _used_domains(nodes, functions) -> set[str]:
    domains = {n.domain for n in _walk_nodes(nodes)}
    for f in functions:
        domains.add(f.domain)
        domains |= {n.domain for n in _walk_nodes(f.node)}
    return domains


def _value_info(name: str, model: Model, probed: dict[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    vi = model.value_info.get(name)
    if vi is None or not has_type(vi.type):
        vi = probed.get(name, vi)
    if vi is None:
        raise RuntimeError(f"no type known for tensor {name!r}")  # a bug: type_handoffs types every boundary
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    out.name = name
    return out


def stage_proto(model: Model, info: GraphInfo, spec: StageSpec, nstages: int,
                probed: dict[str, onnx.ValueInfoProto]) -> onnx.ModelProto:
    """The stage's model; initializers are shallow copies still pointing at the source's data."""
    src = model.proto
    proto = onnx.ModelProto()
    proto.ir_version = src.ir_version
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(proto, field, getattr(src, field))
    for prop in src.metadata_props:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    proto.metadata_props.add(key="onnxsplit.stage", value=str(spec.index))
    proto.metadata_props.add(key="onnxsplit.stages", value=str(nstages))

    graph = proto.graph
    graph.name = f"{src.graph.name or 'graph'}_stage{spec.index}"
    nodes = [src.graph.node[v] for v in spec.nodes]
    graph.node.extend(nodes)
    graph_inputs = {i.name: i for i in src.graph.input}
    graph_outputs = {o.name: o for o in src.graph.output}
    for name in spec.inputs:
        if name in graph_inputs:
            graph.input.append(graph_inputs[name])
        else:
            graph.input.append(_value_info(name, model, probed))
    init_by_name = {t.name: t for t in src.graph.initializer}
    for name in spec.initializers:
        graph.initializer.append(init_by_name[name])
        if proto.ir_version < 4:
            # Old IR requires every initializer to be listed as a graph input.
            graph.input.append(graph_inputs.get(name) or _value_info(name, model, probed))
    for name in spec.outputs:
        o = graph_outputs.get(name)
        # A graph output keeps the model's own type (a sequence's or optional's too) when it has one.
        graph.output.append(o if o is not None and has_type(o.type) else _value_info(name, model, probed))

    functions = _used_functions(model, nodes)
    proto.functions.extend(functions)
    domains = _used_domains(nodes, functions) | {""}
    for opset in src.opset_import:
        if opset.domain in domains or (opset.domain == "ai.onnx" and "" in domains):
            proto.opset_import.add(domain=opset.domain, version=opset.version)
    return proto


def _copy_range(src: Path, offset: int, length: int, dst) -> None:
    with open(src, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining > 0:
            chunk = f.read(min(remaining, 64 << 20))
            if not chunk:
                raise OSError(f"{src}: external data ends early")
            dst.write(chunk)
            remaining -= len(chunk)


def write_stage(model: Model, proto: onnx.ModelProto, path: Path) -> str | None:
    """Write the stage to ``path``; weights go to ``<path>.data`` when the source kept
    them external or they are too big to inline. Returns the data file's name or None."""
    inits = list(proto.graph.initializer)
    inline_bytes = sum(len(t.raw_data) for t in inits if not is_external(t))
    externalise = any(is_external(t) for t in inits) or inline_bytes > INLINE_LIMIT
    if not externalise:
        onnx.save_model(proto, str(path))
        return None
    data_name = path.name + ".data"
    del proto.graph.initializer[:]
    with open(path.parent / data_name, "wb") as out:
        for t in inits:
            new = proto.graph.initializer.add()
            big = is_external(t) or len(t.raw_data) > 1024
            if not big:
                new.CopyFrom(t)
                continue
            # Copy the metadata without the payload, then point at our file.
            for field in ("name", "data_type", "doc_string"):
                setattr(new, field, getattr(t, field))
            new.dims.extend(t.dims)
            pad = (-out.tell()) % ALIGN
            out.write(b"\0" * pad)
            offset = out.tell()
            if is_external(t):
                ext = external_info(t)
                length = int(ext["length"]) if "length" in ext else os.path.getsize(model.base_dir / ext["location"]) - int(ext.get("offset", 0))
                _copy_range(model.base_dir / ext["location"], int(ext.get("offset", 0)), length, out)
            else:
                data = t.raw_data if t.raw_data else onnx.numpy_helper.to_array(t).tobytes()
                out.write(data)
                length = len(data)
            new.data_location = onnx.TensorProto.EXTERNAL
            new.external_data.add(key="location", value=data_name)
            new.external_data.add(key="offset", value=str(offset))
            new.external_data.add(key="length", value=str(length))
    onnx.save_model(proto, str(path))
    return data_name
