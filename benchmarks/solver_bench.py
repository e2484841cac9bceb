"""Benchmark the placement solvers on the reference cost graphs.

Run from the repository root:

    python benchmarks/solver_bench.py [--repeats 5] [--graphs gnmt bert] [--json out.json]

Prints one row per reference graph. Each solver contributes a *measure*: a
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
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.paperformat import load_paper
from onnxsplit.solve.dp import DPTooLarge, solve_dp_with_stats
from onnxsplit.solve.plan import check_plan

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference-graphs"


@dataclass(frozen=True)
class Case:
    """One reference graph with what expected.json says about it."""

    name: str
    graph: CostGraph
    devices: Devices
    expected: dict[str, Any]
    repeats: int


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
        return {"dp_error": str(exc)}
    check_plan(case.graph, case.devices, plan)
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
]


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


def print_table(rows: list[dict[str, Any]], columns: list[Column]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency, but keep the script usable without it
        cells = [[c.header for c in columns]] + [[c.show(r) for c in columns] for r in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        for line in cells:
            print("  ".join(s.ljust(w) if c.justify == "left" else s.rjust(w) for s, w, c in zip(line, widths, columns)))
        return
    table = Table(title="Contiguous throughput solvers on the reference graphs")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="folder with the reference graphs")
    parser.add_argument("--repeats", type=int, default=5, help="runs per solver and graph (median reported)")
    parser.add_argument("--graphs", nargs="*", default=[], help="substrings selecting graphs")
    parser.add_argument("--measures", nargs="*", default=[], help="names of measures to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    expected = json.loads((args.reference / "expected.json").read_text())["graphs"]
    measures = [m for m in MEASURES if not args.measures or m.name in args.measures or m.name == "reference"]
    warm_up()
    rows = []
    for name in sorted(expected):
        if args.graphs and not any(g in name for g in args.graphs):
            continue
        graph, devices = load_paper(args.reference / name)
        case = Case(name, graph, devices, expected[name], args.repeats)
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
