"""One grammar for sizes, bandwidths and times, in flags and in devices.toml.

A size is a non-negative number with an optional unit: ``8G``, ``8GB``,
``8 gb``, ``512MiB``, ``1.5e9``. ``k m g t`` are powers of 1000, ``ki mi gi
ti`` powers of 1024, and the trailing ``B`` is optional; case does not
matter. A bandwidth is a size per second (``16GB/s``; the ``/s`` may be
left out). A time is a number with a unit ``s ms us µs ns``. Plain numbers
(a TOML integer or float) are taken as they are: bytes, bytes per second,
seconds.

Every parser returns a finite, non-negative number: ``nan``, ``inf`` and
spellings that overflow a float (``1e999G``) are refused, so that no
quantity read here can make a solver or a timer loop forever. Whether zero
makes sense (a latency of 0 does, a bandwidth of 0 does not) is for the
caller to say.
"""

from __future__ import annotations

import math
import re

from onnxsplit.errors import UsageError

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_SIZE = re.compile(rf"\s*{_NUMBER}\s*([kmgt]i?)?b?\s*", re.IGNORECASE)
_BANDWIDTH = re.compile(rf"\s*{_NUMBER}\s*([kmgt]i?)?b?\s*(?:/\s*s)?\s*", re.IGNORECASE)
_TIME = re.compile(rf"\s*{_NUMBER}\s*(s|ms|us|µs|ns)\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
               "ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _plain_number(value: object, what: str) -> float | None:
    """A TOML/JSON number as a float; None for a string; UsageError for anything else."""
    # bool is an int in Python, but ``memory = true`` is a mistake, not one byte.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"expected {what}, got {value!r}")
    if isinstance(value, str):
        return None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"expected {what}, got {value!r}")
    return float(value)


def _finite(number: float, value: object, what: str) -> float:
    """``number`` parsed from the string ``value``, refused when it overflowed a float."""
    if not math.isfinite(number):
        raise UsageError(f"expected {what}, got {value!r} (too large)")
    return number


def _parse(value: str | int | float, what: str, pattern: re.Pattern[str], units: dict[str, float]) -> float:
    """A plain non-negative number as it is, else ``pattern``'s number times its unit; UsageError otherwise."""
    number = _plain_number(value, what)
    if number is not None:
        return number
    m = pattern.fullmatch(str(value))
    if not m:
        raise UsageError(f"expected {what}, got {value!r}")
    return _finite(float(m.group(1)) * units[(m.group(2) or "").lower()], value, what)


def parse_bytes(value: str | int | float) -> float:
    """``'512M'``, ``'16GiB'``, ``'8GB'``, ``1000000`` -> bytes (a non-negative float).

    Raises UsageError naming the text when it is not a size.
    """
    return _parse(value, "a size in bytes like 16GB or 512MiB", _SIZE, _SIZE_UNITS)


def parse_bandwidth(value: str | int | float) -> float:
    """``'16GB/s'``, ``'300GiB/s'``, ``16e9`` -> bytes per second. Raises UsageError when it is not one."""
    return _parse(value, "a bandwidth like 16GB/s", _BANDWIDTH, _SIZE_UNITS)


def parse_seconds(value: str | int | float) -> float:
    """``'10us'``, ``'2ms'``, ``1e-5`` -> seconds. Raises UsageError when it is not a time."""
    return _parse(value, "a time like 10us or 2ms", _TIME, _TIME_UNITS)
