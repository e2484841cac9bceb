"""Deterministic generator of the small ONNX models the tests and benchmarks use.

Every model is built with ``onnx.helper`` / ``onnx.numpy_helper`` only, with
weights drawn from ``numpy.random.default_rng`` at a fixed seed, opset 17 and
IR version 8, so two runs write byte-identical files.

    python tools/make_models.py [--out models]

The functions are importable too (``sys.path.insert(0, 'tools')``):
``make_transformer``, ``make_deep_transformer``, ``make_branchy_cnn``,
``make_control_flow``, ``make_fp16_mlp``, ``make_local_function``,
``make_external_data_mlp``, ``make_detector``, ``make_decoder``, ``write_bundled``, ``make_large_model`` and
``random_feeds``.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "onnxsplit.tools.make_models"
CUSTOM_DOMAIN = "onnxsplit.test"
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
FLOAT16 = TensorProto.FLOAT16
BOOL = TensorProto.BOOL


class GraphBuilder:
    """Collects nodes and initializers for one graph.

    Node names follow torch export (``/scope/Op``, ``/scope/Op_1``) and each
    output is ``<node name>_output_<i>``; children made with :meth:`child`
    share the name counters and the generator, so names stay unique across a
    model's subgraphs and the weight stream does not depend on graph nesting.
    """

    def __init__(self, seed: int, *, _parent: GraphBuilder | None = None) -> None:
        self.rng = _parent.rng if _parent else np.random.default_rng(seed)
        self._counts: dict[tuple[str, str], int] = _parent._counts if _parent else {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []

    def child(self) -> GraphBuilder:
        """A builder for a subgraph body, sharing names and weights stream."""
        return GraphBuilder(0, _parent=self)

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        scope: str = "",
        *,
        n_out: int = 1,
        outputs: Sequence[str] | None = None,
        domain: str = "",
        **attrs: object,
    ) -> str | list[str]:
        """Append a node; return its output name (or list when n_out > 1)."""
        key = (scope, op_type)
        i = self._counts.get(key, 0)
        self._counts[key] = i + 1
        name = f"{scope}/{op_type}" + (f"_{i}" if i else "")
        outs = list(outputs) if outputs is not None else [f"{name}_output_{j}" for j in range(n_out)]
        node = helper.make_node(op_type, list(inputs), outs, name=name, **attrs)
        if domain:
            node.domain = domain
        self.nodes.append(node)
        return outs[0] if len(outs) == 1 else outs

    def const(self, value: object, scope: str = "", dtype: type = np.int64) -> str:
        """A Constant node (a fresh one per use, as torch export emits them)."""
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), name="")
        return self.op("Constant", [], scope, value=tensor)

    def tensor(self, name: str, array: np.ndarray) -> str:
        """Add an initializer holding ``array``."""
        self.initializers.append(numpy_helper.from_array(array, name=name))
        return name

    def param(
        self, name: str, shape: Sequence[int], scale: float = 0.1,
        offset: float = 0.0, dtype: type = np.float32,
    ) -> str:
        """A random initializer ``offset + scale * N(0, 1)``.

        Draws in float64 and rounds once so the bytes depend only on the seed.
        """
        values = offset + scale * self.rng.standard_normal(tuple(shape))
        return self.tensor(name, values.astype(dtype))


def _vi(name: str, elem: int, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(
    b: GraphBuilder,
    graph_name: str,
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    *,
    functions: Sequence[onnx.FunctionProto] = (),
    extra_opsets: Iterable[tuple[str, int]] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, graph_name, list(inputs), list(outputs), initializer=b.initializers)
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(
        graph, opset_imports=opsets, functions=list(functions),
        ir_version=IR_VERSION, producer_name=PRODUCER, producer_version="1",
    )


# --------------------------------------------------------------------------
# Transformer encoder, export style


def _unsq(b: GraphBuilder, x: str, scope: str) -> str:
    return b.op("Unsqueeze", [x, b.const([0], scope)], scope)


def _dim(b: GraphBuilder, x: str, axis: int, scope: str) -> str:
    """``x.size(axis)`` as torch exports it: Shape -> Gather(Constant)."""
    return b.op("Gather", [b.op("Shape", [x], scope), b.const(axis, scope)], scope, axis=0)


def _layer_norm(b: GraphBuilder, x: str, hidden: int, pname: str, scope: str) -> str:
    gamma = b.param(f"{pname}.weight", (hidden,), 0.1, offset=1.0)
    beta = b.param(f"{pname}.bias", (hidden,), 0.1)
    return b.op("LayerNormalization", [x, gamma, beta], scope, axis=-1, epsilon=1e-5)


def _linear(b: GraphBuilder, x: str, n_in: int, n_out: int, pname: str, scope: str) -> str:
    w = b.param(f"{pname}.weight", (n_in, n_out), 0.1)
    bias = b.param(f"{pname}.bias", (n_out,), 0.1)
    return b.op("Add", [b.op("MatMul", [x, w], scope), bias], scope)


def _gelu(b: GraphBuilder, x: str, scope: str) -> str:
    """Exact GELU the way torch exports it at opset 17 (Erf, not the Gelu op)."""
    t = b.op("Div", [x, b.const(math.sqrt(2.0), scope, np.float32)], scope)
    t = b.op("Add", [b.op("Erf", [t], scope), b.const(1.0, scope, np.float32)], scope)
    t = b.op("Mul", [x, t], scope)
    return b.op("Mul", [t, b.const(0.5, scope, np.float32)], scope)


def _self_attention(
    b: GraphBuilder, x: str, pad_mask: str, hidden: int, heads: int, pname: str, scope: str,
) -> str:
    """Multi-head self-attention traced like torch's ``multi_head_attention_forward``.

    ``x`` is [B, S, E] (batch_first); ``pad_mask`` is the additive [B, S] key
    mask. Every reshape target is computed at run time from the tensors'
    shapes, which gives the graph its side branches of shape arithmetic.
    """
    s = scope
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
    q_in = b.op("Transpose", [x], s, perm=[1, 0, 2])  # [S, B, E]
    shp = b.op("Shape", [q_in], s)
    tgt_len = b.op("Gather", [shp, b.const(0, s)], s, axis=0)
    bsz = b.op("Gather", [shp, b.const(1, s)], s, axis=0)
    embed = b.op("Gather", [shp, b.const(2, s)], s, axis=0)
    head_dim = b.op("Div", [embed, b.const(heads, s)], s)

    # Packed in-projection, then proj.unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2)
    w_in = b.param(f"{pname}.in_proj_weight", (hidden, 3 * hidden), 0.1)
    b_in = b.param(f"{pname}.in_proj_bias", (3 * hidden,), 0.1)
    proj = b.op("Add", [b.op("MatMul", [q_in, w_in], s), b_in], s)
    lead = b.op("Slice", [b.op("Shape", [proj], s), b.const([0], s), b.const([-1], s), b.const([0], s)], s)
    target = b.op("Concat", [lead, b.const([3], s), b.const([hidden], s)], s, axis=0)
    proj = b.op("Reshape", [proj, target], s)
    proj = b.op("Unsqueeze", [proj, b.const([0], s)], s)
    proj = b.op("Transpose", [proj], s, perm=[3, 1, 2, 0, 4])
    proj = b.op("Squeeze", [proj, b.const([-2], s)], s)  # [3, S, B, E]
    q, k, v = (b.op("Gather", [proj, b.const(i, s)], s, axis=0) for i in range(3))

    # t.view(len, bsz * heads, head_dim).transpose(0, 1): [B*h, len, d]
    def fold_heads(t: str, length: str) -> str:
        bh = b.op("Mul", [bsz, b.const(heads, s)], s)
        target = b.op("Concat", [_unsq(b, length, s), _unsq(b, bh, s), _unsq(b, head_dim, s)], s, axis=0)
        return b.op("Transpose", [b.op("Reshape", [t, target], s)], s, perm=[1, 0, 2])

    q = fold_heads(q, tgt_len)
    k = fold_heads(k, _dim(b, k, 0, s))
    v = fold_heads(v, _dim(b, v, 0, s))
    src_len = _dim(b, k, 1, s)

    # key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1).reshape(bsz*heads, 1, src_len)
    target = b.op("Concat", [_unsq(b, bsz, s), b.const([1], s), b.const([1], s), _unsq(b, src_len, s)], s, axis=0)
    mask = b.op("Reshape", [pad_mask, target], s)
    target = b.op("Concat", [_unsq(b, bsz, s), b.const([heads], s), b.const([1], s), _unsq(b, src_len, s)], s, axis=0)
    mask = b.op("Expand", [mask, target], s)
    bh = b.op("Mul", [bsz, b.const(heads, s)], s)
    target = b.op("Concat", [_unsq(b, bh, s), b.const([1], s), _unsq(b, src_len, s)], s, axis=0)
    mask = b.op("Reshape", [mask, target], s)

    # q/k/v.view(bsz, heads, len, head_dim) and the mask likewise, for SDPA
    def split_batch(t: str, length: str) -> str:
        target = b.op("Concat", [_unsq(b, bsz, s), b.const([heads], s), _unsq(b, length, s),
                                 _unsq(b, head_dim, s)], s, axis=0)
        return b.op("Reshape", [t, target], s)

    q, k, v = split_batch(q, tgt_len), split_batch(k, src_len), split_batch(v, src_len)
    target = b.op("Concat", [_unsq(b, bsz, s), b.const([heads], s), b.const([-1], s), _unsq(b, src_len, s)],
                  s, axis=0)
    mask = b.op("Reshape", [mask, target], s)

    # scaled_dot_product_attention: scale = 1/sqrt(q.size(-1)), applied as sqrt to both sides
    last = b.op("Slice", [b.op("Shape", [q], s), b.const([-1], s), b.const([np.iinfo(np.int64).max], s)], s)
    scale = b.op("Div", [b.const(1.0, s, np.float32), b.op("Sqrt", [b.op("Cast", [last], s, to=FLOAT)], s)], s)
    root = b.op("Sqrt", [scale], s)
    kt = b.op("Transpose", [k], s, perm=[0, 1, 3, 2])
    scores = b.op("MatMul", [b.op("Mul", [q, root], s), b.op("Mul", [kt, root], s)], s)
    probs = b.op("Softmax", [b.op("Add", [scores, mask], s)], s, axis=-1)
    ctx = b.op("MatMul", [probs, v], s)  # [B, h, S, d]

    # attn.permute(2, 0, 1, 3).view(bsz * tgt_len, E) -> out_proj (addmm -> Gemm) -> view(S, B, E)
    ctx = b.op("Transpose", [ctx], s, perm=[2, 0, 1, 3])
    rows = b.op("Mul", [tgt_len, bsz], s)
    target = b.op("Concat", [_unsq(b, rows, s), _unsq(b, embed, s)], s, axis=0)
    ctx = b.op("Reshape", [ctx, target], s)
    w_out = b.param(f"{pname}.out_proj.weight", (hidden, hidden), 0.1)
    b_out = b.param(f"{pname}.out_proj.bias", (hidden,), 0.1)
    out = b.op("Gemm", [ctx, w_out, b_out], s, alpha=1.0, beta=1.0, transB=1)
    target = b.op("Concat", [_unsq(b, tgt_len, s), _unsq(b, bsz, s), _unsq(b, _dim(b, out, 1, s), s)],
                  s, axis=0)
    out = b.op("Reshape", [out, target], s)
    return b.op("Transpose", [out], s, perm=[1, 0, 2])  # [B, S, E]


def make_transformer(
    layers: int = 2, hidden: int = 64, heads: int = 4, ffn: int | None = None,
    vocab: int = 100, max_positions: int = 128, seed: int = 1001,
    graph_name: str = "transformer",
) -> onnx.ModelProto:
    """Post-norm transformer encoder: ``input_ids`` int64 [batch, seq] -> ``last_hidden``.

    Token 0 is padding (masked as a key with an additive -1e4, so fully padded
    rows stay finite); ``seq`` must not exceed ``max_positions``.
    """
    ffn = ffn or 2 * hidden
    b = GraphBuilder(seed)
    s = "/embeddings"
    word = b.param("embeddings.word_embeddings.weight", (vocab, hidden), 0.1)
    x = b.op("Gather", [word, "input_ids"], s, axis=0)
    seq = _dim(b, "input_ids", 1, s)
    pos = b.op("Range", [b.const(0, s), seq, b.const(1, s)], s)
    pos = b.op("Unsqueeze", [pos, b.const([0], s)], s)
    table = b.param("embeddings.position_embeddings.weight", (max_positions, hidden), 0.1)
    x = b.op("Add", [x, b.op("Gather", [table, pos], s, axis=0)], s)
    x = _layer_norm(b, x, hidden, "embeddings.LayerNorm", s + "/LayerNorm")

    s = "/mask"
    keep = b.op("Not", [b.op("Equal", ["input_ids", b.const(0, s)], s)], s)
    keep = b.op("Cast", [keep], s, to=FLOAT)
    pad_mask = b.op("Mul", [b.op("Sub", [b.const(1.0, s, np.float32), keep], s),
                            b.const(-10000.0, s, np.float32)], s)

    for i in range(layers):
        s, p = f"/encoder/layers.{i}", f"encoder.layers.{i}"
        attn = _self_attention(b, x, pad_mask, hidden, heads, p + ".self_attn", s + "/self_attn")
        x = b.op("Add", [x, attn], s)
        x = _layer_norm(b, x, hidden, p + ".norm1", s + "/norm1")
        h = _linear(b, x, hidden, ffn, p + ".linear1", s + "/linear1")
        h = _gelu(b, h, s + "/activation")
        h = _linear(b, h, ffn, hidden, p + ".linear2", s + "/linear2")
        x = b.op("Add", [x, h], s)
        x = _layer_norm(b, x, hidden, p + ".norm2", s + "/norm2")
    b.op("Identity", [x], "", outputs=["last_hidden"])
    return _model(
        b, graph_name,
        [_vi("input_ids", INT64, ["batch", "seq"])],
        [_vi("last_hidden", FLOAT, ["batch", "seq", hidden])],
    )


def make_deep_transformer(layers: int = 24, hidden: int = 64, heads: int = 4) -> onnx.ModelProto:
    """The transformer of :func:`make_transformer` with more layers (not bundled)."""
    return make_transformer(layers=layers, hidden=hidden, heads=heads, graph_name="deep_transformer")


# --------------------------------------------------------------------------
# Branchy CNN


def make_branchy_cnn(seed: int = 1002) -> onnx.ModelProto:
    """Inception-like CNN: ``image`` [N, 3, 32, 32] -> ``logits`` [N, 10]."""
    b = GraphBuilder(seed)

    def conv(x: str, cin: int, cout: int, k: int, pname: str, scope: str, relu: bool = True) -> str:
        # 1/sqrt(fan_in) rather than He scaling: the residual Adds grow activations already
        w = b.param(f"{pname}.weight", (cout, cin, k, k), 1.0 / math.sqrt(cin * k * k))
        bias = b.param(f"{pname}.bias", (cout,), 0.01)
        y = b.op("Conv", [x, w, bias], scope, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1])
        return b.op("Relu", [y], scope) if relu else y

    def block(x: str, cin: int, width: int, kernels: Sequence[int], pool_branch: bool, name: str) -> tuple[str, int]:
        s = f"/{name}"
        outs = [conv(x, cin, width, 1, f"{name}.b0", s + "/b0")]
        for i, k in enumerate(kernels, start=1):
            t = conv(x, cin, width // 2, 1, f"{name}.b{i}.reduce", f"{s}/b{i}")
            outs.append(conv(t, width // 2, width, k, f"{name}.b{i}.conv", f"{s}/b{i}"))
        if pool_branch:
            i = len(outs)
            t = b.op("MaxPool", [x], f"{s}/b{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
            outs.append(conv(t, cin, width, 1, f"{name}.b{i}.proj", f"{s}/b{i}"))
        cout = width * len(outs)
        cat = b.op("Concat", outs, s, axis=1)
        skip = conv(x, cin, cout, 1, f"{name}.shortcut", s + "/shortcut", relu=False)
        return b.op("Relu", [b.op("Add", [cat, skip], s)], s), cout

    x = conv("image", 3, 16, 3, "stem", "/stem")
    x, c = block(x, 16, 8, (3, 5), True, "block1")          # 4 branches -> 32
    x = b.op("MaxPool", [x], "/pool1", kernel_shape=[2, 2], strides=[2, 2])
    x, c = block(x, c, 16, (3,), True, "block2")            # 3 branches -> 48
    x = b.op("MaxPool", [x], "/pool2", kernel_shape=[2, 2], strides=[2, 2])
    x, c = block(x, c, 16, (3, 5), True, "block3")          # 4 branches -> 64
    # plain residual: a second block whose shortcut is the identity
    y, _ = block(x, c, 16, (3, 5), True, "block4")
    x = b.op("Relu", [b.op("Add", [x, y], "/residual")], "/residual")
    x = b.op("GlobalAveragePool", [x], "/head")
    x = b.op("Flatten", [x], "/head", axis=1)
    w = b.param("fc.weight", (10, c), 1.0 / math.sqrt(c))
    bias = b.param("fc.bias", (10,), 0.01)
    b.op("Gemm", [x, w, bias], "/head", outputs=["logits"], transB=1)
    return _model(
        b, "branchy_cnn",
        [_vi("image", FLOAT, ["N", 3, 32, 32])],
        [_vi("logits", FLOAT, ["N", 10])],
    )


# --------------------------------------------------------------------------
# Control flow with outer-scope reads


def make_control_flow(seed: int = 1003) -> onnx.ModelProto:
    """``x`` [N, 16] -> ``y`` [N, 8], ``trace`` [N, 3] through an If and a Loop.

    Both subgraph bodies read main-graph node outputs (``h``, ``g``) by outer
    scope; the Loop's trip count is a constant 3, so any input is safe.
    """
    b = GraphBuilder(seed)
    w1 = b.param("w1", (16, 16), 0.25)
    w2 = b.param("w2", (16, 16), 0.25)
    h = b.op("Relu", [b.op("MatMul", ["x", w1], "/h")], "/h")
    g = b.op("Sigmoid", [b.op("MatMul", ["x", w2], "/g")], "/g")
    # a signed projection of h, so the branch taken depends on the input
    u = b.param("u", (16, 1), 0.25)
    total = b.op("ReduceSum", [b.op("MatMul", [h, u], "/cond")], "/cond", keepdims=0)
    cond = b.op("Greater", [total, b.const(0.0, "/cond", np.float32)], "/cond")

    then_b = b.child()
    then_b.op("Mul", [h, g], "/if/then", outputs=["then_out"])
    else_b = b.child()
    else_b.op("Tanh", [else_b.op("Sub", [g, h], "/if/else")], "/if/else", outputs=["else_out"])
    then_g = helper.make_graph(then_b.nodes, "then_branch", [], [_vi("then_out", FLOAT, None)])
    else_g = helper.make_graph(else_b.nodes, "else_branch", [], [_vi("else_out", FLOAT, None)])
    mixed = b.op("If", [cond], "/if", then_branch=then_g, else_branch=else_g)

    trips = b.tensor("trip_count", np.array(3, dtype=np.int64))
    keep_going = b.tensor("loop_cond", np.array(True))
    wl = b.param("w_loop", (16, 16), 0.25)
    body = b.child()
    s = "/loop/body"
    body.op("Identity", ["cond_in"], s, outputs=["cond_out"])
    step = body.op("Mul", [body.op("Cast", ["iter"], s, to=FLOAT), body.const(0.1, s, np.float32)], s)
    z = body.op("Add", [body.op("MatMul", ["v_in", wl], s), g], s)  # g: outer-scope node output
    body.op("Tanh", [body.op("Add", [z, step], s)], s, outputs=["v_out"])
    body.op("ReduceMean", ["v_out"], s, outputs=["v_mean"], axes=[1], keepdims=0)
    body_g = helper.make_graph(
        body.nodes, "loop_body",
        [_vi("iter", INT64, []), _vi("cond_in", BOOL, []), _vi("v_in", FLOAT, None)],
        [_vi("cond_out", BOOL, []), _vi("v_out", FLOAT, None), _vi("v_mean", FLOAT, None)],
    )
    v_final, means = b.op("Loop", [trips, keep_going, mixed], "/loop", n_out=2, body=body_g)

    s = "/head"
    x = b.op("Add", [v_final, h], s)
    w3 = b.param("w3", (16, 8), 0.25)
    b3 = b.param("b3", (8,), 0.1)
    b.op("Softmax", [b.op("Add", [b.op("MatMul", [x, w3], s), b3], s)], s, outputs=["y"], axis=-1)
    b.op("Transpose", [means], s, outputs=["trace"], perm=[1, 0])
    return _model(
        b, "control_flow",
        [_vi("x", FLOAT, ["N", 16])],
        [_vi("y", FLOAT, ["N", 8]), _vi("trace", FLOAT, ["N", 3])],
    )


# --------------------------------------------------------------------------
# Small MLPs: float16, model-local function, external data


def make_fp16_mlp(seed: int = 1004) -> onnx.ModelProto:
    """All-float16 MLP: ``x`` [N, 32] -> ``probs`` [N, 10]."""
    b = GraphBuilder(seed)
    dims = [32, 64, 64, 10]
    x = "x"
    for i, (n_in, n_out) in enumerate(zip(dims, dims[1:])):
        s = f"/fc{i}"
        w = b.param(f"fc{i}.weight", (n_in, n_out), 1.0 / math.sqrt(n_in), dtype=np.float16)
        bias = b.param(f"fc{i}.bias", (n_out,), 0.1, dtype=np.float16)
        y = b.op("Add", [b.op("MatMul", [x, w], s), bias], s)
        if n_in == n_out:  # residual where widths match
            y = b.op("Add", [y, x], s)
        x = b.op("Relu", [y], s) if i < len(dims) - 2 else y
    b.op("Softmax", [x], "/softmax", outputs=["probs"], axis=-1)
    return _model(b, "fp16_mlp", [_vi("x", FLOAT16, ["N", 32])], [_vi("probs", FLOAT16, ["N", 10])])


def _dense_gelu_function() -> onnx.FunctionProto:
    """``DenseGelu(X, W, B) = gelu(X @ W + B)`` in the custom domain."""
    fb = GraphBuilder(0)
    s = "/DenseGelu"
    pre = fb.op("Add", [fb.op("MatMul", ["X", "W"], s), "B"], s)
    t = fb.op("Div", [pre, fb.const(math.sqrt(2.0), s, np.float32)], s)
    t = fb.op("Add", [fb.op("Erf", [t], s), fb.const(1.0, s, np.float32)], s)
    fb.op("Mul", [fb.op("Mul", [pre, t], s), fb.const(0.5, s, np.float32)], s, outputs=["Y"])
    return helper.make_function(
        CUSTOM_DOMAIN, "DenseGelu", ["X", "W", "B"], ["Y"], fb.nodes,
        [helper.make_opsetid("", OPSET)],
    )


def make_local_function(seed: int = 1005) -> onnx.ModelProto:
    """``x`` [N, 32] -> ``y`` [N, 16] through four calls of a local DenseGelu."""
    b = GraphBuilder(seed)
    dims = [32, 32, 32, 32, 16]
    x, first = "x", None
    for i, (n_in, n_out) in enumerate(zip(dims, dims[1:])):
        w = b.param(f"dense{i}.weight", (n_in, n_out), 1.0 / math.sqrt(n_in))
        bias = b.param(f"dense{i}.bias", (n_out,), 0.1)
        if i == 3:  # a skip over two calls
            x = b.op("Add", [x, first], "/skip")
        x = b.op("DenseGelu", [x, w, bias], f"/dense{i}", domain=CUSTOM_DOMAIN,
                 outputs=["y"] if i == 3 else None)
        first = first or x
    return _model(
        b, "local_function",
        [_vi("x", FLOAT, ["N", 32])], [_vi("y", FLOAT, ["N", 16])],
        functions=[_dense_gelu_function()], extra_opsets=[(CUSTOM_DOMAIN, 1)],
    )


def make_external_data_mlp(seed: int = 1006, layers: int = 4, width: int = 64) -> onnx.ModelProto:
    """``x`` [N, 64] -> ``y`` [N, 64], weights inline (see :func:`save_external`)."""
    b = GraphBuilder(seed)
    x = "x"
    for i in range(layers):
        s = f"/fc{i}"
        w = b.param(f"fc{i}.weight", (width, width), 1.0 / math.sqrt(width))
        bias = b.param(f"fc{i}.bias", (width,), 0.1)
        last = i == layers - 1
        y = b.op("Add", [b.op("MatMul", [x, w], s), bias], s, outputs=["y"] if last else None)
        x = y if last else b.op("Relu", [y], s)
    return _model(b, "external_data_mlp", [_vi("x", FLOAT, ["N", width])], [_vi("y", FLOAT, ["N", width])])


# --------------------------------------------------------------------------
# Writing


# --------------------------------------------------------------------------
# YOLO-class detector


def make_detector(
    seed: int = 1008, *, size: int = 320, width: int = 8, depth: Sequence[int] = (2, 3, 3, 2), neck_depth: int = 2,
    classes: int = 8,
) -> onnx.ModelProto:
    """A YOLOv8-style detector: ``images`` [N, 3, size, size] -> ``boxes`` [N, 4 + classes, anchors].

    CSP backbone (strided SiLU convs and C2f blocks of ``depth`` bottlenecks,
    SPPF), a PAN neck (nearest upsample and concat down, strided conv and
    concat up, C2f blocks of ``neck_depth``) and three decoupled heads (box
    and class branches) at strides 8, 16 and 32, then the boxes decoded
    against the anchor grid, so the graph has many parallel branches.
    ``width`` is the stem's channel count; the defaults build about 300
    nodes (about 6 MB of weights: the deep stages' 3x3 convolutions).
    """
    b = GraphBuilder(seed)

    def conv(x: str, cin: int, cout: int, k: int, stride: int, pname: str, scope: str, act: bool = True) -> str:
        w = b.param(f"{pname}.weight", (cout, cin, k, k), 1.0 / math.sqrt(cin * k * k))
        bias = b.param(f"{pname}.bias", (cout,), 0.01)
        y = b.op("Conv", [x, w, bias], scope, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride])
        if not act:
            return y
        return b.op("Mul", [y, b.op("Sigmoid", [y], scope)], scope)  # SiLU, as exporters emit it

    def c2f(x: str, cin: int, cout: int, n: int, shortcut: bool, name: str) -> str:
        s = f"/{name}"
        half = cout // 2
        y = conv(x, cin, cout, 1, 1, f"{name}.cv1", s + "/cv1")
        parts = b.op("Split", [y, b.tensor(f"{name}.split", np.array([half, half], dtype=np.int64))], s, n_out=2, axis=1)
        outs = list(parts)
        for i in range(n):
            t = conv(outs[-1], half, half, 3, 1, f"{name}.m{i}.cv1", f"{s}/m{i}/cv1")
            t = conv(t, half, half, 3, 1, f"{name}.m{i}.cv2", f"{s}/m{i}/cv2")
            outs.append(b.op("Add", [outs[-1], t], f"{s}/m{i}") if shortcut else t)
        cat = b.op("Concat", outs, s, axis=1)
        return conv(cat, half * len(outs), cout, 1, 1, f"{name}.cv2", s + "/cv2")

    def sppf(x: str, c: int, name: str) -> str:
        s = f"/{name}"
        y = conv(x, c, c // 2, 1, 1, f"{name}.cv1", s + "/cv1")
        pools = [y]
        for _ in range(3):
            pools.append(b.op("MaxPool", [pools[-1]], s, kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1]))
        return conv(b.op("Concat", pools, s, axis=1), 2 * c, c, 1, 1, f"{name}.cv2", s + "/cv2")

    def up(x: str, scope: str) -> str:
        scales = b.tensor(f"{scope.strip('/')}.scales", np.array([1, 1, 2, 2], dtype=np.float32))
        return b.op("Resize", [x, "", scales], scope, mode="nearest")

    c1, c2, c3, c4, c5 = width, 2 * width, 4 * width, 8 * width, 16 * width
    x = conv("images", 3, c1, 3, 2, "stem", "/stem")                      # /2
    x = conv(x, c1, c2, 3, 2, "down1", "/down1")                          # /4
    x = c2f(x, c2, c2, depth[0], True, "stage1")
    x = conv(x, c2, c3, 3, 2, "down2", "/down2")                          # /8
    p3 = c2f(x, c3, c3, depth[1], True, "stage2")
    x = conv(p3, c3, c4, 3, 2, "down3", "/down3")                         # /16
    p4 = c2f(x, c4, c4, depth[2], True, "stage3")
    x = conv(p4, c4, c5, 3, 2, "down4", "/down4")                         # /32
    x = c2f(x, c5, c5, depth[3], True, "stage4")
    p5 = sppf(x, c5, "sppf")

    x = b.op("Concat", [up(p5, "/neck/up1"), p4], "/neck/up1", axis=1)
    n4 = c2f(x, c5 + c4, c4, neck_depth, False, "neck.td4")
    x = b.op("Concat", [up(n4, "/neck/up2"), p3], "/neck/up2", axis=1)
    n3 = c2f(x, c4 + c3, c3, neck_depth, False, "neck.out3")
    x = b.op("Concat", [conv(n3, c3, c3, 3, 2, "neck.down3", "/neck/down3"), n4], "/neck/down3", axis=1)
    o4 = c2f(x, c3 + c4, c4, neck_depth, False, "neck.out4")
    x = b.op("Concat", [conv(o4, c4, c4, 3, 2, "neck.down4", "/neck/down4"), p5], "/neck/down4", axis=1)
    o5 = c2f(x, c4 + c5, c5, neck_depth, False, "neck.out5")

    levels = []
    hidden = max(16, c3)
    for i, (feat, c) in enumerate(((n3, c3), (o4, c4), (o5, c5))):
        s = f"/head{i}"
        box = conv(conv(feat, c, hidden, 3, 1, f"head{i}.box0", s + "/box0"), hidden, hidden, 3, 1, f"head{i}.box1", s + "/box1")
        box = conv(box, hidden, 4, 1, 1, f"head{i}.box2", s + "/box2", act=False)
        cls = conv(conv(feat, c, hidden, 3, 1, f"head{i}.cls0", s + "/cls0"), hidden, hidden, 3, 1, f"head{i}.cls1", s + "/cls1")
        cls = conv(cls, hidden, classes, 1, 1, f"head{i}.cls2", s + "/cls2", act=False)
        both = b.op("Concat", [box, b.op("Sigmoid", [cls], s)], s, axis=1)
        shape = b.tensor(f"head{i}.shape", np.array([0, 4 + classes, -1], dtype=np.int64))
        levels.append(b.op("Reshape", [both, shape], s))
    raw = b.op("Concat", levels, "/detect", axis=2)
    # Decode: centres from the anchor grid, sizes through Exp, both scaled by each anchor's stride.
    grid, stride = [], []
    for step in (8, 16, 32):
        cells = size // step
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid.append(np.stack([xs.ravel(), ys.ravel()]) + 0.5)
        stride.append(np.full(cells * cells, float(step)))
    anchors = b.tensor("detect.anchors", np.concatenate(grid, axis=1)[None].astype(np.float32))
    strides = b.tensor("detect.strides", np.concatenate(stride)[None, None].astype(np.float32))
    box, cls = b.op("Split", [raw, b.tensor("detect.split", np.array([4, classes], dtype=np.int64))], "/detect",
                    n_out=2, axis=1)

    def part(lo: int, hi: int) -> str:
        return b.op("Slice", [box, b.tensor(f"detect.start{lo}", np.array([lo], dtype=np.int64)),
                              b.tensor(f"detect.end{lo}", np.array([hi], dtype=np.int64)),
                              b.tensor(f"detect.axis{lo}", np.array([1], dtype=np.int64))], "/detect")
    xy = b.op("Mul", [b.op("Add", [part(0, 2), anchors], "/detect"), strides], "/detect")
    wh = b.op("Mul", [b.op("Exp", [part(2, 4)], "/detect"), strides], "/detect")
    b.op("Concat", [xy, wh, cls], "/detect/out", outputs=["boxes"], axis=1)
    return _model(
        b, "detector",
        [_vi("images", FLOAT, ["N", 3, size, size])],
        [_vi("boxes", FLOAT, ["N", 4 + classes, "anchors"])],
    )


# --------------------------------------------------------------------------
# Decoder with a KV cache, Optimum names


def _heads_first(b: GraphBuilder, x: str, heads: int, scope: str) -> str:
    """[batch, seq, hidden] -> [batch, heads, seq, head_dim]; Reshape's 0 keeps batch and seq as they are."""
    x = b.op("Reshape", [x, b.const([0, 0, heads, -1], scope)], scope)
    return b.op("Transpose", [x], scope, perm=[0, 2, 1, 3])


def make_decoder(
    *, layers: int = 4, hidden: int = 32, heads: int = 2, vocab: int = 64, max_positions: int = 128,
    seed: int = 1008,
) -> onnx.ModelProto:
    """Pre-norm GPT-style decoder with a KV cache, named as Hugging Face Optimum exports one.

    Inputs ``input_ids`` / ``position_ids`` int64 [batch_size, sequence_length],
    ``attention_mask`` int64 [batch_size, total_sequence_length] and, per
    layer N, ``past_key_values.N.key`` / ``.value`` float32 [batch_size, heads,
    past_sequence_length, head_dim]; outputs ``logits`` [batch_size,
    sequence_length, vocab] and ``present.N.key`` / ``.value`` = Concat(past,
    new) on axis 2. Query i (absolute position total - sequence_length + i)
    attends to the keys at positions <= its own whose mask is 1 (masked keys
    get an additive -1e4, so a fully masked row stays finite). An empty past
    (length 0) is a prefill. Position ids must be below ``max_positions``.
    Weights are named ``transformer.h.N.<part>.weight`` / ``.bias`` (linear
    weights stored [in, out]), so a reference can read them back.
    """
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
    head_dim = hidden // heads
    b = GraphBuilder(seed)
    s = "/transformer"
    wte = b.param("transformer.wte.weight", (vocab, hidden), 0.5)
    wpe = b.param("transformer.wpe.weight", (max_positions, hidden), 0.1)
    x = b.op("Add", [b.op("Gather", [wte, "input_ids"], s, axis=0),
                     b.op("Gather", [wpe, "position_ids"], s, axis=0)], s)

    # Additive mask [batch, 1, seq, total], shared by every layer: causal over absolute positions, and the
    # attention mask's zeros. The total length comes from attention_mask, as GPT-2's export takes it.
    s = "/transformer/mask"
    seq = _dim(b, "input_ids", 1, s)
    total = _dim(b, "attention_mask", 1, s)
    key_pos = b.op("Range", [b.const(0, s), total, b.const(1, s)], s)  # [total]
    query_pos = b.op("Range", [b.op("Sub", [total, seq], s), total, b.const(1, s)], s)  # [seq]
    query_pos = b.op("Unsqueeze", [query_pos, b.const([1], s)], s)  # [seq, 1]
    causal = b.op("LessOrEqual", [key_pos, query_pos], s)  # [seq, total]
    keep = b.op("Cast", ["attention_mask"], s, to=BOOL)
    keep = b.op("Unsqueeze", [keep, b.const([1, 2], s)], s)  # [batch, 1, 1, total]
    keep = b.op("And", [causal, keep], s)  # [batch, 1, seq, total]
    bias = b.op("Where", [keep, b.const(0.0, s, np.float32), b.const(-10000.0, s, np.float32)], s)

    for i in range(layers):
        s, p = f"/transformer/h.{i}", f"transformer.h.{i}"
        h = _layer_norm(b, x, hidden, p + ".ln_1", s + "/ln_1")
        a = s + "/attn"
        q, k, v = (_heads_first(b, _linear(b, h, hidden, hidden, f"{p}.attn.{n}_proj", f"{a}/{n}_proj"), heads, a)
                   for n in "qkv")
        k = b.op("Concat", [f"past_key_values.{i}.key", k], a, axis=2, outputs=[f"present.{i}.key"])
        v = b.op("Concat", [f"past_key_values.{i}.value", v], a, axis=2, outputs=[f"present.{i}.value"])
        scores = b.op("MatMul", [q, b.op("Transpose", [k], a, perm=[0, 1, 3, 2])], a)
        scores = b.op("Mul", [scores, b.const(1.0 / math.sqrt(head_dim), a, np.float32)], a)
        probs = b.op("Softmax", [b.op("Add", [scores, bias], a)], a, axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v], a)], a, perm=[0, 2, 1, 3])
        ctx = b.op("Reshape", [ctx, b.const([0, 0, hidden], a)], a)
        x = b.op("Add", [x, _linear(b, ctx, hidden, hidden, p + ".attn.o_proj", a + "/o_proj")], s)

        h = _layer_norm(b, x, hidden, p + ".ln_2", s + "/ln_2")
        h = _linear(b, h, hidden, 4 * hidden, p + ".mlp.fc_in", s + "/mlp/fc_in")
        h = _gelu(b, h, s + "/mlp/act")
        h = _linear(b, h, 4 * hidden, hidden, p + ".mlp.fc_out", s + "/mlp/fc_out")
        x = b.op("Add", [x, h], s)

    x = _layer_norm(b, x, hidden, "transformer.ln_f", "/transformer/ln_f")
    w = b.param("lm_head.weight", (hidden, vocab), 0.5)
    b.op("MatMul", [x, w], "/lm_head", outputs=["logits"])

    cache = ["batch_size", heads, "past_sequence_length", head_dim]
    present = ["batch_size", heads, "total_sequence_length", head_dim]
    inputs = [_vi("input_ids", INT64, ["batch_size", "sequence_length"]),
              _vi("attention_mask", INT64, ["batch_size", "total_sequence_length"]),
              _vi("position_ids", INT64, ["batch_size", "sequence_length"])]
    outputs = [_vi("logits", FLOAT, ["batch_size", "sequence_length", vocab])]
    for i in range(layers):
        for part in ("key", "value"):
            inputs.append(_vi(f"past_key_values.{i}.{part}", FLOAT, cache))
            outputs.append(_vi(f"present.{i}.{part}", FLOAT, present))
    return _model(b, "decoder", inputs, outputs)


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write a self-contained model (raw bytes, no external-data handling)."""
    Path(path).write_bytes(model.SerializeToString())


def save_external(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write ``model`` with every initializer in ``<name>.data`` beside it."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    # onnx appends to an existing data file, so a stale one would grow it
    data.unlink(missing_ok=True)
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=data.name, size_threshold=0,
    )
    # onnx creates the data file 0600; match the model file's usual mode
    data.chmod(0o644)


BUNDLED: dict[str, Callable[[], onnx.ModelProto]] = {
    "transformer.onnx": make_transformer,
    "branchy_cnn.onnx": make_branchy_cnn,
    "control_flow.onnx": make_control_flow,
    "fp16.onnx": make_fp16_mlp,
    "local_function.onnx": make_local_function,
    "external_data.onnx": make_external_data_mlp,
    "decoder.onnx": make_decoder,
}
EXTERNAL = {"external_data.onnx"}


def bundled_files() -> list[str]:
    """Names of every file :func:`write_bundled` writes, data files included."""
    names = list(BUNDLED)
    return names + [f"{n}.data" for n in names if n in EXTERNAL]


def write_bundled(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the bundled models into ``out_dir``; return the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, build in BUNDLED.items():
        (save_external if name in EXTERNAL else save)(build(), out / name)
    return [out / n for n in bundled_files()]


def make_large_model(
    path: str, total_bytes: int = 2_200_000_000, layers: int = 8, seed: int = 1007,
) -> None:
    """Write an MLP whose external initializers total just over ``total_bytes``.

    ``x`` [N, k] -> ``y`` [N, k] through ``layers`` MatMul(k, k) + Tanh. Each
    weight is generated and written in row chunks straight into
    ``<path>.data``, so neither the whole weight set nor a >2 GB protobuf is
    ever held; offsets are 4096-aligned so runtimes may map them.
    """
    k = max(2, math.ceil(math.sqrt(total_bytes / (4 * layers))))
    model_path = Path(path)
    data_path = model_path.with_name(model_path.name + ".data")
    align = 4096
    chunk_rows = max(1, (16 << 20) // (4 * k))
    nodes, inits = [], []
    x = "x"
    with open(data_path, "wb") as f:
        for i in range(layers):
            pad = -f.tell() % align
            f.write(b"\0" * pad)
            offset = f.tell()
            rng = np.random.default_rng([seed, i])
            # scale 1/sqrt(k) keeps each pre-activation O(1); Tanh bounds it
            for start in range(0, k, chunk_rows):
                rows = min(chunk_rows, k - start)
                block = rng.standard_normal((rows, k), dtype=np.float32)
                block *= np.float32(1.0 / math.sqrt(k))
                f.write(block.astype("<f4", copy=False).tobytes())
            t = TensorProto(name=f"fc{i}.weight", data_type=FLOAT, dims=[k, k])
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(4 * k * k))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            inits.append(t)
            mm = f"/fc{i}/MatMul_output_0"
            nodes.append(helper.make_node("MatMul", [x, t.name], [mm], name=f"/fc{i}/MatMul"))
            x = "y" if i == layers - 1 else f"/fc{i}/Tanh_output_0"
            nodes.append(helper.make_node("Tanh", [mm], [x], name=f"/fc{i}/Tanh"))
    graph = helper.make_graph(
        nodes, "large_mlp", [_vi("x", FLOAT, ["N", k])], [_vi("y", FLOAT, ["N", k])], initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION, producer_name=PRODUCER, producer_version="1",
    )
    save(model, model_path)


# --------------------------------------------------------------------------
# Inputs


_NP_TYPES = {FLOAT: np.float32, FLOAT16: np.float16, INT64: np.int64}


def random_feeds(
    model: onnx.ModelProto, seed: int = 0, dims: Mapping[str, int] | None = None, int_high: int = 100,
) -> dict[str, np.ndarray]:
    """Random feeds for the graph inputs that are not initializers.

    Symbolic dims take their value from ``dims`` (default: ``seq`` 8, others
    2); floats are N(0, 1), integers uniform in [0, int_high).
    """
    sizes = {"seq": 8, **(dims or {})}
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param, 2) for d in tt.shape.dim)
        dtype = _NP_TYPES[tt.elem_type]
        if np.issubdtype(dtype, np.integer):
            feeds[vi.name] = rng.integers(0, int_high, size=shape, dtype=dtype)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the bundled models."""
    default = Path(__file__).resolve().parent.parent / "models"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(default), help="output folder (default: the repo's models/)")
    args = parser.parse_args(argv)
    for p in write_bundled(args.out):
        print(f"{p}  {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
