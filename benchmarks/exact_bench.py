"""Is the exact DP exact where users look first? One row per model and device count.

Run from the repository root:

    python benchmarks/exact_bench.py [--devices 2 4 8] [--costs measure|estimate] [--time-limit 10]
        [--only transformer] [--json out.json]

Models: the bundled ones (models/*.onnx), the onnx package's light models
(``onnx/backend/test/data/light/light_*.onnx``) and a generated YOLO-class
detector (``tools/make_models.py``'s ``make_detector``, 320x320 input). Each is
costed once (``--costs``, default measure as the CLI does; measured times are
cached) and solved for each device count on identical CPU devices with the
default link. Columns: nodes, coarse nodes after coarsening, ideals the
exact DP enumerated (within its pruning bound), the solver that produced
the plan (``dp`` when the exact DP finished; otherwise ``solve``'s fallback),
the plan's value (ms), its gap to the proven lower bound, and seconds for
the solve alone (costing excluded).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from make_models import make_detector

from onnxsplit.devices import identical_devices
from onnxsplit.solve.dp import DPTooLarge, solve_dp_with_stats
from onnxsplit.solve.select import solve
from onnxsplit.splitting import prepare

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# Shapes for inputs with symbolic dims (batch 1 unless the README fixes it).
SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "transformer": {"input_ids": (4, 32)},
    "branchy_cnn": {"image": (1, 3, 32, 32)},
    "control_flow": {"x": (1, 16)},
    "external_data": {"x": (1, 64)},
    "fp16": {"x": (1, 32)},
    "local_function": {"x": (1, 32)},
    "detector": {"images": (1, 3, 320, 320)},
}


def models(scratch: Path) -> list[tuple[str, Path]]:
    out = [(p.stem, p) for p in sorted((ROOT / "models").glob("*.onnx"))]
    out += [(p.stem, p) for p in sorted(LIGHT.glob("light_*.onnx"))]
    detector = scratch / "detector.onnx"
    onnx.save(make_detector(), detector)
    out.append(("detector", detector))
    return out


def row(name: str, graph, count: int, *, time_limit: float) -> dict[str, Any]:
    devices = identical_devices(count)
    began = time.perf_counter()
    try:
        plan, stats = solve_dp_with_stats(graph, devices, time_limit=time_limit)
        coarse, ideals = stats.coarse_nodes, stats.ideals
    except DPTooLarge as exc:
        logging.getLogger(__name__).info("%s at %d: %s", name, count, exc)
        plan = solve(graph, devices, time_limit=time_limit)
        coarse, ideals = None, None
    seconds = time.perf_counter() - began
    return {"model": name, "devices": count, "nodes": graph.n, "coarse": coarse, "ideals": ideals,
            "solver": str(plan.solver), "value": plan.value, "bound": plan.lower_bound, "gap": plan.gap,
            "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--costs", choices=("measure", "estimate"), default="measure")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per solve (default 10)")
    ap.add_argument("--only", nargs="*", default=None, help="model names to run (default all)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    header = f"{'model':<22} {'dev':>3} {'nodes':>6} {'coarse':>6} {'ideals':>8} {'solver':<11} {'value':>10} {'gap':>7} {'s':>7}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models(Path(tmp)):
            if args.only and name not in args.only:
                continue
            shapes = SHAPES.get(name, {})
            prepared = prepare(path, identical_devices(max(args.devices)), input_shapes=shapes, costs=args.costs)
            graph = prepared.graph
            for count in args.devices:
                r = row(name, graph, count, time_limit=args.time_limit)
                rows.append(r)
                show = lambda x: "-" if x is None else str(x)
                print(f"{name:<22} {count:>3} {r['nodes']:>6} {show(r['coarse']):>6} {show(r['ideals']):>8} "
                      f"{r['solver']:<11} {r['value']:>10.5f} {100 * r['gap']:>6.2f}% {r['seconds']:>7.2f}",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
