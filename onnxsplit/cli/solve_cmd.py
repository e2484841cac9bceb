"""`onnxsplit solve`: place a cost graph (onnxsplit or the paper's format) and report the plan."""

from __future__ import annotations

import argparse
import json
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


def run(args: argparse.Namespace) -> int:
    from onnxsplit.costgraph_io import load_costgraph
    from onnxsplit.planfile import plan_document
    from onnxsplit.solve.select import solve

    if args.solver == "expert" and args.expert is None:
        raise UsageError("--solver expert needs --expert SPLIT.json")
    if not args.time_limit > 0:
        raise UsageError(f"--time-limit must be positive, got {args.time_limit}")
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
    doc = plan_document(graph, devices, plan)
    stages = doc["stages"]
    max_load = max((st["load_ms"] for st in stages), default=0.0)
    if args.json:
        # plan.json's keys (objective by name, value, stages, assignment), and the max load beside the value.
        at = list(doc).index("value") + 1
        items = list(doc.items())
        print(json.dumps(dict(items[:at] + [("max_load", max_load)] + items[at:]), indent=2))
        return 0
    table = Table(title=f"{args.graph}: {plan.solver}, {plan.objective}")
    for col in ("stage", "device", "nodes", "compute", "receive", "send", "memory", "load"):
        table.add_column(col, justify="right")
    for st in stages:
        table.add_row(str(st["index"]), f"{st['device_kind']}:{st['device']}", str(len(st["nodes"])),
                      f"{st['compute_ms']:.4f}", f"{st['receive_ms']:.4f}", f"{st['send_ms']:.4f}",
                      f"{st['memory_bytes']:.4g}", f"{st['load_ms']:.4f}")
    console = wide_console()
    console.print(table)
    gap = doc["gap"]
    console.print(f"objective ({plan.objective}) {plan.value:.6f}   lower bound {plan.lower_bound:.6f}   "
                  f"gap {gap:.2%}" if gap is not None else f"objective {plan.value}")
    for note in plan.notes:
        console.print(f"note: {note}")
    return 0
