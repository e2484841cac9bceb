"""How fast the command line starts, and what it imports.

Run from the repository root:

    python benchmarks/startup_bench.py [--runs 10] [--top 12]

Each command runs ``--runs`` times in a fresh interpreter (a subprocess, as a
user's shell or a script would start it, stdout and stderr being pipes); the
tables show the median and best wall seconds, how many modules were imported,
and which of the heavy ones (onnx, onnxruntime, mip, numpy, rich).

1. A few commands (``--help``, ``--version``, ``solve`` on a paper graph).
2. ``onnxsplit solve G --solver dp`` for every cost graph in
   tests/data/reference-graphs/, next to the seconds the same load and solve
   take in this (already started) process: the rest is the interpreter and
   its imports. The goal is under 0.3 s wall for every graph, with neither
   onnx, onnxruntime nor python-mip imported.
3. The import costs of ``solve --solver dp`` (``python -X importtime``,
   best of ``--runs``): milliseconds per package (numpy, rich, the standard
   library's modules, onnxsplit), and per onnxsplit module (its own code).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference-graphs"
GRAPH = "tests/data/reference-graphs/layer_bert24_inference.json"
COMMANDS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "solve (paper, auto)": ["solve", GRAPH, "--format", "paper"],
    "solve (paper, dp)": ["solve", GRAPH, "--format", "paper", "--solver", "dp"],
    "solve (paper, dp, --json)": ["solve", GRAPH, "--format", "paper", "--solver", "dp", "--json"],
    "split --help": ["split", "--help"],
}
HEAVY = ("onnx", "onnxruntime", "mip", "numpy", "rich")

# Runs the command line in-process, then reports the modules it imported on stderr's last line.
_PROBE = """
import json, sys
from onnxsplit.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR"):  # measure what a script sees: no spinner on a pipe
        env.pop(name, None)
    return env


def _once(argv: list[str]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=ROOT, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    line = [x for x in done.stderr.splitlines() if x.startswith("MODULES ")][-1]
    return seconds, json.loads(line.removeprefix("MODULES "))


def _once_bare(code: str = "pass") -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())
    return time.perf_counter() - start


def _timed(argv: list[str], runs: int) -> tuple[float, float, list[str]]:
    """Median and best wall seconds of ``argv`` over ``runs`` fresh interpreters, and the modules of the last."""
    times, modules = [], []
    for _ in range(runs):
        seconds, modules = _once(argv)
        times.append(seconds)
    return statistics.median(times), min(times), modules


def _heavy(modules: list[str]) -> str:
    return ", ".join(sorted({m.split(".")[0] for m in modules} & set(HEAVY))) or "-"


def _reference_graphs() -> list[Path]:
    return sorted(p for p in REFERENCE.glob("*.json") if not p.name.startswith("expert_") and p.name != "expected.json")


def _in_process(graph: Path) -> tuple[int, float]:
    """Nodes of ``graph`` and the best of three in-process load + DP solve, in seconds (imports already done)."""
    from onnxsplit.costgraph_io import load_costgraph
    from onnxsplit.solve.select import solve

    best, n = float("inf"), 0
    for _ in range(3):
        start = time.perf_counter()
        costgraph, devices = load_costgraph(graph)
        solve(costgraph, devices, solver="dp")
        best = min(best, time.perf_counter() - start)
        n = costgraph.n
    return n, best


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def _import_costs(argv: list[str], runs: int) -> tuple[dict[str, float], dict[str, float]]:
    """From ``python -X importtime``, best of ``runs``: ms per top-level package (its modules' own times summed), and
    ms of each onnxsplit module's own code (without what it imports)."""
    packages: dict[str, float] = {}
    ours: dict[str, float] = {}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", _PROBE, *argv], cwd=ROOT, env=_env(),
                              capture_output=True, text=True)
        run: dict[str, float] = {}
        for line in done.stderr.splitlines():
            m = _IMPORT_LINE.match(line)
            if m is None:
                continue
            name, own = m[4], int(m[1]) / 1000
            top = name.split(".")[0]
            run[top] = run.get(top, 0.0) + own
            if top == "onnxsplit":
                ours[name] = min(ours.get(name, own), own)
        for top, ms in run.items():
            packages[top] = min(packages.get(top, ms), ms)
    return packages, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (default 10)")
    parser.add_argument("--top", type=int, default=12, help="import costs to list (default 12)")
    args = parser.parse_args()
    print(f"python itself: {statistics.median(_once_bare() for _ in range(args.runs)):.3f} s median, "
          f"with numpy {statistics.median(_once_bare('import numpy') for _ in range(args.runs)):.3f} s "
          f"({sys.executable}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    print()
    print(f"{'command':<28} {'median s':>9} {'best s':>7} {'modules':>8}  heavy modules imported")
    for name, argv in COMMANDS.items():
        median, best, modules = _timed(argv, args.runs)
        print(f"{name:<28} {median:>9.3f} {best:>7.3f} {len(modules):>8}  {_heavy(modules)}")

    print()
    print("onnxsplit solve G --solver dp, every reference graph (goal: under 0.3 s)")
    print(f"{'graph':<32} {'nodes':>6} {'median s':>9} {'best s':>7} {'solve s':>8}  heavy modules imported")
    for graph in _reference_graphs():
        median, best, modules = _timed(["solve", str(graph.relative_to(ROOT)), "--solver", "dp"], args.runs)
        n, inside = _in_process(graph)
        print(f"{graph.stem:<32} {n:>6} {median:>9.3f} {best:>7.3f} {inside:>8.3f}  {_heavy(modules)}")
    print("(solve s: loading the graph and the DP in an already started process, best of 3)")

    print()
    packages, ours = _import_costs(["solve", GRAPH, "--solver", "dp"], args.runs)
    by_package = sorted(((ms, name) for name, ms in packages.items()), reverse=True)
    by_module = sorted(((ms, name) for name, ms in ours.items()), reverse=True)
    print(f"import costs of solve {Path(GRAPH).name} --solver dp (best of {args.runs} runs; all imports: "
          f"{sum(packages.values()):.1f} ms)")
    print(f"{'package':<24} {'ms':>7}    {'onnxsplit module (own code)':<36} {'ms':>7}")
    for i in range(args.top):
        left = f"{by_package[i][1]:<24} {by_package[i][0]:>7.1f}" if i < len(by_package) else " " * 32
        right = f"{by_module[i][1]:<36} {by_module[i][0]:>7.1f}" if i < len(by_module) else ""
        print(f"{left}    {right}".rstrip())

if __name__ == "__main__":
    main()
