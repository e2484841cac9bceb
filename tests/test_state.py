from __future__ import annotations

import pytest

from onnxsplit.errors import UsageError
from onnxsplit.state import StatePair, conventional_pairs, find_state_pairs, parse_state


def test_optimum_names_pair_up_in_input_order():
    inputs = ["input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value",
              "past_key_values.1.key", "past_key_values.1.value"]
    outputs = ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert find_state_pairs(inputs, outputs) == (
        StatePair("past_key_values.0.key", "present.0.key"), StatePair("past_key_values.0.value", "present.0.value"),
        StatePair("past_key_values.1.key", "present.1.key"), StatePair("past_key_values.1.value", "present.1.value"))


def test_a_past_without_its_present_is_no_pair():
    assert conventional_pairs(["past_key_values.0.key", "past.3.value"], ["present.1.key", "present.3.value"]) == (
        StatePair("past.3.value", "present.3.value"),)


def test_declared_pairs_come_first_and_win():
    pairs = find_state_pairs(["h", "past_key_values.0.key"], ["h_next", "present.0.key", "other"],
                             declared=[parse_state("past_key_values.0.key:other"), parse_state("h:h_next")])
    assert pairs == (StatePair("past_key_values.0.key", "other"), StatePair("h", "h_next"))


@pytest.mark.parametrize("text", ["a", "a:", ":b", "a:b:c"])
def test_malformed_pairs(text):
    with pytest.raises(UsageError, match="expected INPUT:OUTPUT"):
        parse_state(text)


@pytest.mark.parametrize("pairs, needle", [
    (["x:y", "x:z"], "'x' is already in another pair"),
    (["nope:y"], "no input 'nope'"),
    (["x:nope"], "no output 'nope'"),
])
def test_declared_pairs_are_checked(pairs, needle):
    with pytest.raises(UsageError, match=needle):
        find_state_pairs(["x"], ["y", "z"], declared=[parse_state(p) for p in pairs])
