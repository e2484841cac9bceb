"""Flag parsing shared by commands."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

from onnxsplit.devicefile import load_devices
from onnxsplit.devices import Devices, identical_devices
from onnxsplit.errors import UsageError
from onnxsplit.units import parse_bytes


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
    with flag_errors("--device-memory"):
        size = parse_bytes(memory) if memory else math.inf
    return identical_devices(count, memory=size)


@contextlib.contextmanager
def flag_errors(flag: str) -> Iterator[None]:
    """Prefix a UsageError raised inside with ``flag``: the library names the value at fault, the CLI the flag."""
    try:
        yield
    except UsageError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def console(*, stderr: bool = False):
    """A rich console at least 120 columns wide, so tables stay whole in logs and pipes."""
    from rich.console import Console

    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=max(probe.width, 120))
