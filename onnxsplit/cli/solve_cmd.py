"""`onnxsplit solve`: place a cost graph (onnxsplit or the paper's format) and report the plan."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from onnxsplit.cli.common import console as wide_console
from onnxsplit.errors import UsageError
from onnxsplit.solve.select import OBJECTIVES, SOLVERS


def add_parser(sub) -> None:
    p = sub.add_parser("solve", help="place a cost graph on devices and report the plan")
    p.add_argument("graph", help="cost graph JSON (onnxsplit or paper format)")
    p.add_argument("--format", default="auto", choices=("auto", "onnxsplit", "paper"), help="file format (default: detect)")
    p.add_argument("--objective", default="throughput", choices=OBJECTIVES)
    p.add_argument("--solver", default="auto", choices=SOLVERS)
    p.add_argument("--mip-solver", default="cbc", choices=("cbc", "highs"),
                   help="integer program backend (default cbc, bundled; highs needs highspy and highsbox)")
    p.add_argument("--non-contiguous", action="store_true", help="let the integer program place nodes freely")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds for solvers that can stop early")
    p.add_argument("--expert", default=None, help="an expert split file (paper format), with --solver expert")
    p.add_argument("--devices", default=None,
                   help="override the file's devices: N accelerators of the file's kind, or a devices.toml")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _override(devices, text: str):
    from onnxsplit.cli.common import parse_devices

    try:
        count = int(text)
    except ValueError:
        return parse_devices(text)
    if count < 1:
        raise UsageError(f"--devices must be at least 1, got {count}")
    talking = [k for k in devices.kinds if k.communicates]
    first = talking[0] if talking else devices.kinds[0]
    return replace(devices, kinds=tuple(replace(k, count=count) if k is first else k for k in devices.kinds))


def _node_id(name: str, v: int) -> int | str:
    return int(name) if name.lstrip("-").isdigit() else v


def run(args: argparse.Namespace) -> int:
    from onnxsplit.costgraph_io import load_costgraph
    from onnxsplit.solve.plan import stage_loads
    from onnxsplit.solve.select import solve

    graph, devices = load_costgraph(args.graph, fmt=args.format)
    if args.devices is not None:
        devices = _override(devices, args.devices)
        missing = [k.name for k in devices.kinds if k.name not in graph.compute]
        if missing:
            raise UsageError(f"--devices names kind {missing[0]!r}, but the graph has times only for {list(graph.compute)}")
    if args.non_contiguous and args.solver not in ("ip", "auto"):
        raise UsageError("--non-contiguous applies to the integer program (--solver ip)")
    solver = "ip" if args.non_contiguous and args.solver == "auto" else args.solver
    with Console(stderr=True).status(f"solving ({solver}, time limit {args.time_limit:g} s)..."):
        plan = solve(graph, devices, solver=solver, objective=args.objective, time_limit=args.time_limit,
                     contiguous=not args.non_contiguous, expert=args.expert, mip_solver=args.mip_solver)
    loads = stage_loads(graph, devices, plan.stage_of, plan.stage_device)
    kinds = devices.expanded()
    rows = []
    for s, sl in enumerate(loads):
        rows.append({"stage": s, "device": plan.stage_device[s], "kind": kinds[plan.stage_device[s]].name,
                     "nodes": [_node_id(graph.names[v], v) for v in range(graph.n) if plan.stage_of[v] == s],
                     "compute": sl.compute, "receive": sl.receive, "send": sl.send, "memory": sl.memory, "load": sl.load})
    max_load = max((r["load"] for r in rows), default=0.0)
    gap = plan.gap if math.isfinite(plan.gap) else None
    if args.json:
        print(json.dumps({"objective": plan.value, "objective_kind": plan.objective, "max_load": max_load,
                          "lower_bound": plan.lower_bound, "gap": gap, "solver": plan.solver,
                          "contiguous": plan.contiguous, "notes": list(plan.notes), "devices": rows}, indent=2))
        return 0
    table = Table(title=f"{args.graph}: {plan.solver}, {plan.objective}")
    for col in ("stage", "device", "nodes", "compute", "receive", "send", "memory", "load"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["stage"]), f"{r['kind']}:{r['device']}", str(len(r["nodes"])), f"{r['compute']:.4f}",
                      f"{r['receive']:.4f}", f"{r['send']:.4f}", f"{r['memory']:.4g}", f"{r['load']:.4f}")
    console = wide_console()
    console.print(table)
    console.print(f"objective ({plan.objective}) {plan.value:.6f}   lower bound {plan.lower_bound:.6f}   "
                  f"gap {gap:.2%}" if gap is not None else f"objective {plan.value}")
    for note in plan.notes:
        console.print(f"note: {note}")
    return 0
