"""devices.toml: the documented examples load; bad files and meaningless numbers name the line and key."""

from __future__ import annotations

import math

import pytest
from conftest import ROOT
from graphs import chain, save

from onnxsplit.cli.main import main
from onnxsplit.devicefile import load_devices
from onnxsplit.errors import DeviceSpecError, UsageError
from onnxsplit.units import parse_bandwidth, parse_bytes, parse_seconds


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


KIND = "[[kind]]\nname = 'a'\ncount = 1\n"


@pytest.mark.parametrize("text, line, key", [
    (KIND + "memory = nan\n", ":4:", "'memory'"),
    (KIND + "memory = inf\n", ":4:", "'memory'"),
    (KIND + "memory = 'inf'\n", ":4:", "'memory'"),
    (KIND + "memory = 0\n", ":4:", "'memory'"),
    (KIND + "memory = '0GB'\n", ":4:", "'memory'"),
    (KIND + "memory = '1e999G'\n", ":4:", "'memory'"),
    (KIND + "memory = -1.5\n", ":4:", "'memory'"),
    (KIND + "overhead = nan\n", ":4:", "'overhead'"),
    (KIND + "overhead = '1e999'\n", ":4:", "'overhead'"),
    (KIND + "speed = nan\n", ":4:", "'speed'"),
    (KIND + "speed = inf\n", ":4:", "'speed'"),
    (KIND + "speed = 0\n", ":4:", "'speed'"),
    (KIND + "speed = -2.0\n", ":4:", "'speed'"),
    (KIND + "threads = 0\n", ":4:", "'threads'"),
    (KIND + "threads = -1\n", ":4:", "'threads'"),
    (KIND + "threads = 1.5\n", ":4:", "'threads'"),
    (KIND + "threads = nan\n", ":4:", "'threads'"),
    (KIND + "device_ids = [true]\n", ":4:", "'device_ids'"),
    (KIND + "provider_options = {a = {b = 1}}\n", ":4:", "'provider_options'"),
    (KIND + "[link]\nbandwidth = nan\n", ":5:", "'bandwidth'"),
    (KIND + "[link]\nbandwidth = inf\n", ":5:", "'bandwidth'"),
    (KIND + "[link]\nbandwidth = 0\n", ":5:", "'bandwidth'"),
    (KIND + "[link]\nbandwidth = '1e999GB/s'\n", ":5:", "'bandwidth'"),
    (KIND + "[link]\nlatency = nan\n", ":5:", "'latency'"),
    (KIND + "[link]\nlatency = inf\n", ":5:", "'latency'"),
    (KIND + "[link]\nlatency = -1e-6\n", ":5:", "'latency'"),
    (KIND + "[link]\nlatency = '1e999s'\n", ":5:", "'latency'"),
    ("[[kind]]\nname = 'a'\ncount = 2\n[[pair]]\ndevices = [0, 1]\nbandwidth = nan\n", ":6:", "'bandwidth'"),
    ("[[kind]]\nname = 'a'\ncount = 2\n[[pair]]\ndevices = [0, 1]\nlatency = inf\n", ":6:", "'latency'"),
])
def test_meaningless_numbers_are_refused(tmp_path, text, line, key):
    path = tmp_path / "devices.toml"
    path.write_text(text)
    with pytest.raises(DeviceSpecError) as exc:
        load_devices(path)
    message = str(exc.value)
    assert "\n" not in message and f"{path}{line}" in message and key in message, message


def test_unlimited_memory_is_the_default_and_latency_zero_is_fine(tmp_path):
    path = tmp_path / "devices.toml"
    path.write_text(KIND + "[link]\nlatency = 0\nbandwidth = '1GB/s'\n")
    devices = load_devices(path)
    assert devices.kinds[0].memory == math.inf and devices.link.latency == 0.0
    path.write_text(KIND + "memory = 'inf'\n")
    with pytest.raises(DeviceSpecError, match="leave memory out"):
        load_devices(path)


@pytest.mark.parametrize("text, needle", [
    ("kind = [1, 2]\n", "kind #1"),
    ("kind = 3\n", "no [[kind]]"),
    ("[kind]\nname = 'a'\ncount = 1\n", "[[kind]]"),
    (KIND + "link = 5\n", "'link'"),
    ("link = 5\n" + KIND, "link"),
    (KIND + "pair = 3\n", "'pair'"),
    ("pair = 3\n" + KIND, "[[pair]]"),
    ("pair = [1]\n" + KIND, "pair #1"),
])
def test_misshapen_tables_are_one_line(tmp_path, text, needle):
    """Tables of the wrong shape; inside a kind table, ``link = 5`` is an unknown key of that kind."""
    path = tmp_path / "devices.toml"
    path.write_text(text)
    with pytest.raises(DeviceSpecError) as exc:
        load_devices(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message
    assert needle in message, message


def test_binary_and_nan_files(tmp_path, capsys):
    path = tmp_path / "devices.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(DeviceSpecError) as exc:
        load_devices(path)
    assert "\n" not in str(exc.value) and "UTF-8" in str(exc.value)
    good = save(chain(2), tmp_path / "good.onnx")
    for data in (b"\xff\xfe[[kind]]\n", (KIND + "speed = nan\n").encode()):
        path.write_bytes(data)
        code = main(["split", str(good), "--devices", str(path), "--costs", "estimate", "-o", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1 and err.startswith("onnxsplit: error: "), err
        assert str(path) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("parse, text", [(parse_bytes, "1e999G"), (parse_bytes, "1e400"),
                                         (parse_bandwidth, "1e999GB/s"), (parse_seconds, "1e999ms"),
                                         (parse_bytes, math.inf), (parse_seconds, math.nan)])
def test_units_never_give_infinity(parse, text):
    with pytest.raises(UsageError) as exc:
        parse(text)
    assert "\n" not in str(exc.value) and repr(text) in str(exc.value)


def test_device_memory_flag_refuses_infinity(tmp_path, capsys):
    good = save(chain(2), tmp_path / "good.onnx")
    code = main(["split", str(good), "--devices", "2", "--device-memory", "1e999G", "--costs", "estimate",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "--device-memory" in err and len(err.splitlines()) == 1, err
