"""Benchmark link-aware placement: devices joined by fast pairs among slower default links.

Run from the repository root:

    python benchmarks/links_bench.py [--time-limit 60] [--graphs bert gnmt] [--speedup 8]

Two set-ups per reference graph (the paper's accelerators, whose tensors
carry their sizes), with the default link at the bandwidth the graph's own
costs imply and ``--speedup`` times that on the fast pairs:

* ``pairs``: accelerators joined two by two, (0, 1), (2, 3), ...;
* ``islands``: the accelerators in two halves, every pair inside a half fast.

Per row: the link-blind DP's plan (its devices as the DP numbers them)
scored with the links, the link-aware plan's value, its proven lower bound
and gap, seconds, and the devices in pipeline order.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from dataclasses import replace
from pathlib import Path

from onnxsplit.devices import Devices, Link
from onnxsplit.paperformat import load_paper
from onnxsplit.solve.dp import solve_dp
from onnxsplit.solve.plan import check_plan, make_plan
from onnxsplit.solve.select import solve

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference-graphs"
GRAPHS = ["layer_bert24_inference", "layer_gnmt_inference", "layer_resnet50_inference", "op_bert_l-3_inference",
          "op_bert_l-6_inference", "op_resnet50_inference"]


def linked(devices: Devices, graph, layout: str, speedup: float) -> Devices:
    """The graph's devices with its implied default link and fast pairs among the first kind's devices."""
    rates = [t.nbytes / (t.cost * 1e-3) for t in graph.tensors if t.cost > 0 and t.nbytes > 0]
    bandwidth = statistics.median(rates)
    accs = devices.kinds[0].count
    if layout == "pairs":
        fast = [(a, a + 1) for a in range(0, accs - 1, 2)]
    else:
        half = accs // 2
        fast = [(a, b) for a, b in itertools.combinations(range(accs), 2) if (a < half) == (b < half)]
    link = Link(bandwidth, 0.0)
    return replace(devices, link=link, pairs=tuple((p, Link(bandwidth * speedup, 0.0)) for p in fast))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--graphs", nargs="*", default=None, help="substrings of graph names to run")
    parser.add_argument("--speedup", type=float, default=8.0, help="fast pairs' bandwidth over the default's")
    args = parser.parse_args()
    names = [g for g in GRAPHS if not args.graphs or any(s in g for s in args.graphs)]
    header = f"{'graph':26} {'layout':8} {'blind DP':>10} {'linked':>10} {'bound':>10} {'gap':>7} {'s':>7}  devices"
    print(header)
    print("-" * len(header))
    for name in names:
        graph, devices = load_paper(REFERENCE / f"{name}.json")
        for layout in ("pairs", "islands"):
            with_links = linked(devices, graph, layout, args.speedup)
            blind = solve_dp(graph, devices, time_limit=args.time_limit)
            blind_value = make_plan(graph, with_links, blind.stage_of, blind.stage_device, solver="dp").value
            began = time.perf_counter()
            plan = solve(graph, with_links, solver="auto", time_limit=args.time_limit)
            seconds = time.perf_counter() - began
            check_plan(graph, with_links, plan)
            kinds = with_links.expanded()
            order = " ".join(f"{kinds[d].name}:{d}" for d in plan.stage_device)
            print(f"{name:26} {layout:8} {blind_value:10.4f} {plan.value:10.4f} {plan.lower_bound:10.4f} "
                  f"{plan.gap:7.2%} {seconds:7.2f}  {order}", flush=True)


if __name__ == "__main__":
    main()
