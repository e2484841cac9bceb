"""Link prices: which link joins each pair of devices, and a graph repriced at the cheapest or dearest one."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import Devices, Link
from onnxsplit.solve.plan import hand_off_ms

# Relative slack when comparing a plan with a bound, so rounding never claims or denies a proof wrongly.
REL_SLACK = 1e-9


@dataclass(frozen=True)
class LinkTable:
    """The distinct links between devices, and which one joins each pair.

    ``links[0]`` is None, the default link (a tensor's own ``cost``);
    ``link_id[a, b]`` indexes ``links`` for a != b and is -1 on the diagonal.
    ``used`` lists the link indices some pair of distinct devices uses.
    """

    links: tuple[Link | None, ...]
    link_id: np.ndarray
    used: tuple[int, ...]

    @staticmethod
    def of(devices: Devices) -> LinkTable:
        n = devices.count
        links: list[Link | None] = [None]
        link_id = np.full((n, n), -1, dtype=np.int64)
        for a in range(n):
            for b in range(n):
                if a == b:
                    continue
                link = devices.pair_link(a, b)
                if link not in links:
                    links.append(link)
                link_id[a, b] = links.index(link)
        used = tuple(sorted({int(i) for i in link_id.flat if i >= 0}))
        return LinkTable(tuple(links), link_id, used)

    def prices(self, tensors: Sequence[Tensor]) -> np.ndarray:
        """(tensors, links): each tensor's price on each link."""
        out = np.zeros((len(tensors), len(self.links)))
        for i, t in enumerate(tensors):
            for j, link in enumerate(self.links):
                out[i, j] = hand_off_ms(t, link)
        return out


def reprice(graph: CostGraph, devices: Devices, *, dearest: bool = False) -> CostGraph:
    """The graph with every tensor's cost set to its cheapest (or dearest) price between two devices."""
    table = LinkTable.of(devices)
    if not table.used:
        return graph
    prices = table.prices(graph.tensors)[:, list(table.used)]
    pick = prices.max(axis=1) if dearest else prices.min(axis=1)
    tensors = tuple(replace(t, cost=float(c)) for t, c in zip(graph.tensors, pick))
    return replace(graph, tensors=tensors)
