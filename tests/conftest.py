from __future__ import annotations

import os
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
REFERENCE = ROOT / "tests" / "data" / "reference-graphs"

sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture(autouse=True, scope="session")
def _profile_cache(tmp_path_factory):
    """Profiles measured by the tests are cached for the run only, never in the user's home."""
    old = os.environ.get("ONNXSPLIT_CACHE")
    os.environ["ONNXSPLIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("ONNXSPLIT_CACHE", None)
    else:
        os.environ["ONNXSPLIT_CACHE"] = old


@pytest.fixture
def light():
    return LIGHT


def split_and_check(model_path, outdir, devices, **kwargs):
    """Split, check every stage with the full checker, validate; return (result, report)."""
    from onnxsplit.splitting import split
    from onnxsplit.validation import validate

    result = split(model_path, outdir, devices=devices, **kwargs)
    for stage in result.manifest.stages:
        onnx.checker.check_model(str(Path(outdir) / stage.file), full_check=True)
    report = validate(outdir, check_handoffs=True)
    return result, report
