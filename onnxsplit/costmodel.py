"""Build a CostGraph from a normalised Model, a Profile and Devices.

The step runs in three parts, each a function of typed values:
:func:`shared_profile` reads or measures the profile that device kinds
without a profile of their own share (or gives None: estimate),
:func:`kind_times` turns profiles into each device kind's node times, and
:func:`build_costgraph` adds memory and hand-off costs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

from onnxsplit.choices import COSTS, Costs
from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import UsageError
from onnxsplit.graphinfo import GraphInfo
from onnxsplit.model import Model, tensor_nbytes
from onnxsplit.shapes import TensorType

if TYPE_CHECKING:
    import numpy as np

    from onnxsplit.profile.store import Profile

# Where a kind's node times come from: its own profile file (devices.toml ``profile``), the profile
# the kinds share (divided by the kind's speed), or the analytic estimate (divided likewise).
TimesSource = Literal["own profile", "shared profile", "estimate"]


@dataclass(frozen=True)
class KindCost:
    """One device kind's time for every node (milliseconds, node order), and how it was obtained.

    ``speed`` is the factor the shared times were divided by (1.0 for an
    own profile); ``provider`` and ``threads`` are the profile's, None for
    an estimate.
    """

    kind: str
    times_ms: tuple[float, ...]
    source: TimesSource
    speed: float = 1.0
    provider: str | None = None
    threads: int | None = None


@dataclass(frozen=True)
class KindTimes:
    """Node times per device kind, in the devices' kind order: what :func:`build_costgraph` costs compute with."""

    kinds: tuple[KindCost, ...]

    def __getitem__(self, kind: str) -> tuple[float, ...]:
        return self.of(kind).times_ms

    def of(self, kind: str) -> KindCost:
        for k in self.kinds:
            if k.kind == kind:
                return k
        raise KeyError(kind)


def shared_profile(model: Model, devices: Devices, *, input_shapes: dict[str, tuple[int, ...]],
                   costs: Costs = "measure", profile_path: str | os.PathLike | None = None, runs: int = 20,
                   warmup: int = 5, feeds: Mapping[str, np.ndarray] | None = None) -> Profile | None:
    """The profile shared by the device kinds that have no profile file of their own.

    ``profile_path`` is read when given (whatever ``costs`` says); else
    ``costs="measure"`` measures on the first kind's provider, options and
    threads (cached); else None, meaning the analytic estimate. None too
    when every kind has its own profile, and then nothing is read or
    measured. ``feeds``: the user's input arrays to measure with (values
    that steer control flow matter), else seeded random ones. The profile is
    not checked against the model here: :func:`kind_times` checks every
    profile it uses.
    """
    if costs not in COSTS:
        raise UsageError(f"costs {costs!r}: choose {' or '.join(COSTS)}")
    if all(k.profile is not None for k in devices.kinds):
        return None
    from onnxsplit.profile.store import load_profile

    if profile_path is not None:
        return load_profile(profile_path)
    if costs == "estimate":
        return None
    from onnxsplit.profile.cache import cached_profile  # measuring needs onnxruntime: only now

    odd = [i for i in model.inputs if i.type.WhichOneof("value") != "tensor_type"]
    if odd:  # the profiler feeds tensors only
        raise UsageError(f"input {odd[0].name!r} is not a tensor (a sequence, optional or map): its node times "
                         "cannot be measured; use estimated costs or a profile file")
    first = devices.kinds[0]
    return cached_profile(model, input_shapes=input_shapes, provider=first.provider,
                          provider_options=dict(first.provider_options), threads=first.threads, runs=runs,
                          warmup=warmup, feeds=feeds)


def kind_times(model: Model, info: GraphInfo, types: dict[str, TensorType], devices: Devices, *,
               profile: Profile | None, input_shapes: dict[str, tuple[int, ...]]) -> KindTimes:
    """Every device kind's node times.

    A kind with a profile file of its own (devices.toml ``profile``) uses
    that profile as it is; the others share ``profile`` divided by their
    speed, or the analytic estimate when ``profile`` is None. Every profile
    used must have been measured on this model at ``input_shapes``
    (ProfileError otherwise); its provider and threads are its own.
    """
    from onnxsplit.profile.estimate import estimate_times
    from onnxsplit.profile.store import check_profile, load_profile

    def checked(p: Profile) -> tuple[float, ...]:
        check_profile(p, model, input_shapes, p.provider, p.threads)
        by_name = p.times()
        return tuple(by_name[name] for name in info.names)

    shared: tuple[float, ...] | None = None

    def scaled(kind: DeviceKind) -> KindCost:
        nonlocal shared
        if shared is None:
            shared = checked(profile) if profile is not None else tuple(estimate_times(model, info, types))
        times = tuple(t / kind.speed for t in shared)
        if profile is None:
            return KindCost(kind.name, times, "estimate", kind.speed)
        return KindCost(kind.name, times, "shared profile", kind.speed, profile.provider, profile.threads)

    out = []
    for kind in devices.kinds:
        if kind.profile is not None:
            own = load_profile(kind.profile)
            out.append(KindCost(kind.name, checked(own), "own profile", 1.0, own.provider, own.threads))
        else:
            out.append(scaled(kind))
    return KindTimes(tuple(out))


def weight_bytes(model: Model, info: GraphInfo) -> list[float]:
    """Initializer bytes per node; an initializer read by several nodes counts at its first reader."""
    sizes = {t.name: tensor_nbytes(t) for t in model.graph.initializer}
    seen: set[str] = set()
    out = []
    for reads in info.reads:
        total = 0
        for name in reads:
            if name in sizes and name not in seen:
                seen.add(name)
                total += sizes[name]
        out.append(float(total))
    return out


def output_bytes(info: GraphInfo, types: dict[str, TensorType]) -> list[float]:
    """Bytes of the tensors each node writes, at the given input shapes (0 where unknown)."""
    out = []
    for writes in info.writes:
        out.append(float(sum((types[o].nbytes or 0) if o in types else 0 for o in writes)))
    return out


def activation_peak(info: GraphInfo, types: dict[str, TensorType], nodes: tuple[int, ...],
                    inputs: tuple[str, ...], outputs: tuple[str, ...]) -> int:
    """Peak bytes of live tensors while a stage runs its nodes in order.

    A tensor is live from when it arrives (stage inputs) or is written until
    its last reader in the stage has run; stage outputs stay live to the end.
    """
    size = {name: (types[name].nbytes or 0) if name in types else 0 for name in list(inputs) + [o for v in nodes for o in info.writes[v]]}
    last_read: dict[str, int] = {}
    for step, v in enumerate(nodes):
        for r in info.reads[v]:
            last_read[r] = step
    keep = set(outputs)
    # A tensor is freed after the step of its last read, or of its arrival when nothing here reads it:
    # freeing by step keeps this linear in the stage's size.
    freed: dict[int, list[str]] = {}
    live = set(inputs)
    for name in live:
        if name not in keep:
            freed.setdefault(max(last_read.get(name, -1), 0), []).append(name)
    current = sum(size[n] for n in live)
    peak = current
    for step, v in enumerate(nodes):
        for o in info.writes[v]:
            if o not in live:
                live.add(o)
                current += size[o]
                if o not in keep:
                    freed.setdefault(max(last_read.get(o, -1), step), []).append(o)
        peak = max(peak, current)
        for name in freed.pop(step, ()):
            current -= size[name]
    return peak


def build_costgraph(
    model: Model,
    info: GraphInfo,
    devices: Devices,
    times: KindTimes | Mapping[str, Sequence[float]],
    types: dict[str, TensorType],
) -> CostGraph:
    """The solver's view of the model.

    ``times``: from :func:`kind_times`, one entry per kind of ``devices``
    with one time per node. (A plain mapping kind name -> node times is
    still accepted, for callers that assemble the times themselves.)
    Tensors made by const nodes cost nothing to hand over: the rewrite copies
    their producers instead. A node's memory is its weights plus the tensors it
    writes: additive, so the solvers can sum it, and never below a stage's
    real working set except for the tensors the stage receives, which the
    split checks afterwards with :func:`activation_peak`.
    """
    compute = {k.name: tuple(float(t) for t in times[k.name]) for k in devices.kinds}
    wrong = [name for name, ts in compute.items() if len(ts) != len(info.names)]
    if wrong:
        raise ValueError(f"kind {wrong[0]!r} has {len(compute[wrong[0]])} node times for {len(info.names)} nodes")
    tensors = []
    for name, producer in info.producer.items():
        consumers = tuple(sorted(set(info.consumers.get(name, ()))))
        if not consumers:
            continue
        t = types.get(name)
        nbytes = (t.nbytes if t is not None else None) or 0
        cost = 0.0 if producer in info.const else devices.link.ms(nbytes)
        tensors.append(Tensor(name=name, producer=producer, consumers=consumers, nbytes=nbytes, cost=cost))
    tensors.sort(key=lambda t: (t.producer, t.name))
    return CostGraph(
        names=info.names,
        compute=compute,
        memory=tuple(w + a for w, a in zip(weight_bytes(model, info), output_bytes(info, types))),
        tensors=tuple(tensors),
        ops=tuple(n.op_type for n in model.graph.node),
    )
