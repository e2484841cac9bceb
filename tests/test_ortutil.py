"""onnxruntime through ortutil: session options built in one place, its errors as one line naming the node, runnable checks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import chain, f32, model, save
from onnx import helper

from onnxsplit.cli.main import main
from onnxsplit.devices import DeviceKind, Devices, identical_devices
from onnxsplit.errors import ModelError, UsageError
from onnxsplit.model import load_model
from onnxsplit.ortutil import check_provider_options, check_runnable, make_session, run_with_outputs, session_options


def test_session_options(tmp_path):
    import onnxruntime as ort

    plain = session_options(threads=3)
    assert plain.intra_op_num_threads == 3 and plain.inter_op_num_threads == 1 and not plain.enable_profiling
    assert plain.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL and plain.log_severity_level == 3
    quiet = session_options(spin=False, log_severity=2)
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert quiet.log_severity_level == 2
    profiled = session_options(profile_prefix=tmp_path / "trace", optimized_model=tmp_path / "optimized.onnx",
                               external_folder=tmp_path)
    assert profiled.enable_profiling and profiled.profile_file_prefix == str(tmp_path / "trace")
    assert profiled.optimized_model_filepath == str(tmp_path / "optimized.onnx")
    assert profiled.get_session_config_entry(
        "session.optimized_model_external_initializers_file_name") == "optimized.data"
    assert profiled.get_session_config_entry(
        "session.model_external_initializers_file_folder_path") == str(tmp_path)


def test_make_session_runs_and_checks_the_provider(tmp_path):
    path = save(chain(2), tmp_path / "m.onnx")
    session = make_session(path, threads=2)
    (y,) = session.run(None, {"x": np.ones((2, 8), dtype=np.float32)})
    assert y.shape == (2, 8)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UsageError, match="'CUDAExecutionProvider' is not available here"):
            make_session(path, provider="CUDAExecutionProvider")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text and "\x1b" not in text, text
    return text


def _quiet(capfd) -> None:
    """Nothing of onnxruntime's own log reached the terminal (it writes to the file descriptors, not sys.stderr)."""
    out, err = capfd.readouterr()
    assert "onnxruntime" not in err and "\x1b[" not in err, err
    assert "\x1b[" not in out, out


def _write(tmp_path, name, nodes, inputs, outputs, inits=(), **kwargs):
    path = tmp_path / name
    onnx.save_model(model(nodes, inputs, outputs, inits, **kwargs), str(path))  # no checker: some are broken
    return path


@pytest.fixture
def broken(tmp_path):
    """Models onnxruntime refuses, by what is wrong with them."""
    x, y = f32("x", [2]), f32("y", [2])
    made = {
        "custom": _write(tmp_path, "custom.onnx", [helper.make_node("Foo", ["x"], ["y"], name="foo", domain="my.dom")],
                         [x], [y], extra_opsets=[helper.make_opsetid("my.dom", 1)]),
        "unknown": _write(tmp_path, "unknown.onnx", [helper.make_node("Frobnicate", ["x"], ["y"], name="frob")], [x],
                          [y]),
        "dangling": _write(tmp_path, "dangling.onnx", [helper.make_node("Add", ["x", "zz"], ["y"], name="add")], [x],
                           [y]),
        "duplicate": _write(tmp_path, "duplicate.onnx", [helper.make_node("Relu", ["x"], ["y"], name="a"),
                                                         helper.make_node("Neg", ["x"], ["y"], name="b")], [x], [y]),
        "no-outputs": _write(tmp_path, "no-outputs.onnx", [helper.make_node("Relu", ["x"], ["y"], name="a")], [x], []),
        "two-inputs": _write(tmp_path, "two-inputs.onnx", [helper.make_node("Relu", ["x"], ["y"], name="a")],
                             [x, f32("x", [2])], [y]),
        "opset": _write(tmp_path, "opset.onnx", [helper.make_node("Relu", ["x"], ["y"], name="a")], [x], [y],
                        opset=onnx.defs.onnx_opset_version() + 50),
        "ir": _write(tmp_path, "ir.onnx", [helper.make_node("Relu", ["x"], ["y"], name="a")], [x], [y],
                     ir=onnx.IR_VERSION + 50),
    }
    return made


@pytest.fixture
def mismatch(tmp_path):
    """Runs only when its two inputs broadcast: at 2 and 3 it fails inside node 'add'."""
    nodes = [helper.make_node("Add", ["x", "z"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["y"], name="relu")]
    return save(model(nodes, [f32("x", ["N"]), f32("z", ["M"])], [f32("y", ["K"])]), tmp_path / "mismatch.onnx")


# ---------------------------------------------------------------------------------------------
# onnxruntime's errors as one line


@pytest.mark.parametrize("case, needles", [
    ("custom", ["node 'foo'", "my.dom:Foo", "not a registered"]),
    ("unknown", ["node 'frob'", "Frobnicate"]),
    ("dangling", ["node 'add'", "'zz'"]),
])
def test_session_errors_name_the_node(broken, capfd, case, needles):
    with pytest.raises(ModelError) as exc:
        make_session(broken[case])
    message = _one_line(exc)
    assert message.startswith(f"{case}.onnx: onnxruntime cannot run the model") and "[ONNXRuntimeError]" not in message
    for needle in needles:
        assert needle in message, message
    _quiet(capfd)


def test_run_errors_name_the_node_and_stay_off_the_terminal(mismatch, capfd):
    m = load_model(mismatch)
    feeds = {"x": np.ones(2, np.float32), "z": np.ones(3, np.float32)}
    with pytest.raises(ModelError) as exc:
        run_with_outputs(m, ["s"], feeds)
    message = _one_line(exc)
    assert "mismatch.onnx" in message and "node 'add' (Add)" in message and "broadcast" in message
    assert "/onnxruntime_src" not in message and "Status Message" not in message
    _quiet(capfd)
    assert run_with_outputs(m, ["s"], {"x": np.ones(3, np.float32), "z": np.ones(3, np.float32)})["s"].shape == (3,)


@pytest.mark.parametrize("case, needle", [("custom", "node 'foo'"), ("dangling", "node 'add'"),
                                          ("unknown", "node 'frob'")])
def test_profile_refuses_what_onnxruntime_refuses_in_one_line(broken, tmp_path, capfd, case, needle):
    code = main(["profile", str(broken[case]), "-o", str(tmp_path / "p.json"), "--runs", "1", "--warmup", "0"])
    err = capfd.readouterr().err.strip()
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("onnxsplit: error: ")]
    assert code == 1 and len(errors) == 1 and lines[-1] == errors[0], err
    assert all(line.startswith("onnxsplit: ") for line in lines), err  # no traceback, no onnxruntime log
    assert needle in errors[0] and "\x1b" not in err
    assert not (tmp_path / "p.json").exists()


def test_profile_run_failure_is_one_line(mismatch, tmp_path, capfd):
    code = main(["profile", str(mismatch), "-o", str(tmp_path / "p.json"), "--runs", "1", "--warmup", "0",
                 "--input-shape", "x:2", "--input-shape", "z:3"])
    err = capfd.readouterr().err.strip()
    assert code == 1 and err.splitlines()[-1].startswith("onnxsplit: error: "), err
    assert all(line.startswith("onnxsplit: ") for line in err.splitlines()), err
    assert "node 'add' (Add)" in err and "\x1b" not in err


# ---------------------------------------------------------------------------------------------
# check_runnable: what measuring would find, before anything is written


def test_check_runnable_accepts_a_good_model(tmp_path, capfd):
    m = load_model(save(chain(3), tmp_path / "good.onnx"))
    check_runnable(m, ["cpu"])
    check_runnable(m, identical_devices(2))
    check_runnable(m, Devices((DeviceKind("cpu", 1), DeviceKind("big", 1, threads=4))))
    _quiet(capfd)


@pytest.mark.parametrize("case, needles", [
    ("custom", ["node 'foo'", "not a registered"]),
    ("unknown", ["node 'frob'", "Frobnicate"]),
    ("dangling", ["node 'add'", "'zz'"]),
    ("duplicate", ["'y'", "defined twice"]),
    ("no-outputs", ["no outputs"]),
    ("two-inputs", ["input 'x' twice"]),
    ("opset", ["opset", "newer"]),
    ("ir", ["IR version", "newer"]),
])
def test_check_runnable_refuses(broken, capfd, case, needles):
    m = load_model(broken[case])
    with pytest.raises(ModelError) as exc:
        check_runnable(m, identical_devices(2))
    message = _one_line(exc)
    assert message.startswith(f"{case}.onnx: ")
    for needle in needles:
        assert needle in message, message
    out, err = capfd.readouterr()
    assert "\x1b[" not in err and "[E:onnxruntime" not in err, err


def test_check_runnable_wants_the_providers_installed(tmp_path):
    import onnxruntime as ort

    m = load_model(save(chain(2), tmp_path / "good.onnx"))
    missing = next(p for p in ("MIGraphXExecutionProvider", "CANNExecutionProvider")
                   if p not in ort.get_available_providers())
    gpus = Devices((DeviceKind("cpu", 1), DeviceKind("accel", 2, provider=missing)))
    with pytest.raises(UsageError) as exc:
        check_runnable(m, gpus)
    assert missing in _one_line(exc) and "not available" in _one_line(exc)
    with pytest.raises(UsageError):
        check_runnable(m, [missing])
    check_runnable(m, gpus, require_installed=False)  # planning for devices this machine lacks
    odd = Devices((DeviceKind("cpu", 1, provider_options=(("bogus", "1"),)),))
    with pytest.raises(UsageError) as exc:
        check_runnable(m, odd)
    assert "'bogus'" in _one_line(exc)


# ---------------------------------------------------------------------------------------------
# Provider options


def test_unknown_provider_options_are_refused():
    check_provider_options("cpu", {})
    with pytest.raises(UsageError) as exc:
        check_provider_options("cpu", {"bogus": "1"})
    message = _one_line(exc)
    assert "'bogus'" in message and "CPUExecutionProvider" in message and "--" not in message


@pytest.mark.parametrize("extra, needles", [
    (["--provider-option", "bogus=1"], ["--provider-option", "'bogus'"]),
    (["--provider-option", "a=1", "--provider-option", "a=2"], ["'a'", "already"]),
    (["--runs", "nan"], ["--runs"]),
    (["--runs", "-2"], ["--runs must be at least 1, got -2"]),
    (["--warmup", "-1"], ["--warmup must be 0 or more, got -1"]),
    (["--warmup", "inf"], ["--warmup"]),
    (["--threads", "0"], ["--threads must be at least 1, got 0"]),
])
def test_profile_flags_are_checked(tmp_path, capsys, extra, needles):
    good = save(chain(2), tmp_path / "good.onnx")
    code = main(["profile", str(good), "-o", str(tmp_path / "p.json"), *extra])
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("onnxsplit: error: ")]
    assert code == 1 and len(errors) == 1 and lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not (tmp_path / "p.json").exists()
