"""Benchmark the latency objective on the paper's latency cost graphs.

Run from the repository root:

    python benchmarks/latency_bench.py [--time-limit 60] [--q 1] [--graphs PATH ...] [--json out.json]

Prints one row per graph (default: the four layer graphs in
tests/data/latency-graphs/): the best heuristic's latency and seconds
(runs cut from several topological orders, list-scheduled, see
``latency_heuristic``), the throughput heuristic's plan scored for latency
for comparison, and the latency integer program's value, lower bound, gap,
the bound's source and seconds under ``--time-limit``. Times are wall
clock: a loaded machine makes them longer, never the values worse than
the heuristic.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from onnxsplit.errors import OnnxSplitError
from onnxsplit.paperformat import load_paper
from onnxsplit.solve.latency import (
    latency_heuristic,
    latency_lower_bound,
    latency_plan,
    plan_devices,
    solve_latency_ip,
)
from onnxsplit.solve.plan import check_plan
from onnxsplit.solve.select import _heuristic as throughput_heuristic

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = ROOT / "tests" / "data" / "latency-graphs"
DEFAULT = [GRAPHS / f"{name}_inference.json" for name in ("bert24", "gnmt", "inceptionv3", "resnet50")]


def measure(path: Path, *, time_limit: float, q: int) -> dict:
    graph, devices = load_paper(path)
    row: dict = {"graph": path.stem, "nodes": graph.n}
    began = time.perf_counter()
    heuristic = latency_heuristic(graph, devices)
    row["heuristic"] = heuristic.value
    row["heuristic_s"] = time.perf_counter() - began
    row["heuristic_rule"] = heuristic.notes[0] if heuristic.notes else ""
    try:
        warm = throughput_heuristic(graph, devices)
        row["throughput_plan"] = latency_plan(graph, devices, plan_devices(warm), solver="user").value
    except OnnxSplitError:
        warm = None
        row["throughput_plan"] = float("nan")
    row["simple_bound"], row["simple_source"] = latency_lower_bound(graph, devices)
    began = time.perf_counter()
    plan = solve_latency_ip(graph, devices, q=q, time_limit=time_limit, warm_start=warm)
    row["ip_s"] = time.perf_counter() - began
    check_plan(graph, devices, plan, contiguous=False)
    row["ip"] = plan.value
    row["bound"] = plan.lower_bound
    row["gap"] = plan.gap
    row["bound_source"] = next((n[len("bound from "):] for n in plan.notes if n.startswith("bound from ")), "")
    if not row["bound_source"] and any(n.startswith("optimal: equals") for n in plan.notes):
        row["bound_source"] = row["simple_source"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", nargs="*", type=Path, default=DEFAULT)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--q", type=int, default=1, help="pieces per accelerator")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    header = (f"{'graph':<26} {'nodes':>5} {'heuristic':>11} {'heur s':>7} {'tput plan':>11} "
              f"{'ip value':>11} {'bound':>11} {'gap':>7} {'ip s':>6}  bound source")
    print(f"latency, q={args.q}, time limit {args.time_limit:g} s")
    print(header)
    rows = []
    for path in args.graphs:
        row = measure(path, time_limit=args.time_limit, q=args.q)
        rows.append(row)
        print(f"{row['graph']:<26} {row['nodes']:>5} {row['heuristic']:>11.4f} {row['heuristic_s']:>7.2f} "
              f"{row['throughput_plan']:>11.4f} {row['ip']:>11.4f} {row['bound']:>11.4f} {row['gap']:>6.1%} "
              f"{row['ip_s']:>6.1f}  {row['bound_source']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
