"""How fast the command line starts, and what it imports.

Run from the repository root:

    python benchmarks/startup_bench.py [--runs 10]

Each command runs ``--runs`` times in a fresh interpreter (a subprocess, as a
user's shell would start it); the table shows the median and best wall
seconds, how many modules were imported, and which of the heavy ones
(onnx, onnxruntime, mip, numpy, rich). The goal: ``--help`` and ``solve`` on a
paper graph under 0.3 s, with neither onnx nor onnxruntime imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRAPH = "tests/data/reference-graphs/layer_bert24_inference.json"
COMMANDS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "solve (paper, auto)": ["solve", GRAPH, "--format", "paper"],
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


def _once(argv: list[str]) -> tuple[float, list[str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    line = [x for x in done.stderr.splitlines() if x.startswith("MODULES ")][-1]
    return seconds, json.loads(line.removeprefix("MODULES "))


def _once_bare() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (default 10)")
    args = parser.parse_args()
    baseline = statistics.median(_once_bare() for _ in range(args.runs))
    print(f"python itself: {baseline:.3f} s median ({sys.executable})")
    print(f"{'command':<28} {'median s':>9} {'best s':>7} {'modules':>8}  heavy modules imported")
    for name, argv in COMMANDS.items():
        times, modules = [], []
        for _ in range(args.runs):
            seconds, modules = _once(argv)
            times.append(seconds)
        heavy = sorted({m.split(".")[0] for m in modules} & set(HEAVY))
        print(f"{name:<28} {statistics.median(times):>9.3f} {min(times):>7.3f} {len(modules):>8}  "
              f"{', '.join(heavy) or '-'}")


if __name__ == "__main__":
    main()
