"""A model with just over 2 GB of external weights splits and validates, in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

import make_models
from onnxsplit.validation import validate

PEAK = ("import resource, sys; from onnxsplit.cli.main import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


@pytest.mark.slow
def test_split_over_2gb(tmp_path):
    src = tmp_path / "big" / "large.onnx"
    src.parent.mkdir()
    make_models.make_large_model(str(src), total_bytes=2_200_000_000)
    model_bytes = sum(p.stat().st_size for p in src.parent.iterdir())
    assert model_bytes > 2**31

    out = tmp_path / "out"
    # Split in a child process that reports its own peak resident memory.
    def peak_of_split(outdir, *flags):
        proc = subprocess.run([sys.executable, "-c", PEAK, "split", str(src), "--devices", "3", "-o", str(outdir),
                               "--input-shape", "x:4x8292", *flags], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stderr.strip().splitlines()[-1]) * 1024

    # The rewrite streams weights stage by stage: on its own it never holds them in memory.
    assert peak_of_split(tmp_path / "estimated", "--costs", "estimate") < 0.5 * model_bytes
    # Measuring costs loads the model into onnxruntime once: about the model's size, not twice it.
    peak = peak_of_split(out)
    assert peak < 1.5 * model_bytes, f"split peaked at {peak / 2**20:.0f} MiB"

    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["stages"]) >= 2
    for stage in manifest["stages"]:
        assert stage["external_data"] == stage["file"] + ".data"
        onnx.checker.check_model(str(out / stage["file"]), full_check=True)
    assert sum((out / s["external_data"]).stat().st_size for s in manifest["stages"]) >= 2_200_000_000
    report = validate(out)
    assert report.passed, report.as_dict()
