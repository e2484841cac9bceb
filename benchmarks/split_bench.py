"""Split time and peak memory of `onnxsplit split`, per model.

    python benchmarks/split_bench.py [--devices 4] [--large]

Each split runs in its own process, which reports its own peak resident
memory (ru_maxrss), with a cold profile cache (the time includes profiling). --large adds a generated model with 2.2 GB of external weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = [
    ("transformer", ROOT / "models" / "transformer.onnx", ["input_ids:4x32"]),
    ("branchy_cnn", ROOT / "models" / "branchy_cnn.onnx", ["image:8x3x32x32"]),
    ("control_flow", ROOT / "models" / "control_flow.onnx", ["x:8x16"]),
    ("fp16", ROOT / "models" / "fp16.onnx", []),
    ("local_function", ROOT / "models" / "local_function.onnx", []),
    ("external_data", ROOT / "models" / "external_data.onnx", []),
    ("light_resnet50", LIGHT / "light_resnet50.onnx", []),
    ("light_squeezenet", LIGHT / "light_squeezenet.onnx", []),
    ("light_inception_v1", LIGHT / "light_inception_v1.onnx", []),
]


# Runs the CLI in a fresh interpreter and reports that process's own peak RSS (KiB) as the last line.
PEAK = ("import resource, sys; from onnxsplit.cli.main import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


def measure(path: Path, shapes: list[str], devices: int, work: Path) -> tuple[float, float]:
    """(seconds, peak MiB) of one split in a fresh process."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", PEAK, "split", str(path), "--devices", str(devices), "-o", str(out)]
    for s in shapes:
        cmd += ["--input-shape", s]
    # A cold profile cache: the split time includes measuring every node.
    env = {**os.environ, "ONNXSPLIT_CACHE": str(work / f"cache-{path.stem}")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    return seconds, int(proc.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--large", action="store_true", help="also split a generated 2.2 GB model")
    args = parser.parse_args()
    table = Table(title=f"onnxsplit split --devices {args.devices}")
    for col in ("model", "model MB", "split s", "peak RSS MiB"):
        table.add_column(col, justify="right" if col != "model" else "left")
    rows = list(MODELS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.large:
            sys.path.insert(0, str(ROOT / "tools"))
            import make_models

            big = work / "large" / "large.onnx"
            big.parent.mkdir()
            make_models.make_large_model(str(big), total_bytes=2_200_000_000)
            rows.append(("large (external)", big, ["x:4x8292"]))
        sizes = {name: sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) for name, path, _ in rows}
        for name, path, shapes in rows:
            seconds, peak = measure(path, shapes, args.devices, work)
            table.add_row(name, f"{sizes[name] / 1e6:.1f}", f"{seconds:.2f}", f"{peak:.0f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
