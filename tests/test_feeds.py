"""Input feeds: the user's arrays checked against the model's inputs, and used for probing and profiling."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import chain, f32, model, save
from onnx import TensorProto, helper

from onnxsplit.cli.main import main
from onnxsplit.devices import identical_devices
from onnxsplit.errors import UsageError
from onnxsplit.feeds import check_feeds, model_feeds
from onnxsplit.model import load_model
from onnxsplit.ortutil import run_with_outputs


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text and "\x1b" not in text, text
    return text


@pytest.fixture
def branchy(tmp_path):
    """``y = x + 1`` when ``flag`` is true, else ``x - 1``: the branch is only right with the user's flag."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    then = helper.make_graph([helper.make_node("Add", ["x", "one"], ["t"], name="plus")], "then", [],
                             [f32("t", [2, 3])], [one])
    other = helper.make_graph([helper.make_node("Sub", ["x", "one"], ["e"], name="minus")], "else", [],
                              [f32("e", [2, 3])], [one])
    nodes = [helper.make_node("If", ["flag"], ["y"], name="choose", then_branch=then, else_branch=other)]
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    return load_model(save(model(nodes, [flag, f32("x", ["N", 3])], [f32("y", ["N", 3])]), tmp_path / "if.onnx"))


def test_model_feeds_takes_the_users_inputs(branchy):
    x = np.zeros((2, 3), np.float32)
    feeds = model_feeds(branchy, {"flag": (), "x": (2, 3)}, feeds={"flag": np.array(False), "x": x})
    assert run_with_outputs(branchy, [], feeds)["y"][0, 0] == -1.0
    feeds = model_feeds(branchy, {"flag": (), "x": (2, 3)}, feeds={"flag": np.array(True), "x": x})
    assert run_with_outputs(branchy, [], feeds)["y"][0, 0] == 1.0
    random = model_feeds(branchy, {"flag": (), "x": (4, 3)}, seed=1)
    assert random["flag"].dtype == bool and random["x"].shape == (4, 3)
    assert np.array_equal(random["x"], model_feeds(branchy, {"flag": (), "x": (4, 3)}, seed=1)["x"])


@pytest.mark.parametrize("feeds, needles", [
    ({"flag": np.array(True)}, ["no array for model input 'x'"]),
    ({"flag": np.array(True), "x": np.zeros((2, 3), np.float32), "mask": np.zeros(1)}, ["'mask'", "not an input"]),
    ({"flag": np.array(True), "x": np.zeros((2, 3), np.float64)}, ["'x'", "float64", "float32"]),
    ({"flag": np.array(1), "x": np.zeros((2, 3), np.float32)}, ["'flag'", "int64", "bool"]),
    ({"flag": np.array(True), "x": np.zeros((2, 3, 1), np.float32)}, ["'x'", "rank 3", "rank 2"]),
    ({"flag": np.array(True), "x": np.zeros((2, 4), np.float32)}, ["'x'", "dim 1", "fixes it to 3"]),
])
def test_user_feeds_are_checked(branchy, feeds, needles):
    for check in (lambda: check_feeds(branchy, feeds), lambda: run_with_outputs(branchy, [], feeds),
                  lambda: model_feeds(branchy, {"flag": (), "x": (2, 3)}, feeds=feeds)):
        with pytest.raises(UsageError) as exc:
            check()
        message = _one_line(exc)
        for needle in needles:
            assert needle in message, message
    with pytest.raises(UsageError, match="has shape 2x3, expected 5x3"):
        model_feeds(branchy, {"flag": (), "x": (5, 3)}, feeds={"flag": np.array(True), "x": np.zeros((2, 3), np.float32)})


def test_profile_inputs_of_the_wrong_dtype(tmp_path, capsys):
    good = save(chain(2), tmp_path / "good.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((2, 8), dtype=np.float64))
    code = main(["profile", str(good), "-o", str(tmp_path / "p.json"), "--inputs", str(tmp_path / "in.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.splitlines() == [err.splitlines()[-1]], err
    assert "--inputs" in err and "float64" in err and "float32" in err


def test_profiles_measured_with_user_feeds(branchy, tmp_path, monkeypatch):
    """The cache keeps a profile measured on the user's inputs apart from one on random inputs."""
    from onnxsplit.costmodel import shared_profile
    from onnxsplit.profile import cache, measure

    seen = []
    real = measure.profile_model
    monkeypatch.setattr(measure, "profile_model", lambda *a, **k: seen.append(k.get("feeds")) or real(*a, **k))
    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path / "cache"))
    shapes = {"flag": (), "x": (2, 3)}
    mine = {"flag": np.array(False), "x": np.zeros((2, 3), np.float32)}
    args = dict(input_shapes=shapes, runs=1, warmup=0)
    cache.cached_profile(branchy, **args)
    cache.cached_profile(branchy, **args, feeds=mine)
    cache.cached_profile(branchy, **args, feeds=mine)
    shared_profile(branchy, identical_devices(2), **args, feeds=mine)
    assert len(seen) == 2 and seen[0] is None and seen[1]["flag"] == np.array(False)
    other = dict(mine, flag=np.array(True))
    cache.cached_profile(branchy, **args, feeds=other)
    assert len(seen) == 3
    with pytest.raises(UsageError, match="float32"):
        cache.cached_profile(branchy, **args, feeds=dict(mine, x=np.zeros((2, 3))))
