"""`onnxsplit solve`: place a cost graph (onnxsplit or the paper's format) and report the plan."""

from __future__ import annotations

import argparse

from onnxsplit.cli import common
from onnxsplit.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("solve", help="place a cost graph on devices and report the plan")
    p.add_argument("graph", help="cost graph JSON (onnxsplit or paper format)")
    p.add_argument("--format", default="auto", choices=("auto", *common.COSTGRAPH_FORMATS),
                   help="file format (default: detect)")
    common.add_devices(p, override=True)
    common.add_solver(p, mip=True)
    p.add_argument("--non-contiguous", action="store_true", help="let the integer program place nodes freely")
    p.add_argument("--expert", default=None, metavar="SPLIT.json",
                   help="an expert split file (paper format), with --solver expert")
    common.add_json(p)
    p.set_defaults(run=run)


def _override(devices, text: str, memory: str | None):
    """``--devices``: a devices file, or N devices of the file's first communicating kind (of ``memory`` if given)."""
    from dataclasses import replace

    from onnxsplit.units import parse_bytes

    try:
        count = int(text)
    except ValueError:
        return common.parse_devices(text, memory=memory)
    if count < 1:
        raise UsageError(f"--devices must be at least 1, got {count}")
    talking = [k for k in devices.kinds if k.communicates]
    first = talking[0] if talking else devices.kinds[0]
    changes: dict = {"count": count}
    if memory:
        with common.flag_errors("--device-memory"):
            changes["memory"] = parse_bytes(memory)
    return replace(devices, kinds=tuple(replace(k, **changes) if k is first else k for k in devices.kinds))


def run(args: argparse.Namespace) -> int:
    from onnxsplit.costgraph_io import load_costgraph
    from onnxsplit.planfile import plan_document
    from onnxsplit.solve.select import solve

    if args.solver == "expert" and args.expert is None:
        raise UsageError("--solver expert needs --expert SPLIT.json")
    if args.device_memory and args.devices is None:
        raise UsageError("--device-memory applies to --devices N; the file's devices keep their memory")
    graph, devices = load_costgraph(args.graph, fmt=args.format)
    if args.devices is not None:
        devices = _override(devices, args.devices, args.device_memory)
        missing = [k.name for k in devices.kinds if k.name not in graph.compute]
        if missing:
            raise UsageError(f"--devices names kind {missing[0]!r}, but the graph has times only for {list(graph.compute)}")
    if args.non_contiguous and args.solver not in ("ip", "auto"):
        raise UsageError("--non-contiguous applies to the integer program (--solver ip)")
    solver = "ip" if args.non_contiguous and args.solver == "auto" else args.solver
    with common.status(f"solving ({solver}, time limit {args.time_limit:g} s)..."):
        plan = solve(graph, devices, solver=solver, objective=args.objective, time_limit=args.time_limit,
                     contiguous=not args.non_contiguous, expert=args.expert, mip_solver=args.mip_solver)
    doc = plan_document(graph, devices, plan)
    stages = doc["stages"]
    max_load = max((st["load_ms"] for st in stages), default=0.0)
    if args.json:
        # plan.json's keys (objective by name, value, stages, assignment), and the max load beside the value.
        at = list(doc).index("value") + 1
        items = list(doc.items())
        common.print_json(dict(items[:at] + [("max_load", max_load)] + items[at:]))
        return 0
    from rich.table import Table

    table = Table(title=f"{args.graph}: {plan.solver}, {plan.objective}")
    for col in ("stage", "device", "nodes", "compute", "receive", "send", "memory", "load"):
        table.add_column(col, justify="right")
    for st in stages:
        table.add_row(str(st["index"]), f"{st['device_kind']}:{st['device']}", str(len(st["nodes"])),
                      f"{st['compute_ms']:.4f}", f"{st['receive_ms']:.4f}", f"{st['send_ms']:.4f}",
                      f"{st['memory_bytes']:.4g}", f"{st['load_ms']:.4f}")
    console = common.console()
    console.print(table)
    # With [[pair]] links the order of the devices matters: say it in one line.
    console.print("devices in pipeline order: " + " -> ".join(f"{st['device_kind']}:{st['device']}" for st in stages))
    gap = doc["gap"]
    console.print(f"objective ({plan.objective}) {plan.value:.6f}   lower bound {plan.lower_bound:.6f}   "
                  f"gap {gap:.2%}" if gap is not None else f"objective {plan.value}")
    for note in plan.notes:
        console.print(f"note: {note}")
    return 0
