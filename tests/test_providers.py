"""One table of execution provider names, for flags, devices.toml and profiles."""

from __future__ import annotations

import pytest

from onnxsplit.devicefile import load_devices
from onnxsplit.errors import DeviceSpecError, UsageError
from onnxsplit.providers import PROVIDERS, require_available, resolve_provider


@pytest.mark.parametrize("text, name", [
    ("cpu", "CPUExecutionProvider"), ("CPU", "CPUExecutionProvider"), ("cuda", "CUDAExecutionProvider"),
    ("tensorrt", "TensorrtExecutionProvider"), ("TensorRT", "TensorrtExecutionProvider"),
    ("openvino", "OpenVINOExecutionProvider"), ("dml", "DmlExecutionProvider"), ("coreml", "CoreMLExecutionProvider"),
    ("rocm", "ROCMExecutionProvider"), ("CUDAExecutionProvider", "CUDAExecutionProvider"),
    ("cudaexecutionprovider", "CUDAExecutionProvider"),
])
def test_short_and_full_names(text, name):
    assert resolve_provider(text) == name


def test_every_short_name_is_an_onnxruntime_name():
    import onnxruntime as ort

    known = set(ort.get_all_providers())
    # ROCm left onnxruntime's own list in later releases; its name is still what older builds use.
    assert {v for k, v in PROVIDERS.items() if k != "rocm"} <= known


def test_unknown_name():
    with pytest.raises(UsageError) as exc:
        resolve_provider("NoSuch")
    message = str(exc.value)
    assert "unknown execution provider 'NoSuch'" in message and "tensorrt" in message and "\n" not in message
    assert "CPUExecutionProvider" in message  # what is available here


def test_installed_is_a_separate_check():
    import onnxruntime as ort

    require_available("CPUExecutionProvider")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UsageError, match="stage 1: execution provider 'TensorrtExecutionProvider' is not"):
            require_available(resolve_provider("tensorrt"), where="stage 1")


def test_devices_file_and_profile_flag_agree(tmp_path, capsys):
    """``provider = "tensorrt"`` and ``profile --provider tensorrt`` name the same provider, or fail alike."""
    import onnxruntime as ort

    from conftest import MODELS
    from onnxsplit.cli.main import main

    path = tmp_path / "devices.toml"
    path.write_text("[[kind]]\nname = 'trt'\ncount = 1\nprovider = 'tensorrt'\n")
    assert load_devices(path).kinds[0].provider == "TensorrtExecutionProvider"
    path.write_text("[[kind]]\nname = 'x'\ncount = 1\nprovider = 'nosuch'\n")
    with pytest.raises(DeviceSpecError) as exc:
        load_devices(path)
    assert ":4:" in str(exc.value) and "unknown execution provider 'nosuch'" in str(exc.value)
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        code = main(["profile", str(MODELS / "branchy_cnn.onnx"), "-o", str(tmp_path / "p.json"), "--provider",
                     "tensorrt", "--runs", "1", "--warmup", "0"])
        err = capsys.readouterr().err
        assert code == 1 and "'TensorrtExecutionProvider' is not available here" in err, err
        assert "unknown" not in err
