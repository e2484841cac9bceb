"""plan.json: a Plan with ONNX names, written and read back; a user's plan (node name -> stage).

The document (format ``onnxsplit.plan``, version 1) is what :func:`plan_document`
builds: ``objective`` (its name), ``solver``, ``value``, ``lower_bound``, ``gap``,
``contiguous``, ``devices_available``, ``notes``, ``stages`` (each with
``index``, ``device``, ``device_kind``, ``nodes``, ``compute_ms``,
``receive_ms``, ``send_ms``, ``load_ms``, ``memory_bytes``) and ``assignment``
(node name -> stage, in the cost graph's node order). Readers ignore keys
they do not know (``solve`` adds ``max_load``, ``split --refine`` adds
``refine``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import PlanError
from onnxsplit.fileio import write_json_atomic
from onnxsplit.solve.plan import Objective, Plan, Solver, stage_loads

FORMAT = "onnxsplit.plan"
VERSION = 1


def plan_document(graph: CostGraph, devices: Devices, plan: Plan) -> dict[str, Any]:
    """The plan.json document of a plan on this graph and these devices.

    Stage loads are the plan's own (``Plan.loads``) when it has them, so a
    document read back gives the same plan; compute, receive, send and
    memory are recomputed.
    """
    loads = stage_loads(graph, devices, plan.stage_of, plan.stage_device)
    kinds = devices.expanded()
    members: list[list[str]] = [[] for _ in loads]
    for v in range(graph.n):
        members[plan.stage_of[v]].append(graph.names[v])
    stages = []
    for s, sl in enumerate(loads):
        stages.append({
            "index": s,
            "device": plan.stage_device[s],
            "device_kind": kinds[plan.stage_device[s]].name,
            "nodes": members[s],
            "compute_ms": sl.compute,
            "receive_ms": sl.receive,
            "send_ms": sl.send,
            "load_ms": plan.loads[s] if len(plan.loads) == len(loads) else sl.load,
            "memory_bytes": sl.memory,
        })
    return {
        "format": FORMAT,
        "version": VERSION,
        "objective": plan.objective.value,
        "solver": plan.solver.value,
        "value": plan.value,
        "lower_bound": plan.lower_bound,
        "gap": plan.gap if math.isfinite(plan.gap) else None,
        "contiguous": plan.contiguous,
        "devices_available": devices.count,
        "notes": list(plan.notes),
        "stages": stages,
        "assignment": {graph.names[v]: plan.stage_of[v] for v in range(graph.n)},
    }


def save_plan(plan: Plan, path: str | os.PathLike, *, graph: CostGraph, devices: Devices) -> Path:
    """Write ``plan`` as plan.json at ``path``, atomically; return the path.

    Before: ``plan`` places the nodes of ``graph`` on devices of ``devices``.
    After: ``load_plan(path) == plan``.
    """
    path = Path(path)
    write_json_atomic(path, plan_document(graph, devices, plan))
    return path


def _fail(path: Path, field: str, problem: str) -> PlanError:
    return PlanError(f"{path}: {field}: {problem}")


def _number(path: Path, field: str, value: Any, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise _fail(path, field, f"expected a number, got {value!r}")
    if minimum is not None and not value >= minimum:
        raise _fail(path, field, f"must be at least {minimum:g}, got {value!r}")
    return float(value)


def _integer(path: Path, field: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, field, f"expected an integer, got {value!r}")
    if value < minimum:
        raise _fail(path, field, f"must be at least {minimum}, got {value}")
    return value


def _close(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _field(path: Path, doc: dict[str, Any], key: str, *, prefix: str = "") -> Any:
    if key not in doc:
        raise _fail(path, prefix + key, "missing")
    return doc[key]


def load_plan(path: str | os.PathLike, *, graph: CostGraph | None = None) -> Plan:
    """Read a plan.json written by :func:`save_plan` (or ``split``, or ``solve --json``) back into a Plan.

    Every field is checked: a missing key, a wrong type, an unknown solver or
    objective, a stage or device out of range, a stage whose ``nodes``
    disagree with the ``assignment``, a ``load_ms`` that is not its parts'
    sum, or a ``value``/``gap`` that contradicts the loads and bound raises a
    one-line PlanError naming the file and the field.

    Node ids follow the order of ``assignment``. With ``graph`` they follow
    the graph's node order instead, and the assignment must name exactly the
    graph's nodes (the loads are not rescored: use ``check_plan`` for that).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: cannot read a JSON plan ({exc})") from None
    if not isinstance(doc, dict):
        raise PlanError(f"{path}: a plan file is a JSON object")
    if doc.get("format") != FORMAT:
        raise _fail(path, "format", f"expected {FORMAT!r}, got {doc.get('format')!r}")
    if doc.get("version") != VERSION:
        raise _fail(path, "version", f"version {doc.get('version')!r} is not supported (expected {VERSION})")

    def name_of(key: str, enum: type[Solver] | type[Objective]) -> Any:
        value = _field(path, doc, key)
        if not isinstance(value, str):
            raise _fail(path, key, f"expected a name, got {value!r}")
        try:
            return enum.parse(value)
        except PlanError as exc:
            raise _fail(path, key, str(exc)) from None

    objective = name_of("objective", Objective)
    solver = name_of("solver", Solver)
    value = _number(path, "value", _field(path, doc, "value"))
    lower_bound = _number(path, "lower_bound", _field(path, doc, "lower_bound"))
    gap = _field(path, doc, "gap")
    if gap is not None:
        gap = _number(path, "gap", gap, minimum=0.0)
    contiguous = _field(path, doc, "contiguous")
    if not isinstance(contiguous, bool):
        raise _fail(path, "contiguous", f"expected true or false, got {contiguous!r}")
    available = _integer(path, "devices_available", _field(path, doc, "devices_available"), minimum=1)
    notes = _field(path, doc, "notes")
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise _fail(path, "notes", "expected a list of strings")

    assignment = _field(path, doc, "assignment")
    if not isinstance(assignment, dict):
        raise _fail(path, "assignment", "expected an object mapping node names to stage numbers")
    stages = _field(path, doc, "stages")
    if not isinstance(stages, list):
        raise _fail(path, "stages", "expected a list")
    stage_device: list[int] = []
    loads: list[float] = []
    members: list[list[str]] = [[] for _ in stages]
    for name, s in assignment.items():
        s = _integer(path, f"assignment[{name!r}]", s)
        if s >= len(stages):
            raise _fail(path, f"assignment[{name!r}]", f"stage {s} does not exist ({len(stages)} stages)")
        members[s].append(name)
    for s, stage in enumerate(stages):
        where = f"stages[{s}]"
        if not isinstance(stage, dict):
            raise _fail(path, where, "expected an object")
        if _integer(path, f"{where}.index", _field(path, stage, "index", prefix=f"{where}.")) != s:
            raise _fail(path, f"{where}.index", f"expected {s}, got {stage['index']}")
        device = _integer(path, f"{where}.device", _field(path, stage, "device", prefix=f"{where}."))
        if device >= available:
            raise _fail(path, f"{where}.device", f"device {device} does not exist ({available} devices available)")
        if device in stage_device:
            raise _fail(path, f"{where}.device", f"device {device} already holds stage {stage_device.index(device)}")
        stage_device.append(device)
        if not isinstance(_field(path, stage, "device_kind", prefix=f"{where}."), str):
            raise _fail(path, f"{where}.device_kind", "expected a name")
        nodes = _field(path, stage, "nodes", prefix=f"{where}.")
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise _fail(path, f"{where}.nodes", "expected a list of node names")
        if nodes != members[s]:
            raise _fail(path, f"{where}.nodes", "disagrees with the assignment")
        parts = [_number(path, f"{where}.{key}", _field(path, stage, key, prefix=f"{where}."), minimum=0.0)
                 for key in ("compute_ms", "receive_ms", "send_ms")]
        _number(path, f"{where}.memory_bytes", _field(path, stage, "memory_bytes", prefix=f"{where}."), minimum=0.0)
        load = _number(path, f"{where}.load_ms", _field(path, stage, "load_ms", prefix=f"{where}."), minimum=0.0)
        if not _close(load, math.fsum(parts)):
            raise _fail(path, f"{where}.load_ms", f"{load} is not compute_ms + receive_ms + send_ms = {math.fsum(parts)}")
        loads.append(load)
    if objective is Objective.THROUGHPUT and not _close(value, max(loads, default=0.0)):
        raise _fail(path, "value", f"{value} is not the largest load_ms ({max(loads, default=0.0)})")

    order = list(assignment)
    if graph is not None:
        known = set(graph.names)
        unknown = [name for name in order if name not in known]
        if unknown:
            raise _fail(path, "assignment", f"names node {unknown[0]!r}, which is not in the graph")
        if len(order) != graph.n:
            missing = next(name for name in graph.names if name not in assignment)
            raise _fail(path, "assignment", f"does not place node {missing!r}")
        order = list(graph.names)
    plan = Plan(
        stage_of=tuple(assignment[name] for name in order),
        stage_device=tuple(stage_device),
        value=value,
        lower_bound=lower_bound,
        solver=solver,
        objective=objective,
        loads=tuple(loads),
        contiguous=contiguous,
        notes=tuple(notes),
    )
    expected_gap = plan.gap if math.isfinite(plan.gap) else None
    if (gap is None) != (expected_gap is None) or (gap is not None and not _close(gap, expected_gap)):
        raise _fail(path, "gap", f"{gap} does not match value and lower_bound (expected {expected_gap})")
    return plan


def read_assignment(path: str | Path) -> dict[str | int, int]:
    """A user's plan: node -> stage, from a plan.json (its "assignment"), a plain object or a list.

    An object's keys name nodes, by name or by their index in the model's
    topological order written as a decimal string ("0", "1", ...; a node
    whose name is such a string is matched by name first). A list gives the
    stage of every node in that order: ``[0, 0, 1]`` is
    ``{0: 0, 1: 0, 2: 1}``. Keys come back as written (strings for an
    object, ints for a list); the split resolves them against the model.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: cannot read a JSON plan ({exc})") from None
    if isinstance(doc, dict) and isinstance(doc.get("assignment"), dict):
        doc = doc["assignment"]

    def stage_number(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(doc, list):
        if not all(stage_number(v) for v in doc):
            raise PlanError(f"{path}: a plan given as a list holds the stage number of every node, in node order")
        assignment: dict[str | int, int] = dict(enumerate(doc))
    elif isinstance(doc, dict) and all(stage_number(v) for v in doc.values()):
        assignment = dict(doc)
    else:
        raise PlanError(f"{path}: expected an object mapping node names (or indices) to stage numbers, "
                        "or a list of stage numbers in node order")
    bad = [k for k, v in assignment.items() if v < 0]
    if bad:
        raise PlanError(f"{path}: node {bad[0]!r} has a negative stage")
    return assignment
