"""State pairs in the split, piece by piece: groups, cache sizes, the placement check."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from graphs import model, save
from onnxsplit.errors import PlanError, UsageError
from onnxsplit.graphinfo import graph_info
from onnxsplit.model import load_model
from onnxsplit.rewrite.stages import cut_stages
from onnxsplit.state import StatePair
from onnxsplit.stateplace import CacheLimits, cache_bytes, check_state_placement, model_state_pairs, state_group
from stategraphs import decoder, decoder_shapes

PAIR = StatePair("past_key_values.0.key", "present.0.key")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    m = load_model(save(decoder(2), tmp_path_factory.mktemp("sp") / "decoder.onnx"))
    return m, graph_info(m)


def test_group_reads_the_past_makes_and_reads_the_present(loaded):
    _, info = loaded
    names = [info.names[v] for v in state_group(info, PAIR)]
    assert names == ["l0_key_cache", "l0_kt"]
    assert [info.names[v] for v in state_group(info, StatePair("past_key_values.1.value", "present.1.value"))] == \
        ["l1_value_cache", "l1_attend"]


def test_cache_bytes_at_the_limits(loaded):
    m, _ = loaded
    shapes = decoder_shapes(2)  # [1, 2, 4, 4] float32 pasts
    assert cache_bytes(m, shapes, PAIR, CacheLimits(100)) == 1 * 2 * 100 * 4 * 4
    assert cache_bytes(m, shapes, PAIR, CacheLimits(100, max_batch=3)) == 3 * 2 * 100 * 4 * 4


def test_the_growing_axis_is_the_one_whose_name_changes(tmp_path):
    """A state [batch, seq, width] whose output grows on axis 1: not the KV layout's axis."""
    node = helper.make_node("Concat", ["state_in", "x"], ["state_out"], axis=1)
    m = model([node], [helper.make_tensor_value_info("state_in", TensorProto.FLOAT, ["b", "past", 8]),
                       helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, 8])],
              [helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["b", "total", 8])])
    loaded = load_model(save(m, tmp_path / "m.onnx"))
    pair = StatePair("state_in", "state_out")
    assert cache_bytes(loaded, {"state_in": (2, 5, 8), "x": (2, 1, 8)}, pair, CacheLimits(10)) == 2 * 10 * 8 * 4


@pytest.mark.parametrize("limits", [{"max_seq_len": 0}, {"max_seq_len": 4, "max_batch": 0}])
def test_limits_must_be_positive(limits):
    with pytest.raises(UsageError, match="expected a positive integer"):
        CacheLimits(**limits)


def test_a_pair_whose_past_nothing_reads_is_no_pair(tmp_path):
    node = helper.make_node("Identity", ["x"], ["present.0.key"])
    m = model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
                       helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, [1])],
              [helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, [1])])
    loaded = load_model(save(m, tmp_path / "m.onnx"))
    assert model_state_pairs(loaded, graph_info(loaded)) == ()


def test_the_check_names_the_pair(loaded):
    _, info = loaded
    kt = info.names.index("l0_kt")
    cut = cut_stages(info, {v: 0 if v < kt else 1 for v in range(len(info.names)) if v not in info.const})
    check_state_placement(cut, [StatePair("past_key_values.1.key", "present.1.key")])  # all of layer 1 on stage 1
    with pytest.raises(PlanError, match=r"^the plan separates state pair past_key_values\.0\.key:present\.0\.key: "
                                        r"its output is made on stage 0 and sent to stage 1$"):
        check_state_placement(cut, [PAIR])
