"""devices.toml: the documented examples load; bad files name the line and key."""

from __future__ import annotations

import math

import pytest

from conftest import ROOT
from onnxsplit.devicefile import load_devices
from onnxsplit.errors import DeviceSpecError


def test_examples_load():
    gpus = load_devices(ROOT / "examples" / "devices-4gpu.toml")
    assert gpus.count == 4 and gpus.kinds[0].provider == "CUDAExecutionProvider"
    assert gpus.kinds[0].memory == 80e9 - 2e9  # the stated runtime overhead is not the model's
    assert gpus.provider_options(2) == {"device_id": "2"}
    assert gpus.link.bandwidth == 16e9 and math.isclose(gpus.link.latency, 10e-6)
    assert gpus.link_between(1, 0).bandwidth == 300e9 and gpus.link_between(1, 2).bandwidth == 16e9
    cores = load_devices(ROOT / "examples" / "devices-cpu.toml")
    assert cores.count == 2 and cores.kinds[0].provider == "CPUExecutionProvider" and cores.kinds[0].threads == 1


BAD = [
    ("[[kind]]\nname = 'gpu'\ncount = 2\nmemory = -5\n", ":4:", "'memory'"),
    ("[[kind]]\nname = 'gpu'\n", ":1:", "missing key 'count'"),
    ("[link]\nbandwidth = 1\n", ":1:", "no [[kind]]"),
    ("[[kind]]\nname = 'a'\ncount = 1\n[[kind]]\nname = 'b'\ncount = 0\n", ":6:", "'count'"),
    ("[[kind]]\nname = 'a'\ncount = 1\ncolour = 'red'\n", ":4:", "'colour'"),
    ("[[kind]]\nname = 'a'\ncount = 1\nmemory = '12 parsecs'\n", ":4:", "'memory'"),
    ("[[kind]]\nname = 'a'\ncount = 2\n[[pair]]\ndevices = [0, 5]\n", ":5:", "'devices'"),
    ("[[kind]]\nname = 'a'\ncount = 1\n[link]\nlatency = '-1us'\n", ":5:", "'latency'"),
    ("[[kind]\nname = 'a'\n", "not valid TOML", ""),
    ("[[kind]]\nname = 'a'\ncount = 1\nmemory = '1GB'\noverhead = '2GB'\n", ":5:", "'overhead'"),
]


@pytest.mark.parametrize("text,line,key", BAD)
def test_bad_files(tmp_path, text, line, key):
    path = tmp_path / "devices.toml"
    path.write_text(text)
    with pytest.raises(DeviceSpecError) as err:
        load_devices(path)
    message = str(err.value)
    assert "\n" not in message and line in message and key in message, message


def test_split_with_devices_file(tmp_path):
    from onnxsplit.cli.main import main

    code = main(["split", str(ROOT / "models" / "branchy_cnn.onnx"), "--devices", str(ROOT / "examples" / "devices-cpu.toml"),
                 "--input-shape", "image:8x3x32x32", "-o", str(tmp_path / "out")])
    assert code == 0
    code = main(["validate", str(tmp_path / "out")])
    assert code == 0
