"""plan.json: write a Plan with ONNX names; read a user's plan (node name -> stage)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import PlanError
from onnxsplit.solve.plan import Plan, stage_loads


def plan_document(graph: CostGraph, devices: Devices, plan: Plan) -> dict[str, Any]:
    loads = stage_loads(graph, devices, plan.stage_of, plan.stage_device)
    kinds = devices.expanded()
    stages = []
    for s, sl in enumerate(loads):
        stages.append({
            "index": s,
            "device": plan.stage_device[s],
            "device_kind": kinds[plan.stage_device[s]].name,
            "nodes": [graph.names[v] for v in range(graph.n) if plan.stage_of[v] == s],
            "compute_ms": sl.compute,
            "receive_ms": sl.receive,
            "send_ms": sl.send,
            "load_ms": sl.load,
            "memory_bytes": sl.memory,
        })
    return {
        "format": "onnxsplit.plan",
        "version": 1,
        "objective": plan.objective,
        "solver": plan.solver,
        "value": plan.value,
        "lower_bound": plan.lower_bound,
        "gap": plan.gap if math.isfinite(plan.gap) else None,
        "contiguous": plan.contiguous,
        "devices_available": devices.count,
        "notes": list(plan.notes),
        "stages": stages,
        "assignment": {graph.names[v]: plan.stage_of[v] for v in range(graph.n)},
    }


def read_assignment(path: str | Path) -> dict[str, int]:
    """A user's plan: either a plan.json (its "assignment") or a plain {node name: stage} object."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"--plan {path}: cannot read a JSON plan ({exc})") from None
    if isinstance(doc, dict) and isinstance(doc.get("assignment"), dict):
        doc = doc["assignment"]
    if not isinstance(doc, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in doc.values()):
        raise PlanError(f"--plan {path}: expected an object mapping node names to stage numbers")
    bad = [k for k, v in doc.items() if v < 0]
    if bad:
        raise PlanError(f"--plan {path}: node {bad[0]!r} has a negative stage")
    return dict(doc)
