"""The cost model against reality: each stage alone runs close to its predicted time."""

from __future__ import annotations

import os

import pytest

from conftest import MODELS
from onnxsplit.splitting import split
from onnxsplit.stagetime import time_stages


def _busy() -> bool:
    return os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5


def test_two_stage_predictions_within_25_percent(tmp_path):
    out = tmp_path / "out"
    result = split(MODELS / "transformer.onnx", out, devices=2, input_shapes={"input_ids": (8, 128)})
    assert len(result.manifest.stages) == 2
    # The prediction is checked at the machine's speed of the moment (the original model timed
    # alongside the stages): this machine's speed drifts by tens of percent between minutes.
    timings = time_stages(out)
    if any(abs(t.calibrated_error) > 0.25 for t in timings):
        timings = time_stages(out, runs=60)  # once more: another process may have taken a core for a while
    bad = [t for t in timings if abs(t.calibrated_error) > 0.25]
    if bad and _busy():
        pytest.skip(f"machine busy (load {os.getloadavg()[0]:.1f}): {bad}")
    assert not bad, [(t.stage, round(t.predicted_ms, 3), round(t.measured_ms, 3), round(t.speed, 3)) for t in timings]
    # The machine's speed itself must be near what the profile saw, or the calibration hides a broken profile.
    if not 0.5 < timings[0].speed < 2.0 and _busy():
        pytest.skip(f"machine busy (load {os.getloadavg()[0]:.1f}): it runs the model {timings[0].speed:.2f}x "
                    "slower than when profiled")
    assert 0.5 < timings[0].speed < 2.0
