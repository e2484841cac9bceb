"""One size, bandwidth and time grammar for flags and devices.toml."""

from __future__ import annotations

import math

import pytest

from onnxsplit.devicefile import load_devices
from onnxsplit.errors import DeviceSpecError, UsageError
from onnxsplit.units import parse_bandwidth, parse_bytes, parse_seconds


@pytest.mark.parametrize("text, value", [
    ("8G", 8e9), ("8GB", 8e9), ("8 gb", 8e9), ("8g", 8e9), ("512MiB", 512 * 2**20), ("512mi", 512 * 2**20),
    ("1.5k", 1500.0), ("1000000", 1e6), ("16B", 16.0), ("2e3", 2000.0), (" 4 TiB ", 4 * 2**40), ("0", 0.0),
    (1024, 1024.0), (1.5e9, 1.5e9),
])
def test_sizes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "G", "8X", "8GBs", "-1G", "8 parsecs", "16GB/s", True, None, -5, math.nan, [1]])
def test_bad_sizes(text):
    with pytest.raises(UsageError) as exc:
        parse_bytes(text)
    assert "\n" not in str(exc.value) and repr(text) in str(exc.value) and "--" not in str(exc.value)


def test_bandwidths_and_times():
    assert parse_bandwidth("16GB/s") == 16e9 == parse_bandwidth("16G") == parse_bandwidth(16e9)
    assert parse_bandwidth("300 GiB / s") == 300 * 2**30
    assert math.isclose(parse_seconds("10us"), 10e-6) and math.isclose(parse_seconds("10µs"), 10e-6)
    assert parse_seconds("2ms") == 2e-3 and parse_seconds("1s") == 1.0 and parse_seconds(5e-6) == 5e-6
    for bad in ("10", "10 parsecs", "-1us", "us"):
        with pytest.raises(UsageError):
            parse_seconds(bad)
    with pytest.raises(UsageError):
        parse_bandwidth("16GB/h")


def test_devices_file_takes_the_flag_grammar(tmp_path):
    """``memory = "8G"`` works as ``--device-memory 8G`` does; plain numbers still mean bytes."""
    path = tmp_path / "devices.toml"
    path.write_text("[link]\nbandwidth = '10G/s'\nlatency = 0.00001\n"
                    "[[kind]]\nname = 'a'\ncount = 1\nmemory = '8G'\noverhead = '512Mi'\n"
                    "[[kind]]\nname = 'b'\ncount = 1\nmemory = 4000000000\n")
    devices = load_devices(path)
    assert devices.kinds[0].memory == 8e9 - 512 * 2**20 and devices.kinds[1].memory == 4e9
    assert devices.link.bandwidth == 10e9 and devices.link.latency == 1e-5


def test_devices_file_errors_name_line_and_key(tmp_path):
    path = tmp_path / "devices.toml"
    path.write_text("[[kind]]\nname = 'a'\ncount = 1\nmemory = '8X'\n")
    with pytest.raises(DeviceSpecError) as exc:
        load_devices(path)
    assert ":4:" in str(exc.value) and "'memory'" in str(exc.value) and "'8X'" in str(exc.value)


def test_cli_device_memory_accepts_the_same_grammar():
    from onnxsplit.cli.common import parse_devices

    assert parse_devices("2", memory="8GB").kinds[0].memory == 8e9 == parse_devices("2", memory="8G").kinds[0].memory
    with pytest.raises(UsageError, match="--device-memory"):
        parse_devices("2", memory="8X")
