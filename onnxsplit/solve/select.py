"""Pick and run a solver by name, falling back when the exact one cannot run."""

from __future__ import annotations

import logging
import math

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError, UsageError
from onnxsplit.solve.linear import solve_linear
from onnxsplit.solve.plan import Plan

log = logging.getLogger(__name__)

SOLVERS = ("auto", "linear")


def solve(graph: CostGraph, devices: Devices, *, solver: str = "auto", time_limit: float = 60.0) -> Plan:
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
    check_fits(graph, devices)
    return solve_linear(graph, devices)


def check_fits(graph: CostGraph, devices: Devices) -> None:
    """Name the first node that no device can hold or run, before any solver searches."""
    for v in range(graph.n):
        kinds = [k for k in devices.kinds if math.isfinite(graph.compute[k.name][v])]
        if not kinds:
            raise InfeasibleError(f"node {graph.names[v]!r} cannot run on any device kind")
        if all(graph.memory[v] > k.memory for k in kinds):
            biggest = max(k.memory for k in kinds)
            raise InfeasibleError(f"node {graph.names[v]!r} needs {graph.memory[v]:.0f} bytes of weights; "
                                  f"the largest device memory is {biggest:.0f} bytes")
    total = sum(graph.memory)
    capacity = sum(k.memory * k.count for k in devices.kinds)
    if total > capacity:
        raise InfeasibleError(f"the model's weights ({total:.0f} bytes) exceed the devices' total memory ({capacity:.0f} bytes)")
