"""Weight of the HTML plan report and the time to write it, for the bundled transformer and a 10,000-node model.

    python benchmarks/report_bench.py [--layers 56] [--bench-seconds 1]

Each model is split in four, benchmarked briefly with ``onnxsplit bench
--json``, and reported without and with that bench file: the bundled
branchy CNN (drawn operator by operator; measured costs, image:8x3x32x32),
the bundled transformer (measured costs, input_ids:4x32) and a generated
deep transformer of 56 layers, about 10,500 nodes (estimated costs,
input_ids:2x16). "seconds" is one ``write_report`` call (reading the split,
the profile cache hit, Graphviz layout, charts, writing the page), with the
report's libraries already imported. "drawn" counts the operator graph's
boxes: one per operator for a small model, one per (stage, name scope)
group in the condensed view of a large one; and its hand-off edges.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

from onnxsplit.export.report import write_report

ROOT = Path(__file__).resolve().parents[1]

# Graphviz writes each drawn node and edge as an SVG group; the report classes operators, groups and hand-offs.
OPERATOR = re.compile(r"<g\b[^>]*\bclass=\"node op\b")
GROUP = re.compile(r"<g\b[^>]*\bclass=\"node group\b")
HANDOFF = re.compile(r"<g\b[^>]*\bclass=\"edge handoff\b")


def onnxsplit(*argv: object) -> str:
    done = subprocess.run([sys.executable, "-m", "onnxsplit", *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    if done.returncode != 0:
        sys.exit(f"onnxsplit {' '.join(map(str, argv))} failed:\n{done.stderr.strip()}")
    return done.stdout


def measure(name: str, model: Path, shape: str, costs: str, work: Path, bench_seconds: float) -> list[tuple]:
    """Rows (model, nodes, bench, page bytes, seconds, operators, groups and hand-off edges drawn) for one model."""
    out = work / name
    onnxsplit("split", model, "--devices", 4, "--input-shape", shape, "--costs", costs, "-o", out)
    bench = work / f"{name}-bench.json"
    bench.write_text(onnxsplit("bench", out, "--seconds", bench_seconds, "--rounds", 1, "--json"))
    nodes = len(onnx.load(model, load_external_data=False).graph.node)
    rows = []
    for with_bench in (False, True):
        html = work / f"{name}{'-bench' if with_bench else ''}.html"
        start = time.perf_counter()
        write_report(out, html, bench=bench if with_bench else None, costs=costs)
        seconds = time.perf_counter() - start
        page = html.read_text(encoding="utf-8")
        rows.append((name, nodes, "yes" if with_bench else "no", html.stat().st_size, seconds,
                     len(OPERATOR.findall(page)), len(GROUP.findall(page)), len(HANDOFF.findall(page))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=56, help="layers of the generated deep transformer")
    parser.add_argument("--bench-seconds", type=float, default=1.0, help="length of each bench measurement")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "tools"))
    import make_models

    # Import what the report draws with once, so the first row does not pay for it.
    import graphviz  # noqa: F401
    import matplotlib.pyplot  # noqa: F401

    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxsplit-report-bench-") as tmp:
        work = Path(tmp)
        rows += measure("branchy_cnn", ROOT / "models" / "branchy_cnn.onnx", "image:8x3x32x32", "measure", work,
                        args.bench_seconds)
        rows += measure("transformer", ROOT / "models" / "transformer.onnx", "input_ids:4x32", "measure", work,
                        args.bench_seconds)
        deep = work / "deep_transformer.onnx"
        make_models.save(make_models.make_deep_transformer(args.layers), deep)
        rows += measure(f"deep_transformer_{args.layers}", deep, "input_ids:2x16", "estimate", work,
                        args.bench_seconds)

    table = Table(title="onnxsplit report: page weight and time to write (4 devices)")
    columns = ("model", "nodes", "--bench", "page", "seconds", "operators drawn", "groups drawn", "hand-offs drawn")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, nodes, bench, size, seconds, operators, groups, handoffs in rows:
        table.add_row(name, f"{nodes:,}", bench, f"{size / 1e3:,.0f} kB", f"{seconds:.2f}", f"{operators:,}",
                      f"{groups:,}", f"{handoffs:,}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
