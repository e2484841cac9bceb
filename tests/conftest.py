from __future__ import annotations

import os
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
REFERENCE = ROOT.parent / "shared" / "reference-graphs"

sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture
def light():
    return LIGHT


def split_and_check(model_path, outdir, devices, **kwargs):
    """Split, check every stage with the full checker, validate; return (result, report)."""
    from onnxsplit.split import split
    from onnxsplit.validate import validate

    result = split(model_path, outdir, devices=devices, **kwargs)
    for stage in result.manifest["stages"]:
        onnx.checker.check_model(str(Path(outdir) / stage["file"]), full_check=True)
    report = validate(outdir, check_handoffs=True)
    return result, report
