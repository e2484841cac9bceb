"""Shared flags: one declaration, the library's choices, numbers refused where meaningless."""

from __future__ import annotations

import pytest

from onnxsplit.cli.main import build_parser, main


def _subparsers():
    import argparse

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_choices_are_the_librarys():
    from onnxsplit import choices
    from onnxsplit.costmodel import COSTS
    from onnxsplit.solve.plan import Objective
    from onnxsplit.solve.select import OBJECTIVES, REGISTRY, SOLVERS

    assert tuple(REGISTRY) == SOLVERS == choices.SOLVERS
    assert OBJECTIVES == tuple(o.value for o in Objective) == choices.OBJECTIVES
    assert COSTS == choices.COSTS
    assert set(choices.CONTIGUOUS_SOLVERS) <= set(SOLVERS)


def test_a_shared_flag_means_the_same_everywhere():
    """Every flag that several commands take has the same default, choices and help in each."""
    # Deliberate differences: what -o names; solve's --devices overrides the file's; split offers the solvers
    # whose plans form a pipeline; run needs --inputs; costgraph writes a --format that solve reads (or detects).
    # profile --warmup counts runs where bench --warmup counts seconds (kept: renaming would break scripts).
    # split --max-batch sizes the caches (default: the input shapes' batch); serve --max-batch caps joined batches.
    differ = {"-o": "help", "--output": "help", "--devices": "all", "--solver": "choices", "--inputs": "help",
              "--format": "all", "--warmup": "all", "--max-batch": "all"}
    seen: dict[str, tuple] = {}
    for command, sub in _subparsers().items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help") or differ.get(flag) == "all":
                    continue
                key = (action.default, None if differ.get(flag) == "choices" else tuple(action.choices or ()),
                       None if differ.get(flag) == "help" else action.help, type(action).__name__)
                assert seen.setdefault(flag, key) == key, (command, flag)


@pytest.mark.parametrize("argv, message", [
    (["bench", "out", "--seconds", "nan"], "--seconds must be a positive number, got nan"),
    (["bench", "out", "--seconds", "inf"], "--seconds must be a positive number, got inf"),
    (["bench", "out", "--seconds", "-1"], "--seconds must be a positive number, got -1"),
    (["bench", "out", "--seconds", "0"], "--seconds must be a positive number, got 0"),
    (["bench", "out", "--seconds", "five"], "--seconds must be a number, got 'five'"),
    (["bench", "out", "--warmup", "nan"], "--warmup must be zero or a positive number, got nan"),
    (["bench", "out", "--warmup", "inf"], "--warmup must be zero or a positive number, got inf"),
    (["bench", "out", "--warmup", "-0.5"], "--warmup must be zero or a positive number, got -0.5"),
    (["bench", "out", "--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["bench", "out", "--rounds", "-2"], "--rounds must be at least 1, got -2"),
    (["bench", "out", "--rounds", "nan"], "--rounds must be a whole number, got 'nan'"),
    (["bench", "out", "--batch", "0"], "--batch must be at least 1, got 0"),
    (["bench", "out", "--batch", "-4"], "--batch must be at least 1, got -4"),
    (["bench", "out", "--batch", "1.5"], "--batch must be a whole number, got '1.5'"),
    (["bench", "out", "--queue-size", "0"], "--queue-size must be at least 1, got 0"),
    (["profile", "m.onnx", "-o", "p.json", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["profile", "m.onnx", "-o", "p.json", "--threads", "-1"], "--threads must be at least 1, got -1"),
    (["profile", "m.onnx", "-o", "p.json", "--runs", "0"], "--runs must be at least 1, got 0"),
    (["profile", "m.onnx", "-o", "p.json", "--runs", "inf"], "--runs must be a whole number, got 'inf'"),
    (["profile", "m.onnx", "-o", "p.json", "--warmup", "-1"], "--warmup must be 0 or more, got -1"),
    (["split", "m.onnx", "-o", "out", "--time-limit", "nan"], "--time-limit must be a positive number, got nan"),
    (["split", "m.onnx", "-o", "out", "--time-limit", "inf"], "--time-limit must be a positive number, got inf"),
    (["split", "m.onnx", "-o", "out", "--time-limit", "0"], "--time-limit must be a positive number, got 0"),
    (["split", "m.onnx", "-o", "out", "--time-limit", "-3"], "--time-limit must be a positive number, got -3"),
    (["solve", "g.json", "--time-limit", "nan"], "--time-limit must be a positive number, got nan"),
    (["solve", "g.json", "--time-limit", "0"], "--time-limit must be a positive number, got 0"),
    (["split", "m.onnx", "-o", "out", "--refine", "-1"], "--refine must be 0 or more, got -1"),
    (["validate", "out", "--rtol", "nan"], "--rtol must be zero or a positive number, got nan"),
    (["validate", "out", "--rtol", "inf"], "--rtol must be zero or a positive number, got inf"),
    (["validate", "out", "--rtol=-1e-3"], "--rtol must be zero or a positive number, got -1e-3"),
    (["validate", "out", "--atol", "nan"], "--atol must be zero or a positive number, got nan"),
    (["validate", "out", "--atol=-inf"], "--atol must be zero or a positive number, got -inf"),
    (["validate", "out", "--atol", "-1"], "--atol must be zero or a positive number, got -1"),
])
def test_meaningless_numbers_are_refused(argv, message, capsys):
    assert main(argv) == 1
    assert capsys.readouterr().err == f"onnxsplit: error: {message}\n"


@pytest.mark.parametrize("value, message", [
    ("0", "--devices must be at least 1, got 0"),
    ("-2", "--devices must be at least 1, got -2"),
    ("nan", "--devices 'nan': expected a number of devices or a devices.toml file"),
    ("inf", "--devices 'inf': expected a number of devices or a devices.toml file"),
    ("1.5", "--devices '1.5': expected a number of devices or a devices.toml file"),
])
def test_meaningless_device_counts_are_refused(tmp_path, capsys, value, message):
    from graphs import chain, save

    good = save(chain(2), tmp_path / "good.onnx")
    for argv in (["split", str(good), "-o", str(tmp_path / "out")], ["costgraph", str(good)],
                 ["solve", str(__import__("conftest").REFERENCE / "layer_bert24_inference.json")]):
        assert main([*argv, "--devices", value]) == 1
        assert capsys.readouterr().err == f"onnxsplit: error: {message}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["bench", "out", "--warmup", "0"],
    ["profile", "m.onnx", "-o", "p.json", "--warmup", "0"],
    ["split", "m.onnx", "-o", "out", "--refine", "0"],
    ["validate", "out", "--rtol", "0", "--atol", "0"],
])
def test_zero_is_allowed_where_it_means_something(argv):
    build_parser().parse_args(argv)


def test_numbers_are_stored_as_numbers():
    args = build_parser().parse_args(["bench", "out", "--seconds", "2.5", "--rounds", "4", "--batch", "3"])
    assert (args.seconds, args.rounds, args.batch, args.warmup) == (2.5, 4, 3, 1.0)
    assert isinstance(args.rounds, int) and isinstance(args.seconds, float)


def test_library_refuses_nan_seconds_too(tmp_path):
    """The API call that `bench --seconds nan` used to make would never end; it is refused now."""
    from onnxsplit.errors import UsageError
    from onnxsplit.runtime.bench import bench

    for seconds, warmup in ((float("nan"), 0.0), (float("inf"), 0.0), (1.0, float("nan"))):
        with pytest.raises(UsageError, match="seconds must be positive and warmup not negative"):
            bench(tmp_path, seconds=seconds, warmup=warmup)
