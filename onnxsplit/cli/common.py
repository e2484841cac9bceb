"""Flag parsing shared by commands."""

from __future__ import annotations

import math
import re
from pathlib import Path

from onnxsplit.devicefile import load_devices
from onnxsplit.devices import Devices, identical_devices
from onnxsplit.errors import UsageError

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str) -> float:
    """'512M', '16GiB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]i?)?[bB]?\s*", text)
    if not m:
        raise UsageError(f"{text!r} is not a size in bytes (e.g. 16G, 512MiB)")
    return float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]


def parse_devices(text: str, *, memory: str | None = None) -> Devices:
    """``--devices N`` (N identical devices) or ``--devices devices.toml``."""
    try:
        count = int(text)
    except ValueError:
        if text.endswith(".toml") or Path(text).is_file():
            if memory:
                raise UsageError("--device-memory applies to --devices N; set memory in the devices file") from None
            return load_devices(text)
        raise UsageError(f"--devices {text!r}: expected a number of devices or a devices.toml file") from None
    if count < 1:
        raise UsageError(f"--devices must be at least 1, got {count}")
    return identical_devices(count, memory=parse_bytes(memory) if memory else math.inf)


def console(*, stderr: bool = False):
    """A rich console at least 120 columns wide, so tables stay whole in logs and pipes."""
    from rich.console import Console

    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=max(probe.width, 120))
