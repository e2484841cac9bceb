"""Devices: kinds of device with a count, memory, speed and execution provider."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from onnxsplit.errors import UsageError
from onnxsplit.providers import CPU


@dataclass(frozen=True)
class DeviceKind:
    """A kind of device and how many of it there are.

    ``communicates`` is False for the paper's CPU, which pays no transfer
    time; every real device here pays it. ``memory`` is in bytes.
    ``ray_resources`` (Ray custom resource -> amount) and ``ray_labels``
    (node label -> value) pin the kind's stages to Ray nodes that have them
    when the split runs on the Ray engine; the solver ignores them.
    """

    name: str
    count: int
    memory: float = math.inf
    communicates: bool = True
    provider: str = CPU
    provider_options: tuple[tuple[str, str], ...] = ()
    threads: int = 1
    speed: float = 1.0
    device_ids: tuple[int, ...] = ()
    profile: str | None = None
    ray_resources: tuple[tuple[str, float], ...] = ()
    ray_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Link:
    """A link between devices: ``bandwidth`` in bytes/s, ``latency`` in seconds.

    Cost graphs count time in milliseconds, so :meth:`ms` is what they use.
    """

    bandwidth: float = 10e9
    latency: float = 10e-6

    def ms(self, nbytes: float) -> float:
        return (nbytes / self.bandwidth + self.latency) * 1e3


@dataclass(frozen=True)
class Devices:
    kinds: tuple[DeviceKind, ...]
    link: Link = field(default_factory=Link)
    # Links that differ from the default, keyed by (lower, higher) device index.
    pairs: tuple[tuple[tuple[int, int], Link], ...] = ()

    def __post_init__(self) -> None:
        if not self.kinds or sum(k.count for k in self.kinds) < 1:
            raise UsageError("at least one device is needed")
        names = [k.name for k in self.kinds]
        if len(set(names)) != len(names):
            raise UsageError(f"device kinds must have distinct names, got {names}")

    @property
    def count(self) -> int:
        return sum(k.count for k in self.kinds)

    def expanded(self) -> tuple[DeviceKind, ...]:
        """One entry per device, kinds in declaration order."""
        return tuple(k for k in self.kinds for _ in range(k.count))

    def link_between(self, a: int, b: int) -> Link:
        return self.pair_link(a, b) or self.link

    def pair_link(self, a: int, b: int) -> Link | None:
        """The ``[[pair]]`` link between devices a and b, or None where they use the default link."""
        key = (min(a, b), max(a, b))
        for pair, link in self.pairs:
            if pair == key:
                return link
        return None

    def interchangeable(self) -> tuple[tuple[int, ...], ...]:
        """Devices grouped into classes that can swap places without changing any plan's loads.

        Two devices are interchangeable when they have the same kind and the
        same link to every other device; swapping them maps every placement
        to one with the same loads. The relation is transitive (a swap of a
        and c is the swaps (a b)(b c)(a b)), so the classes partition the
        devices. Classes are in order of their lowest device, each sorted.
        """
        kinds = self.expanded()
        n = len(kinds)
        links = [[None if a == b else self.pair_link(a, b) for b in range(n)] for a in range(n)]

        def same(a: int, b: int) -> bool:
            return kinds[a] == kinds[b] and all(links[a][c] == links[b][c] for c in range(n) if c not in (a, b))

        classes: list[list[int]] = []
        for d in range(n):
            home = next((c for c in classes if same(c[0], d)), None)
            if home is None:
                classes.append([d])
            else:
                home.append(d)
        return tuple(tuple(c) for c in classes)

    def provider_options(self, device: int) -> dict[str, str]:
        """The onnxruntime provider options of one device, its device_id included."""
        kind = self.expanded()[device]
        options = dict(kind.provider_options)
        if kind.device_ids:
            first = sum(k.count for k in self.kinds[: self.kinds.index(kind)])
            options["device_id"] = str(kind.device_ids[device - first])
        return options


def identical_devices(count: int, *, memory: float = math.inf, kind: str = "cpu") -> Devices:
    """``count`` identical devices of one kind, each with ``memory`` bytes."""
    if count < 1:
        raise UsageError(f"the number of devices must be at least 1, got {count}")
    return Devices((DeviceKind(kind, count, memory=memory),))
