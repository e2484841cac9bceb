"""The solver's view of a model: nodes with costs, tensors with transfer times.

A :class:`CostGraph` knows nothing about ONNX. Node ids are integers in a
topological order (every tensor's producer has a smaller id than each of its
consumers); names are kept only to report results and to map a plan back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from onnxsplit.errors import ModelError


@dataclass(frozen=True)
class Tensor:
    """One value that may cross between devices.

    ``cost`` is the time to move it from one device to another (bytes over the
    link's bandwidth plus its latency); a receiving device pays it once however
    many of its nodes read the tensor, and the producing device pays it once
    however many devices receive it.
    """

    name: str
    producer: int
    consumers: tuple[int, ...]
    nbytes: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class CostGraph:
    """Nodes in topological order with compute time per device kind.

    ``compute[kind][v]`` is node v's time on a device of that kind; ``math.inf``
    means v cannot run there. ``memory[v]`` is what v pins on its device
    (weights). ``groups`` lists co-location groups: node sets that must share
    a device.

    ``backward`` marks the backward nodes of a training graph (empty: an
    inference graph). In a training graph only the forward part must be split
    contiguously; a backward node goes wherever its group's forward nodes go,
    and its tensors still cost what they cost (see
    :mod:`onnxsplit.solve.training`). A backward node never feeds a forward one.
    """

    names: tuple[str, ...]
    compute: Mapping[str, tuple[float, ...]]
    memory: tuple[float, ...]
    tensors: tuple[Tensor, ...]
    groups: tuple[tuple[int, ...], ...] = ()
    ops: tuple[str, ...] = field(default=())
    # Per-node fields the solver ignores but a file format must keep (the paper's raw figures).
    attrs: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)
    backward: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        """Refuse a graph the solvers cannot trust, naming the node or tensor at fault.

        After: every list has one entry per node; every compute time is a
        non-negative number or ``inf``; every memory, tensor size and tensor
        cost is a finite non-negative number; every tensor's consumers follow
        its producer; groups name existing nodes; ``backward`` is empty or has
        one flag per node, and no tensor runs from a backward node to a
        forward one.
        """
        n = len(self.names)
        # All-forward flags say "inference": store them as none, so equal graphs compare equal.
        object.__setattr__(self, "backward", tuple(bool(b) for b in self.backward) if any(self.backward) else ())
        if self.backward and len(self.backward) != n:
            raise ModelError(f"backward has {len(self.backward)} flags for {n} nodes")
        for kind, times in self.compute.items():
            if len(times) != n:
                raise ModelError(f"compute[{kind!r}] has {len(times)} entries for {n} nodes")
            for v, t in enumerate(times):
                # inf is legal: the node cannot run on this kind. Negative or NaN times break
                # every solver's sums (the DP's windows assume sums grow with the node set).
                if not t >= 0:
                    raise ModelError(f"node {self.names[v]!r} has compute time {t} on {kind!r};"
                                     " times must be non-negative numbers (or inf for 'cannot run')")
        if len(self.memory) != n:
            raise ModelError(f"memory has {len(self.memory)} entries for {n} nodes")
        for v, m in enumerate(self.memory):
            if not 0 <= m < math.inf:
                raise ModelError(f"node {self.names[v]!r} has memory {m}; it must be a finite non-negative number")
        for t in self.tensors:
            if not 0 <= t.producer < n:
                raise ModelError(f"tensor {t.name!r} has producer {t.producer} out of range")
            for c in t.consumers:
                if not t.producer < c < n:
                    raise ModelError(
                        f"tensor {t.name!r}: consumer {c} does not follow producer {t.producer};"
                        " node ids must be a topological order"
                    )
            if self.backward and self.backward[t.producer]:
                forward = [c for c in t.consumers if not self.backward[c]]
                if forward:
                    raise ModelError(f"tensor {t.name!r} runs from backward node {self.names[t.producer]!r} to forward"
                                     f" node {self.names[forward[0]]!r}; backward nodes may only feed backward nodes")
            for what, x in (("bytes", t.nbytes), ("cost", t.cost)):
                if not 0 <= x < math.inf:
                    raise ModelError(f"tensor {t.name!r} has {what} {x}; it must be a finite non-negative number")
        for group in self.groups:
            if any(not 0 <= v < n for v in group):
                raise ModelError(f"co-location group {list(group)} names a node out of range")

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.compute)

    @property
    def training(self) -> bool:
        """True when some node is a backward node (then only the forward part must be contiguous)."""
        return any(self.backward)

    def is_backward(self, v: int) -> bool:
        return bool(self.backward) and self.backward[v]

    def edges(self) -> list[tuple[int, int]]:
        """Distinct (producer, consumer) pairs."""
        return sorted({(t.producer, c) for t in self.tensors for c in t.consumers})

    def precedence_edges(self) -> list[tuple[int, int]]:
        """The edges a contiguous split keeps in stage order: every edge, or in a training graph
        the forward ones (a backward node only feeds backward nodes, so: the edges into forward nodes)."""
        if not self.training:
            return self.edges()
        return [(u, v) for u, v in self.edges() if not self.backward[v]]

    def successors(self) -> list[list[int]]:
        succ: list[set[int]] = [set() for _ in range(self.n)]
        for u, v in self.edges():
            succ[u].add(v)
        return [sorted(s) for s in succ]

    def predecessors(self) -> list[list[int]]:
        pred: list[set[int]] = [set() for _ in range(self.n)]
        for u, v in self.edges():
            pred[v].add(u)
        return [sorted(s) for s in pred]
