"""Benchmark the placement solvers on the reference cost graphs.

Run from the repository root:

    python benchmarks/solver_bench.py [--repeats 5] [--graphs gnmt bert] [--json out.json]
        [--ip-time-limit 60] [--no-ip] [--local-time-limit 10]
    python benchmarks/solver_bench.py --scale [--layers 56 160 535] [--scale-devices 8] [--scale-costs measure]

Prints one row per reference graph: the exact DP (timed over ``--repeats``),
the contiguous integer program and the non-contiguous one, both warm-started
from the DP plan and run once under ``--ip-time-limit`` (skip both with
``--no-ip``: they take minutes over all graphs), and the linear, greedy,
local-search and expert baselines' values.

``--scale`` instead splits generated deep transformers (``--layers 56 160
535`` are about 10k, 30k and 100k nodes) end to end with ``onnxsplit.split``
on 8 devices, each in a process of its own, and prints one row per model:
seconds in every pass of the split (load, shape inference, shape values,
probe run, graph info, onnxruntime check, costs, cost graph, the solver's
coarsening, stage cores and DP, cut, write), the total, peak memory, and
the plan's value, bound and gap.
 Each solver contributes a *measure*: a
function that takes a :class:`Case` and returns a dict of values for the row,
and a list of :class:`Column` entries saying how to show them. To add a
solver, write ``my_measure(case) -> dict`` and append it with its columns to
``MEASURES``; the table, the JSON dump and the order follow.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import OnnxSplitError
from onnxsplit.paperformat import load_paper
from onnxsplit.solve.dp import DPTooLarge, solve_dp_with_stats
from onnxsplit.solve.plan import Plan, check_plan

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference-graphs"
# Relative slack when comparing one solver's value or bound with the DP optimum.
TOL = 1e-6


@dataclass(frozen=True)
class Case:
    """One reference graph with what expected.json says about it."""

    name: str
    graph: CostGraph
    devices: Devices
    expected: dict[str, Any]
    repeats: int
    ip_time_limit: float = 60.0
    local_time_limit: float = 10.0
    expert: Path | None = None  # the expert split expected.json names for this graph
    # Results one measure leaves for another (the DP plan the integer programs start from).
    shared: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = "{}"
    justify: str = "right"

    def show(self, row: dict[str, Any]) -> str:
        value = row.get(self.key)
        if value is None:
            return "-"
        if isinstance(value, float) and math.isinf(value):
            return "inf"
        return self.fmt.format(value)


@dataclass(frozen=True)
class Measure:
    name: str
    run: Callable[[Case], dict[str, Any]]
    columns: list[Column] = field(default_factory=list)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float]]:
    """Run fn repeats times; the last result and every wall time."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def reference_measure(case: Case) -> dict[str, Any]:
    graph = case.graph
    acc = [c for c in graph.compute["acc"] if not math.isinf(c)]
    ref_seconds = case.expected.get("dp_seconds") or []
    return {
        "graph": case.name.removesuffix("_inference.json"),
        "nodes": graph.n,
        "devices": " + ".join(f"{k.count} {k.name}" for k in case.devices.kinds if k.count),
        "expected": case.expected.get("dp_optimum"),
        "ref_dp_s": "/".join(f"{s:g}" for s in ref_seconds) if ref_seconds else None,
        "one_device_acc": math.fsum(acc),
    }


def dp_measure(case: Case) -> dict[str, Any]:
    try:
        (plan, stats), times = timed(lambda: solve_dp_with_stats(case.graph, case.devices), case.repeats)
    except DPTooLarge as exc:
        case.shared["dp_plan"] = None
        return {"dp_error": str(exc)}
    check_plan(case.graph, case.devices, plan)
    case.shared["dp_plan"] = plan
    expected = case.expected.get("dp_optimum")
    ok = expected is None or math.isclose(plan.value, expected, rel_tol=1e-6)
    return {
        "coarse_nodes": stats.coarse_nodes,
        "ideals": stats.ideals,
        "pairs": stats.pairs,
        "dp": plan.value,
        "dp_ok": "yes" if ok else "NO",
        "dp_s": statistics.median(times),
        "dp_s_min": min(times),
        "dp_stages": plan.num_stages,
    }


def dp_plan(case: Case) -> Plan | None:
    """The DP plan, from dp_measure when it ran, else solved once here (None when too large)."""
    if "dp_plan" not in case.shared:
        try:
            case.shared["dp_plan"] = solve_dp_with_stats(case.graph, case.devices)[0]
        except DPTooLarge:
            case.shared["dp_plan"] = None
    return case.shared["dp_plan"]


def _status(plan: Plan) -> str:
    """The solver's end state from the IP's note ("optimal in 3.2 s"), and whether the start was kept."""
    status = plan.notes[0].split(" in ")[0] if plan.notes else "?"
    return status + (" (start kept)" if "warm start kept" in plan.notes else "")


def _ip(case: Case, *, contiguous: bool, prefix: str) -> tuple[Plan | None, dict[str, Any]]:
    """One integer program run, warm-started from the DP plan; (plan, row values)."""
    from onnxsplit.solve.ip import solve_ip  # needs python-mip: only imported when an IP is asked for

    warm = dp_plan(case)
    start = time.perf_counter()
    try:
        plan = solve_ip(case.graph, case.devices, contiguous=contiguous, time_limit=case.ip_time_limit,
                        warm_start=warm)
    except (OnnxSplitError, ImportError) as exc:
        return None, {f"{prefix}_error": str(exc)}
    seconds = time.perf_counter() - start
    check_plan(case.graph, case.devices, plan, contiguous=contiguous or None)
    row: dict[str, Any] = {prefix: plan.value, f"{prefix}_bound": plan.lower_bound, f"{prefix}_s": seconds,
                           f"{prefix}_status": _status(plan)}
    if warm is None:
        row[f"{prefix}_status"] += " (no DP start)"
    return plan, row


def ip_measure(case: Case) -> dict[str, Any]:
    """The contiguous ideal-chain IP: with the DP's start, it must agree with the DP optimum."""
    plan, row = _ip(case, contiguous=True, prefix="ip")
    dp = dp_plan(case)
    if plan is not None and dp is not None:
        # The DP is exact over the same plans: the IP cannot beat it, and its bound cannot pass it.
        ok = plan.value >= dp.value * (1 - TOL) and plan.lower_bound <= dp.value * (1 + TOL)
        row["ip_ok"] = "yes" if ok else "NO"
    return row


def ip_noncontiguous_measure(case: Case) -> dict[str, Any]:
    """Any placement (stages need not form a pipeline order); its bound holds for every plan."""
    plan, row = _ip(case, contiguous=False, prefix="ipnc")
    if plan is not None:
        row["ipnc_gap"] = plan.gap
    return row


def _baseline(case: Case, key: str, run: Callable[[], Plan]) -> dict[str, Any]:
    try:
        plan = run()
        check_plan(case.graph, case.devices, plan)
    except OnnxSplitError as exc:
        return {f"{key}_error": str(exc)}
    return {key: plan.value}


def baselines_measure(case: Case) -> dict[str, Any]:
    from onnxsplit.solve.greedy import evaluate_expert, solve_greedy
    from onnxsplit.solve.linear import solve_linear
    from onnxsplit.solve.local import solve_local

    graph, devices = case.graph, case.devices
    row: dict[str, Any] = {}
    row.update(_baseline(case, "linear", lambda: solve_linear(graph, devices)))
    row.update(_baseline(case, "greedy", lambda: solve_greedy(graph, devices)))
    row.update(_baseline(case, "local", lambda: solve_local(graph, devices, time_limit=case.local_time_limit)))
    if case.expert is not None:
        expert = case.expert
        row.update(_baseline(case, "expert", lambda: evaluate_expert(graph, devices, expert)))
    return row


MEASURES: list[Measure] = [
    Measure(
        "reference",
        reference_measure,
        [
            Column("graph", "graph", justify="left"),
            Column("nodes", "nodes"),
            Column("devices", "devices", justify="left"),
        ],
    ),
    Measure(
        "dp",
        dp_measure,
        [
            Column("coarse_nodes", "coarse"),
            Column("ideals", "ideals"),
            Column("pairs", "pairs"),
            Column("dp", "DP optimum", "{:.6f}"),
            Column("expected", "expected", "{:.6f}"),
            Column("dp_ok", "match"),
            Column("dp_s", "DP s (median)", "{:.4f}"),
            Column("dp_s_min", "DP s (min)", "{:.4f}"),
            Column("ref_dp_s", "ref C++ DP s"),
        ],
    ),
    Measure(
        "ip",
        ip_measure,
        [
            Column("ip", "IP", "{:.6f}"),
            Column("ip_bound", "IP bound", "{:.6f}"),
            Column("ip_ok", "IP=DP"),
            Column("ip_s", "IP s", "{:.1f}"),
            Column("ip_status", "IP status", justify="left"),
        ],
    ),
    Measure(
        "ip_noncontiguous",
        ip_noncontiguous_measure,
        [
            Column("ipnc", "IP-nc", "{:.6f}"),
            Column("ipnc_bound", "IP-nc bound", "{:.6f}"),
            Column("ipnc_gap", "IP-nc gap", "{:.2%}"),
            Column("ipnc_s", "IP-nc s", "{:.1f}"),
            Column("ipnc_status", "IP-nc status", justify="left"),
        ],
    ),
    Measure(
        "baselines",
        baselines_measure,
        [
            Column("linear", "linear", "{:.4f}"),
            Column("greedy", "greedy", "{:.4f}"),
            Column("local", "local (nc)", "{:.4f}"),
            Column("expert", "expert", "{:.4f}"),
        ],
    ),
]
# Measures --no-ip leaves out.
IP_MEASURES = ("ip", "ip_noncontiguous")


def warm_up() -> None:
    """Pay numpy's and the solver's first-call costs before anything is timed."""
    graph = CostGraph(
        names=("a", "b", "c"),
        compute={"acc": (1.0, 2.0, 1.0), "cpu": (5.0, 5.0, 5.0)},
        memory=(1.0, 1.0, 1.0),
        tensors=(Tensor("a", 0, (1, 2), cost=0.5), Tensor("b", 1, (2,), cost=0.5)),
    )
    devices = Devices((DeviceKind("acc", 2, memory=10.0), DeviceKind("cpu", 1, communicates=False)))
    solve_dp_with_stats(graph, devices)


def print_table(rows: list[dict[str, Any]], columns: list[Column],
                title: str = "Contiguous throughput solvers on the reference graphs") -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency, but keep the script usable without it
        cells = [[c.header for c in columns]] + [[c.show(r) for c in columns] for r in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        for line in cells:
            print("  ".join(s.ljust(w) if c.justify == "left" else s.rjust(w) for s, w, c in zip(line, widths, columns)))
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c.header, justify=c.justify, no_wrap=True)
    for r in rows:
        table.add_row(*(c.show(r) for c in columns))
    # Piped output would be cut to 80 columns; size it to the table instead.
    needed = sum(max([len(c.header)] + [len(c.show(r)) for r in rows]) + 3 for c in columns) + 1
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(needed, console.width))
    console.print(table)


# ----------------------------------------------------------------------------- --scale

# The passes of onnxsplit.split, by the name splitting.py calls them under: (module, attribute, phase).
# Each is wrapped with a timer for one run; the solver's coarsening and stage cores are timed inside it.
SPLIT_PHASES = [
    ("onnxsplit.splitting", "load_model", "load"),
    ("onnxsplit.splitting", "concrete_types", "shapes"),
    ("onnxsplit.splitting", "graph_info", "graph info"),
    ("onnxsplit.splitting", "static_types", "shape values"),
    ("onnxsplit.splitting", "probe_sizes", "probe run"),
    ("onnxsplit.splitting", "check_runnable", "ort check"),
    ("onnxsplit.splitting", "node_times", "node times"),
    ("onnxsplit.splitting", "build_costgraph", "cost graph"),
    ("onnxsplit.splitting", "solve", "solve"),
    ("onnxsplit.splitting", "place_solved", "cut"),
    ("onnxsplit.splitting", "write_split", "write"),
]
SOLVE_PHASES = [
    ("onnxsplit.solve.dp", "coarsen", "coarsen"),
    ("onnxsplit.solve.relax", "coarsen", "coarsen"),
    ("onnxsplit.solve.relax", "ancestor_descendant_compute", "cores"),
]

SCALE_COLUMNS = [
    Column("model", "model", justify="left"),
    Column("nodes", "nodes"),
    Column("costs", "costs"),
    *(Column(phase, f"{phase} s", "{:.1f}") for phase in
      ("load", "shapes", "shape values", "probe run", "graph info", "ort check", "node times", "cost graph",
       "coarsen", "cores", "DP", "cut", "write", "other")),
    Column("split_s", "split s", "{:.1f}"),
    Column("peak_mb", "peak MB", "{:.0f}"),
    Column("solver", "solver", justify="left"),
    Column("stages", "stages"),
    Column("value", "objective", "{:.6g}"),
    Column("lower_bound", "lower bound", "{:.6g}"),
    Column("gap", "gap", "{:.3%}"),
]


def _timed_phases(times: dict[str, float]) -> list[tuple[Any, str, Any]]:
    """Wrap every phase function with a timer adding into ``times``; returns what to restore."""
    import importlib

    saved = []
    for module_name, attr, phase in SPLIT_PHASES + SOLVE_PHASES:
        module = importlib.import_module(module_name)
        original = getattr(module, attr)

        def wrapper(*args, _fn=original, _phase=phase, **kwargs):
            start = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                times[_phase] = times.get(_phase, 0.0) + time.perf_counter() - start

        saved.append((module, attr, original))
        setattr(module, attr, wrapper)
    return saved


def scale_split(model_path: Path, *, devices: int, input_shapes: dict[str, tuple[int, ...]], costs: str,
                time_limit: float) -> tuple[dict[str, Any], list[str]]:
    """One timed ``onnxsplit.split`` of a saved model, in this process: (row, notes to print under the table)."""
    import resource

    from onnxsplit.splitting import split

    times: dict[str, float] = {}
    saved = _timed_phases(times)
    row: dict[str, Any] = {"costs": costs}
    with tempfile.TemporaryDirectory(prefix="onnxsplit-scale-") as tmp:
        # A fresh profile cache: a profile left by an earlier run would hide the measuring time.
        os.environ["ONNXSPLIT_CACHE"] = str(Path(tmp) / "cache")
        try:
            start = time.perf_counter()
            result = split(model_path, Path(tmp) / "out", devices=devices, input_shapes=input_shapes, costs=costs,
                           time_limit=time_limit)
            row["split_s"] = time.perf_counter() - start
        finally:
            for module, attr, original in saved:
                setattr(module, attr, original)
    row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    top = [phase for _, _, phase in SPLIT_PHASES]
    row.update({phase: times.get(phase, 0.0) for phase in top})
    inner = times.get("coarsen", 0.0) + times.get("cores", 0.0)
    row.update(coarsen=times.get("coarsen", 0.0), cores=times.get("cores", 0.0),
               DP=max(0.0, row.pop("solve") - inner))
    row["other"] = max(0.0, row["split_s"] - sum(times.get(phase, 0.0) for phase in top))
    plan, graph = result.plan, result.graph
    row.update(nodes=graph.n, solver=plan.solver, stages=plan.num_stages, value=plan.value,
               lower_bound=plan.lower_bound, gap=plan.gap)
    notes = [f"plan note: {n}" for n in plan.notes] + [f"warning: {w}" for w in result.warnings]
    return row, notes


def scale_row(layers: int, *, devices: int, input_shapes: dict[str, tuple[int, ...]], costs: str,
              time_limit: float) -> tuple[dict[str, Any], list[str]]:
    """Generate a deep transformer and split it in a fresh process, so that its peak memory is its own."""
    import subprocess

    sys.path.insert(0, str(ROOT / "tools"))
    import make_models

    with tempfile.TemporaryDirectory(prefix="onnxsplit-scale-") as tmp:
        path = Path(tmp) / "deep_transformer.onnx"
        make_models.save(make_models.make_deep_transformer(layers), path)
        out = Path(tmp) / "row.json"
        shape = ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in input_shapes.items())
        cmd = [sys.executable, str(Path(__file__).resolve()), "--scale-one", str(path), "--scale-devices",
               str(devices), "--scale-shape", shape, "--scale-costs", costs, "--scale-time-limit",
               str(time_limit), "--json", str(out)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return {"model": f"deep_transformer({layers})", "costs": costs,
                    "split_error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}, []
        row, notes = json.loads(out.read_text())
    row["model"] = f"deep_transformer({layers})"
    return row, notes


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.partition(":")
    return name, tuple(int(d) for d in dims.split("x"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="folder with the reference graphs")
    parser.add_argument("--repeats", type=int, default=5, help="runs per solver and graph (median reported)")
    parser.add_argument("--graphs", nargs="*", default=[], help="substrings selecting graphs")
    parser.add_argument("--measures", nargs="*", default=[], help="names of measures to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--ip-time-limit", type=float, default=60.0,
                        help="seconds for each integer program run (contiguous and non-contiguous)")
    parser.add_argument("--no-ip", action="store_true", help="skip the integer programs (minutes over all graphs)")
    parser.add_argument("--local-time-limit", type=float, default=10.0, help="seconds for the local search")
    scale = parser.add_argument_group("--scale: end-to-end splits of generated deep transformers, timed per phase")
    scale.add_argument("--scale", action="store_true", help="run the scale table instead of the reference graphs")
    scale.add_argument("--layers", type=int, nargs="+", default=[56, 160, 535],
                       help="transformer layers, one row each (56, 160, 535: about 10k, 30k and 100k nodes)")
    scale.add_argument("--scale-devices", type=int, default=8)
    scale.add_argument("--scale-shape", default="input_ids:4x64", help="NAME:DxD input shape")
    scale.add_argument("--scale-costs", choices=("measure", "estimate"), default="estimate",
                       help="node costs: estimated, or measured with onnxruntime (what `split` does by default)")
    scale.add_argument("--scale-time-limit", type=float, default=60.0, help="the split's solver time limit")
    scale.add_argument("--scale-one", type=Path, help=argparse.SUPPRESS)  # one row, in a child process
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.scale_one is not None:
        name, dims = _shape(args.scale_shape)
        result = scale_split(args.scale_one, devices=args.scale_devices, input_shapes={name: dims},
                             costs=args.scale_costs, time_limit=args.scale_time_limit)
        args.json.write_text(json.dumps(result, default=str))
        return 0
    if args.scale:
        name, dims = _shape(args.scale_shape)
        rows = []
        for layers in args.layers:
            row, notes = scale_row(layers, devices=args.scale_devices, input_shapes={name: dims},
                                   costs=args.scale_costs, time_limit=args.scale_time_limit)
            rows.append(row)
            for note in notes:
                print(f"{row['model']}: {note}")
            for key, value in row.items():
                if key.endswith("_error"):
                    print(f"{row['model']}: {key}: {value}", file=sys.stderr)
        print_table(rows, SCALE_COLUMNS,
                    title=f"onnxsplit.split at {args.scale_devices} devices on generated deep transformers "
                          f"(seconds per phase; peak MB: the split's process, ru_maxrss)")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2, default=str))
        return 0

    doc = json.loads((args.reference / "expected.json").read_text())
    expected = doc["graphs"]
    # expected.json maps each expert split file to the graph it splits.
    experts = {graph: args.reference / split for split, graph in doc.get("expert_splits", {}).items()}
    measures = [m for m in MEASURES if (not args.measures or m.name in args.measures or m.name == "reference")
                and not (args.no_ip and m.name in IP_MEASURES)]
    warm_up()
    rows = []
    for name in sorted(expected):
        if args.graphs and not any(g in name for g in args.graphs):
            continue
        graph, devices = load_paper(args.reference / name)
        case = Case(name, graph, devices, expected[name], args.repeats, ip_time_limit=args.ip_time_limit,
                    local_time_limit=args.local_time_limit, expert=experts.get(name))
        row: dict[str, Any] = {}
        for m in measures:
            row.update(m.run(case))
        rows.append(row)
    print_table(rows, [c for m in measures for c in m.columns])
    for row in rows:
        for key, value in row.items():
            if key.endswith("_error"):
                print(f"{row['graph']}: {key}: {value}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
