"""Single-sample latency: the scorer, lower bounds, a heuristic and an integer program.

* :mod:`.scorer`: a plan's pieces, their list schedule and its latency
  (the model is described there);
* :mod:`.bounds`: latencies no placement beats;
* :mod:`.heuristic`: the best of several list-scheduled plans;
* :mod:`.ip`: the integer program, which needs ``mip`` only when it runs.
"""

from __future__ import annotations

from onnxsplit.solve.latency.bounds import critical_path, latency_lower_bound
from onnxsplit.solve.latency.heuristic import latency_heuristic
from onnxsplit.solve.latency.ip import solve_latency_ip
from onnxsplit.solve.latency.scorer import (
    Piece,
    Schedule,
    cut_pieces,
    latency_of,
    latency_plan,
    plan_devices,
    schedule,
)

__all__ = [
    "Piece",
    "Schedule",
    "critical_path",
    "cut_pieces",
    "latency_heuristic",
    "latency_lower_bound",
    "latency_of",
    "latency_plan",
    "plan_devices",
    "schedule",
    "solve_latency_ip",
]
