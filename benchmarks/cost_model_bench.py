"""Predicted vs measured time of every stage, per model, at 2 and 4 stages.

    python benchmarks/cost_model_bench.py [--stages 2 4] [--runs 30]

Each model is split with measured costs (onnxruntime profile, one thread);
each stage model is then timed alone with one thread. The error is
(predicted - measured) / measured of the stage's compute time. The original
model is timed alongside the stages; "speed now" is its latency over the sum
of the predictions, and the calibrated error scales predictions by it (this
machine's speed drifts by tens of percent over minutes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

from onnxsplit.splitting import split
from onnxsplit.stagetime import time_stages

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = [
    ("transformer", ROOT / "models" / "transformer.onnx", {"input_ids": (8, 128)}),
    ("branchy_cnn", ROOT / "models" / "branchy_cnn.onnx", {"image": (16, 3, 32, 32)}),
    ("control_flow", ROOT / "models" / "control_flow.onnx", {"x": (1024, 16)}),
    ("fp16", ROOT / "models" / "fp16.onnx", {"x": (1024, 32)}),
    ("local_function", ROOT / "models" / "local_function.onnx", {"x": (1024, 32)}),
    ("external_data", ROOT / "models" / "external_data.onnx", {"x": (1024, 64)}),
    ("light_resnet50", LIGHT / "light_resnet50.onnx", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    table = Table(title=f"cost model: predicted vs measured stage compute (load {os.getloadavg()[0]:.1f})")
    for col in ("model", "devices", "stages", "predicted ms", "measured ms", "error", "speed now", "calibrated error",
                "worst |cal. error|"):
        table.add_column(col, justify="left" if col == "model" else "right")
    worst_all = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, shapes in MODELS:
            for devices in args.stages:
                out = Path(tmp) / f"{name}-{devices}"
                result = split(path, out, devices=devices, input_shapes=shapes)
                timings = time_stages(out, runs=args.runs)
                worst = max(abs(t.calibrated_error) for t in timings)
                worst_all = max(worst_all, worst)
                table.add_row(name, str(devices), str(len(result.manifest.stages)),
                              " / ".join(f"{t.predicted_ms:.3f}" for t in timings),
                              " / ".join(f"{t.measured_ms:.3f}" for t in timings),
                              " / ".join(f"{t.error:+.0%}" for t in timings), f"{timings[0].speed:.2f}",
                              " / ".join(f"{t.calibrated_error:+.0%}" for t in timings), f"{worst:.0%}")
    Console(width=200).print(table)
    print(f"worst calibrated stage error over all rows: {worst_all:.0%}")


if __name__ == "__main__":
    main()
