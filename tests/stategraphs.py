"""A tiny decoder with a KV cache, built in code, whose inputs and outputs follow the Optimum names."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphs import model


def decoder(layers: int = 3, *, hidden: int = 8, heads: int = 2, vocab: int = 16, seed: int = 0,
            past: str = "past_key_values.{i}.{kv}", present: str = "present.{i}.{kv}") -> onnx.ModelProto:
    """Embedding, then per layer one attention over past + new keys and values, then logits.

    Inputs ``input_ids`` [batch_size, sequence_length], ``attention_mask`` [batch_size,
    total_sequence_length], ``position_ids``, and per layer the pasts named by ``past``
    [batch_size, heads, past_sequence_length, head_dim]; outputs ``logits`` and per layer the
    presents named by ``present`` (Concat of past and new on axis 2). No causal mask: the
    tests compare the split with the original, not with a reference decoder.
    """
    rng = np.random.default_rng(seed)
    d = hidden // heads

    def init(name: str, shape: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(-0.5, 0.5, shape).astype(np.float32), name)

    def i64(name: str, values: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(values, dtype=np.int64), name)

    inits = [init("embed", [vocab, hidden]), init("pos_embed", [64, hidden]), init("unembed", [hidden, vocab]),
             i64("split_heads", [0, 0, heads, d]), i64("merge_heads", [0, 0, hidden]), i64("mask_axes", [1, 2]),
             numpy_helper.from_array(np.float32(-1e4), "neg"), numpy_helper.from_array(np.float32(1.0), "one"),
             numpy_helper.from_array(np.float32(1 / np.sqrt(d)), "scale")]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["tok"], name="embed_tokens"),
        helper.make_node("Gather", ["pos_embed", "position_ids"], ["pos"], name="embed_positions"),
        helper.make_node("Add", ["tok", "pos"], ["h0"], name="embed_add"),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], name="mask_cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "maskf"], ["masked"], name="mask_invert"),
        helper.make_node("Mul", ["masked", "neg"], ["bias2"], name="mask_bias"),
        helper.make_node("Unsqueeze", ["bias2", "mask_axes"], ["bias"], name="mask_unsqueeze"),
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab])]
    h = "h0"
    for i in range(layers):
        names = {kv: (past.format(i=i, kv=kv), present.format(i=i, kv=kv)) for kv in ("key", "value")}
        for p_in, p_out in names.values():
            inputs.append(helper.make_tensor_value_info(
                p_in, TensorProto.FLOAT, ["batch_size", heads, "past_sequence_length", d]))
            outputs.append(helper.make_tensor_value_info(
                p_out, TensorProto.FLOAT, ["batch_size", heads, "total_sequence_length", d]))
        for w in ("q", "k", "v", "o"):
            inits.append(init(f"W{w}{i}", [hidden, hidden]))
        for w in ("q", "k", "v"):
            nodes += [helper.make_node("MatMul", [h, f"W{w}{i}"], [f"{w}{i}_flat"], name=f"l{i}_{w}_proj"),
                      helper.make_node("Reshape", [f"{w}{i}_flat", "split_heads"], [f"{w}{i}_bshd"],
                                       name=f"l{i}_{w}_split"),
                      helper.make_node("Transpose", [f"{w}{i}_bshd"], [f"{w}{i}"], name=f"l{i}_{w}_heads",
                                       perm=[0, 2, 1, 3])]
        nodes += [
            helper.make_node("Concat", [names["key"][0], f"k{i}"], [names["key"][1]], name=f"l{i}_key_cache", axis=2),
            helper.make_node("Concat", [names["value"][0], f"v{i}"], [names["value"][1]], name=f"l{i}_value_cache",
                             axis=2),
            helper.make_node("Transpose", [names["key"][1]], [f"kt{i}"], name=f"l{i}_kt", perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [f"q{i}", f"kt{i}"], [f"s{i}_raw"], name=f"l{i}_scores"),
            helper.make_node("Mul", [f"s{i}_raw", "scale"], [f"s{i}_scaled"], name=f"l{i}_scale"),
            helper.make_node("Add", [f"s{i}_scaled", "bias"], [f"s{i}"], name=f"l{i}_mask"),
            helper.make_node("Softmax", [f"s{i}"], [f"p{i}"], name=f"l{i}_softmax", axis=-1),
            helper.make_node("MatMul", [f"p{i}", names["value"][1]], [f"a{i}"], name=f"l{i}_attend"),
            helper.make_node("Transpose", [f"a{i}"], [f"a{i}_bshd"], name=f"l{i}_merge_t", perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"a{i}_bshd", "merge_heads"], [f"a{i}_flat"], name=f"l{i}_merge"),
            helper.make_node("MatMul", [f"a{i}_flat", f"Wo{i}"], [f"o{i}"], name=f"l{i}_out"),
            helper.make_node("Add", [h, f"o{i}"], [f"h{i + 1}"], name=f"l{i}_residual"),
        ]
        h = f"h{i + 1}"
    nodes.append(helper.make_node("MatMul", [h, "unembed"], ["logits"], name="lm_head"))
    return model(nodes, inputs, outputs, inits)


def decoder_shapes(layers: int = 3, *, heads: int = 2, head_dim: int = 4, batch: int = 1, seq: int = 1,
                   past_len: int = 4, past: str = "past_key_values.{i}.{kv}") -> dict[str, tuple[int, ...]]:
    """Input shapes of :func:`decoder` for one step of ``seq`` tokens after ``past_len`` cached ones."""
    shapes = {"input_ids": (batch, seq), "position_ids": (batch, seq), "attention_mask": (batch, past_len + seq)}
    for i in range(layers):
        for kv in ("key", "value"):
            shapes[past.format(i=i, kv=kv)] = (batch, heads, past_len, head_dim)
    return shapes


def layer_of(node: str, *, last: int) -> int:
    """The layer of a :func:`decoder` node (its embedding and mask on 0, the head on ``last``)."""
    m = re.match(r"l(\d+)_", node)
    return int(m.group(1)) if m else last if node == "lm_head" else 0
