"""An analytic cost estimate: FLOPs and bytes per node from concrete shapes.

The fallback for nodes that cannot be profiled. A node's time is a roofline,
max(FLOPs / peak, bytes moved / bandwidth), plus a fixed per-kernel overhead;
the peak figures are nominal for one CPU core and only their ratios matter
to the solver.
"""

from __future__ import annotations

import math

import onnx

from onnxsplit.graphinfo import GraphInfo
from onnxsplit.model import Model, node_subgraphs
from onnxsplit.shapes import TensorType

FLOPS_PER_MS = 20e9 / 1e3  # one core, fp32 FMA throughput
BYTES_PER_MS = 10e9 / 1e3
OVERHEAD_MS = 0.002
# Per-output-element work of ops that do more than one operation per element.
ELEMENT_WORK = {"Softmax": 5, "LayerNormalization": 8, "Erf": 10, "Tanh": 8, "Sigmoid": 4, "Exp": 4, "Log": 4, "BatchNormalization": 2, "InstanceNormalization": 8}


def _numel(t: TensorType | None) -> int:
    if t is None or t.shape is None:
        return 0
    return math.prod(t.shape)


def node_flops(node: onnx.NodeProto, types: dict[str, TensorType]) -> float:
    ins = [types.get(name) for name in node.input]
    outs = [types.get(name) for name in node.output]
    out_elems = sum(_numel(t) for t in outs)
    op = node.op_type
    if op in ("MatMul", "MatMulInteger") and ins and ins[0] is not None and ins[0].shape:
        return 2.0 * out_elems * ins[0].shape[-1]
    if op == "Gemm" and ins and ins[0] is not None and ins[0].shape and len(ins[0].shape) == 2:
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = ins[0].shape[0] if trans_a else ins[0].shape[1]
        return 2.0 * out_elems * k
    if op in ("Conv", "ConvTranspose") and len(ins) > 1 and ins[1] is not None and ins[1].shape:
        w = ins[1].shape  # (M, C/group, kH, kW...) for Conv
        per_output = math.prod(w[1:]) if op == "Conv" else math.prod(w[2:]) * w[0]
        return 2.0 * out_elems * per_output
    return float(out_elems * ELEMENT_WORK.get(op, 1))


def node_bytes(node: onnx.NodeProto, types: dict[str, TensorType]) -> float:
    total = 0
    for name in list(node.input) + list(node.output):
        t = types.get(name) if name else None
        if t is not None and t.nbytes is not None:
            total += t.nbytes
    return float(total)


def _subgraph_ms(graph: onnx.GraphProto, types: dict[str, TensorType]) -> float:
    return sum(estimate_node_ms(n, types) for n in graph.node)


def estimate_node_ms(node: onnx.NodeProto, types: dict[str, TensorType]) -> float:
    """Estimated milliseconds for one node (control flow: its bodies once, Loop bodies per known trip)."""
    subgraphs = node_subgraphs(node)
    if subgraphs:
        bodies = [_subgraph_ms(g, types) for g in subgraphs]
        if node.op_type == "If":
            return OVERHEAD_MS + max(bodies)
        return OVERHEAD_MS + sum(bodies) * 4  # trip counts are rarely known statically; assume a few
    return OVERHEAD_MS + max(node_flops(node, types) / FLOPS_PER_MS, node_bytes(node, types) / BYTES_PER_MS)


def estimate_times(model: Model, info: GraphInfo, types: dict[str, TensorType]) -> list[float]:
    """Milliseconds per main-graph node; const nodes cost nothing (they are folded or copied)."""
    return [0.0 if i in info.const else estimate_node_ms(node, types) for i, node in enumerate(model.graph.node)]
