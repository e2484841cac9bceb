"""The Profile value: measured time of every original node, and profile.json.

``profile.json`` (format ``onnxsplit.profile``, version 1) holds how the
profile was measured (model hash, input shapes, provider and options,
threads, onnxruntime version, runs, warm-ups), the whole model's latency,
and one record per original node in the model's topological order. The
cache of measured profiles is :mod:`onnxsplit.profile.cache`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from onnxsplit.errors import ModelError, OnnxSplitError
from onnxsplit.fileio import write_json_atomic
from onnxsplit.model import Model, check_source
from onnxsplit.shapes import resolve_input_shapes

FORMAT = "onnxsplit.profile"
VERSION = 1
Source = Literal["measured", "fused", "folded", "estimated"]
SOURCES: tuple[Source, ...] = ("measured", "fused", "folded", "estimated")


class ProfileError(OnnxSplitError):
    """A profile file is unreadable or does not fit the model it is used with."""


@dataclass(frozen=True)
class NodeTime:
    """One original node's time per inference.

    ``source`` says where the time comes from: ``measured`` (kernels that
    computed this node alone), ``fused`` (its share of kernels that computed
    it together with ``fused_with``), ``folded`` (computed once when the
    session was built, so free per inference) or ``estimated`` (no kernel
    covered it; the analytic estimate).
    """

    name: str
    op_type: str
    time_ms: float
    source: Source
    fused_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """Time per inference of every original node (in the model's order), and how it was measured.

    ``end_to_end_ms`` is the whole model's median latency without profiling;
    ``unattributed_ms`` is kernel time no original node could be found for.
    """

    model_sha256: str
    input_shapes: dict[str, tuple[int, ...]]
    provider: str
    provider_options: dict[str, str]
    threads: int
    ort_version: str
    runs: int
    warmup: int
    end_to_end_ms: float
    nodes: tuple[NodeTime, ...]
    unattributed_ms: float = 0.0
    _index: dict[str, NodeTime] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {n.name: n for n in self.nodes})

    def node(self, name: str) -> NodeTime:
        return self._index[name]

    def times(self) -> dict[str, float]:
        """Node name -> milliseconds per inference."""
        return {n.name: n.time_ms for n in self.nodes}

    @property
    def total_ms(self) -> float:
        """Sum of the node times (what a solver adds up), without unattributed time."""
        return math.fsum(n.time_ms for n in self.nodes)

    def time_by_source(self) -> dict[str, float]:
        totals = {s: 0.0 for s in SOURCES}
        for n in self.nodes:
            totals[n.source] += n.time_ms
        return totals

    def measured_share(self) -> float:
        """Share of all kernel time (unattributed included) that landed on measured or fused nodes."""
        by_source = self.time_by_source()
        whole = self.total_ms + self.unattributed_ms
        return (by_source["measured"] + by_source["fused"]) / whole if whole > 0 else 1.0


def _rounded(x: float) -> float:
    # Nanosecond resolution is finer than any timer here; rounding keeps files readable.
    return round(float(x), 6)


def profile_to_dict(profile: Profile) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_sha256": profile.model_sha256,
        "input_shapes": {k: list(v) for k, v in profile.input_shapes.items()},
        "provider": profile.provider,
        "provider_options": dict(sorted(profile.provider_options.items())),
        "threads": profile.threads,
        "onnxruntime_version": profile.ort_version,
        "runs": profile.runs,
        "warmup": profile.warmup,
        "end_to_end_ms": _rounded(profile.end_to_end_ms),
        "unattributed_ms": _rounded(profile.unattributed_ms),
        "nodes": [
            {"name": n.name, "op_type": n.op_type, "time_ms": _rounded(n.time_ms), "source": n.source,
             "fused_with": list(n.fused_with)}
            for n in profile.nodes
        ],
    }


def _need(data: dict, key: str, kind: type | tuple[type, ...], where: str):
    if key not in data:
        raise ProfileError(f"{where}: missing field {key!r}")
    value = data[key]
    # bool is an int in Python; a flag where a count belongs is still a bad file.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProfileError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _count(data: dict, key: str, where: str, *, low: int) -> int:
    value = _need(data, key, int, where)
    if value < low:
        raise ProfileError(f"{where}: field {key!r} is {value}, expected at least {low}")
    return value


def _time(data: dict, key: str, where: str) -> float:
    """A non-negative, finite number of milliseconds."""
    value = _need(data, key, (int, float), where)
    try:
        ms = float(value)
    except OverflowError:  # an integer too big for a float
        ms = math.inf
    if not math.isfinite(ms) or ms < 0:
        raise ProfileError(f"{where}: field {key!r} is {value!r}, not a non-negative number")
    return ms


def _text(data: dict, key: str, where: str) -> str:
    value = _need(data, key, str, where)
    if not value:
        raise ProfileError(f"{where}: field {key!r} is empty")
    return value


def profile_from_dict(data: object, where: str = "profile") -> Profile:
    """Check and convert a parsed profile.json. Raises ProfileError naming the first problem.

    Every field is checked for its type and range: counts are integers
    (threads and runs at least 1), times finite and non-negative, shapes
    lists of non-negative integers, names non-empty strings.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProfileError(f"{where}: not an onnxsplit profile (no \"format\": \"{FORMAT}\")")
    version = data.get("version")
    if type(version) is not int or version != VERSION:
        raise ProfileError(f"{where}: profile version {version!r} is not supported (expected {VERSION})")
    shapes_raw = _need(data, "input_shapes", dict, where)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in shapes_raw.items():
        if not isinstance(dims, list) or not all(type(d) is int and d >= 0 for d in dims):
            raise ProfileError(f"{where}: input shape of {name!r} is not a list of non-negative integers")
        shapes[name] = tuple(dims)
    options = _need(data, "provider_options", dict, where)
    if not all(isinstance(v, str) for v in options.values()):
        raise ProfileError(f"{where}: provider_options values must be strings")
    nodes = []
    for i, raw in enumerate(_need(data, "nodes", list, where)):
        at = f"{where}: node {i}"
        if not isinstance(raw, dict):
            raise ProfileError(f"{at} is not an object")
        source = _need(raw, "source", str, at)
        if source not in SOURCES:
            raise ProfileError(f"{at}: source {source!r} is not one of {', '.join(SOURCES)}")
        time_ms = _time(raw, "time_ms", at)
        fused = _need(raw, "fused_with", list, at)
        if not all(isinstance(f, str) for f in fused):
            raise ProfileError(f"{at}: fused_with must list node names")
        nodes.append(NodeTime(name=_text(raw, "name", at), op_type=_text(raw, "op_type", at),
                              time_ms=time_ms, source=source, fused_with=tuple(fused)))
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ProfileError(f"{where}: node {dup!r} is listed twice")
    return Profile(
        model_sha256=_text(data, "model_sha256", where),
        input_shapes=shapes,
        provider=_text(data, "provider", where),
        provider_options=dict(options),
        threads=_count(data, "threads", where, low=1),
        ort_version=_need(data, "onnxruntime_version", str, where),
        runs=_count(data, "runs", where, low=1),
        warmup=_count(data, "warmup", where, low=0),
        end_to_end_ms=_time(data, "end_to_end_ms", where),
        nodes=tuple(nodes),
        unattributed_ms=_time(data, "unattributed_ms", where),
    )


def save_profile(profile: Profile, path: str | os.PathLike) -> Path:
    """Write ``profile`` as profile.json, atomically, creating its folder; ProfileError when it cannot."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, profile_to_dict(profile))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot write the profile ({exc.strerror or exc})") from None
    return path


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows (a profile's times are finite)")


def load_profile(path: str | os.PathLike) -> Profile:
    """Read and check a profile.json; ProfileError naming the file and the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read the profile ({exc})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except ValueError as exc:  # NaN or Infinity, which JSON itself does not have
        raise ProfileError(f"{path}: {exc}") from None
    except RecursionError:
        raise ProfileError(f"{path}: not a profile (nested too deeply)") from None
    return profile_from_dict(data, str(path))


def check_profile(profile: Profile, model: Model, input_shapes: dict[str, tuple[int, ...]], provider: str,
                  threads: int) -> None:
    """Raise ProfileError unless ``profile`` was measured on this model, at these shapes, provider and threads.

    ``input_shapes`` may name only some inputs; the rest resolve as for profiling.
    """
    try:
        check_source(model, profile.model_sha256, what="the profile was measured on")
    except ModelError as exc:  # the model is fine; it is the profile that does not fit
        raise ProfileError(str(exc)) from None
    wanted = resolve_input_shapes(model, input_shapes)
    for name, shape in wanted.items():
        have = profile.input_shapes.get(name)
        if have is None or tuple(have) != tuple(shape):
            got = "x".join(map(str, have)) if have is not None else "none"
            raise ProfileError(f"profile.json was measured at input shape {name}:{got}, "
                               f"not {name}:{'x'.join(map(str, shape))}")
    if profile.provider != provider:
        raise ProfileError(f"profile.json was measured on {profile.provider}, not {provider}")
    if profile.threads != threads:
        raise ProfileError(f"profile.json was measured with {profile.threads} threads, not {threads}")
    timed = {n.name for n in profile.nodes}
    missing = [n.name for n in model.graph.node if n.name not in timed]
    if missing:
        raise ProfileError(f"profile.json has no time for node {missing[0]!r}")
