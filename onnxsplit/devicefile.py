"""devices.toml: a heterogeneous set of devices and the links between them.

    [link]                      # default link between any two devices
    bandwidth = "16GB/s"        # bytes per second: a number or a string with a unit
    latency = "10us"            # seconds: a number or a string with a unit

    [[kind]]
    name = "gpu"
    count = 4
    memory = "80GB"             # bytes: a number or a size like "80G", "80GB", "64GiB"
    overhead = "2GB"            # taken by the runtime itself; the model gets memory - overhead
    provider = "cuda"           # a short name (cpu, cuda, tensorrt, ...) or an onnxruntime provider name
    device_ids = [0, 1, 2, 3]   # sets each device's device_id provider option
    threads = 1
    speed = 1.0                 # relative to the profile; or profile = "gpu.json"
    ray_resources = {"machine_a" = 1}   # Ray engine: stages of this kind need these Ray resources
    ray_labels = {"zone" = "a"}         # Ray engine: and run on nodes with these labels

    [[pair]]                    # a link that differs from the default
    devices = [0, 1]
    bandwidth = "300GB/s"
    latency = "2us"

Sizes, bandwidths and times follow :mod:`onnxsplit.units`, the grammar of
the command-line flags; provider names follow :mod:`onnxsplit.providers`.
Every error names the line and the key at fault.

Numbers must mean something: ``memory``, ``bandwidth``, ``speed``,
``threads`` and ``count`` are positive and finite, ``overhead`` and
``latency`` finite and at least 0 (a latency of 0 is a fair model of a
fast link). Unlimited memory is what a kind without ``memory`` gets; an
explicit ``memory = inf`` (or ``"inf"``) is refused with a line saying
so: leaving the key out says "unlimited" plainly, and an infinite value
written by mistake must not silently lift the limit.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from onnxsplit.devices import DeviceKind, Devices, Link
from onnxsplit.errors import DeviceSpecError, UsageError
from onnxsplit.providers import resolve_provider
from onnxsplit.units import parse_bandwidth, parse_bytes, parse_seconds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KIND_KEYS = {"name", "count", "memory", "overhead", "provider", "provider_options", "device_ids", "threads", "speed",
             "profile", "ray_resources", "ray_labels"}


class _Where:
    """Finds the line of a key inside the n-th table of a section, for error messages."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line(self, section: str, index: int, key: str | None) -> int:
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(section)}\s*\]\]?\s*(#.*)?$")
        seen = -1
        for i, line in enumerate(self.lines):
            if header.match(line):
                seen += 1
                if seen == index:
                    if key is None:
                        return i + 1
                    for j in range(i + 1, len(self.lines)):
                        if self.lines[j].lstrip().startswith("["):
                            break
                        if re.match(rf"^\s*{re.escape(key)}\s*=", self.lines[j]):
                            return j + 1
                    return i + 1
        return 1

    def fail(self, section: str, index: int, key: str | None, message: str) -> DeviceSpecError:
        where = f"{self.path}:{self.line(section, index, key)}"
        return DeviceSpecError(f"{where}: {section}{'' if section == 'link' else f' #{index + 1}'}"
                               f"{f' key {key!r}' if key else ''}: {message}")


def _link(table: object, where: _Where, section: str, index: int, default: Link) -> Link:
    if not isinstance(table, dict):
        raise where.fail(section, index, None, "must be a table of keys")
    bandwidth, latency = default.bandwidth, default.latency
    for key, value in table.items():
        try:
            if key == "bandwidth":
                bandwidth = parse_bandwidth(value)
                if bandwidth <= 0:
                    raise UsageError(f"bandwidth must be positive, got {value!r}")
            elif key == "latency":
                latency = parse_seconds(value)
            elif key != "devices":
                raise UsageError("unknown key")
        except UsageError as exc:
            raise where.fail(section, index, key, str(exc)) from None
    return Link(bandwidth, latency)


def _kind(table: object, where: _Where, index: int, base: Path) -> DeviceKind:
    def fail(key: str | None, message: str) -> DeviceSpecError:
        return where.fail("kind", index, key, message)

    if not isinstance(table, dict):
        raise fail(None, "must be a table of keys (write it as [[kind]])")
    unknown = sorted(set(table) - KIND_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(KIND_KEYS))})")
    for key in ("name", "count"):
        if key not in table:
            raise fail(None, f"missing key {key!r}")
    name = table["name"]
    if not isinstance(name, str) or not name:
        raise fail("name", "must be a non-empty string")
    count = table["count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise fail("count", f"must be a positive integer, got {count!r}")
    memory = math.inf
    if "memory" in table:
        if isinstance(table["memory"], (float, str)) and str(table["memory"]).strip().lower() in ("inf", "+inf"):
            raise fail("memory", "must be a finite size; leave memory out for unlimited memory")
        try:
            memory = parse_bytes(table["memory"])
        except UsageError as exc:
            raise fail("memory", str(exc)) from None
        if memory <= 0:
            raise fail("memory", f"must be positive, got {table['memory']!r}")
    if "overhead" in table:
        try:
            overhead = parse_bytes(table["overhead"])
        except UsageError as exc:
            raise fail("overhead", str(exc)) from None
        if overhead < 0 or overhead >= memory:
            raise fail("overhead", f"must be at least 0 and below the memory, got {table['overhead']!r}")
        # What the runtime itself takes (session, arena, CUDA context) is not there for the model.
        memory -= overhead
    threads = table.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise fail("threads", f"must be a positive integer, got {threads!r}")
    speed = table.get("speed", 1.0)
    # ``not speed > 0`` also catches nan, which compares false with everything.
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0 or not math.isfinite(speed):
        raise fail("speed", f"must be a positive, finite number, got {speed!r}")
    options = table.get("provider_options", {})
    if not isinstance(options, dict):
        raise fail("provider_options", "must be a table of key = value")
    bad = next((k for k, v in options.items() if not isinstance(v, (str, int, float, bool))), None)
    if bad is not None:
        raise fail("provider_options", f"option {bad!r} must be a string or a number")
    device_ids = table.get("device_ids", [])
    if not isinstance(device_ids, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in device_ids):
        raise fail("device_ids", "must be a list of non-negative integers")
    if device_ids and len(device_ids) != count:
        raise fail("device_ids", f"lists {len(device_ids)} ids for {count} devices")
    profile = table.get("profile")
    if profile is not None:
        if not isinstance(profile, str):
            raise fail("profile", "must be a file path")
        if not (base / profile).is_file():
            raise fail("profile", f"file {profile!r} not found")
        profile = str((base / profile).resolve())
    ray_resources = table.get("ray_resources", {})
    if not isinstance(ray_resources, dict):
        raise fail("ray_resources", "must be a table of resource = amount")
    for key, amount in ray_resources.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < math.inf:
            raise fail("ray_resources", f"resource {key!r} must be a positive, finite amount, got {amount!r}")
    ray_labels = table.get("ray_labels", {})
    if not isinstance(ray_labels, dict) or not all(isinstance(v, str) and v for v in ray_labels.values()):
        raise fail("ray_labels", "must be a table of label = \"value\"")
    provider = table.get("provider", "cpu")
    if not isinstance(provider, str) or not provider:
        raise fail("provider", "must be a provider name such as 'cpu' or 'cuda'")
    try:
        provider = resolve_provider(provider)
    except UsageError as exc:
        raise fail("provider", str(exc)) from None
    return DeviceKind(
        name=name, count=count, memory=memory, provider=provider,
        provider_options=tuple(sorted((str(k), str(v)) for k, v in options.items())),
        threads=threads, speed=float(speed), device_ids=tuple(device_ids), profile=profile,
        ray_resources=tuple(sorted((str(k), float(v)) for k, v in ray_resources.items())),
        ray_labels=tuple(sorted((str(k), v) for k, v in ray_labels.items())),
    )


def load_devices(path: str | Path) -> Devices:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DeviceSpecError(f"{path}: cannot read devices file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeviceSpecError(f"{path}: not a devices file (not UTF-8 text: byte {exc.start} is "
                              f"{data[exc.start]:#04x})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeviceSpecError(f"{path}: not valid TOML ({str(exc).splitlines()[0]})") from None
    where = _Where(path, text)
    unknown = sorted(set(doc) - {"link", "kind", "pair"})
    if unknown:
        raise DeviceSpecError(f"{path}:{where.line(unknown[0], 0, None)}: unknown section {unknown[0]!r} (expected link, kind, pair)")
    kinds_doc = doc.get("kind")
    if isinstance(kinds_doc, dict):
        raise DeviceSpecError(f"{path}:{where.line('kind', 0, None)}: [kind] must be written [[kind]], "
                              f"one table per device kind")
    if not isinstance(kinds_doc, list) or not kinds_doc:
        raise DeviceSpecError(f"{path}:1: no [[kind]] table: a devices file needs at least one device kind")
    default = _link(doc.get("link", {}), where, "link", 0, Link())
    kinds = tuple(_kind(k, where, i, path.parent) for i, k in enumerate(kinds_doc))
    seen: set[str] = set()
    for i, k in enumerate(kinds):
        if k.name in seen:
            raise where.fail("kind", i, "name", f"kind {k.name!r} is declared twice")
        seen.add(k.name)
    total = sum(k.count for k in kinds)
    pairs = []
    pairs_doc = doc.get("pair", [])
    if not isinstance(pairs_doc, list):
        raise DeviceSpecError(f"{path}:{where.line('pair', 0, None)}: pair must be written [[pair]], one table per link")
    for i, p in enumerate(pairs_doc):
        if not isinstance(p, dict):
            raise where.fail("pair", i, None, "must be a table of keys (write it as [[pair]])")
        devs = p.get("devices")
        if not (isinstance(devs, list) and len(devs) == 2 and all(isinstance(d, int) and 0 <= d < total for d in devs)
                and devs[0] != devs[1]):
            raise where.fail("pair", i, "devices", f"must name two different devices among 0..{total - 1}")
        pairs.append(((min(devs), max(devs)), _link(p, where, "pair", i, default)))
    return Devices(kinds, link=default, pairs=tuple(pairs))
