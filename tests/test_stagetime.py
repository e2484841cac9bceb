"""The cost model against reality: each stage alone runs close to its predicted time."""

from __future__ import annotations

import pytest

from conftest import MODELS
from onnxsplit.splitting import split
from onnxsplit.stagetime import time_stages


ATTEMPTS = 4


@pytest.mark.slow
def test_two_stage_predictions_within_25_percent(tmp_path):
    out = tmp_path / "out"
    result = split(MODELS / "transformer.onnx", out, devices=2, input_shapes={"input_ids": (8, 128)})
    assert len(result.manifest.stages) == 2
    # The prediction is checked at the machine's speed of the moment (the original model timed
    # alongside the stages): this machine's speed drifts by tens of percent between minutes.
    # The machine's speed itself must be near what the profile saw, or the calibration hides a broken profile.
    # Another process may take a core for a while: a few attempts, each with more runs, and one must hold.
    tries = []
    for attempt in range(ATTEMPTS):
        timings = time_stages(out, runs=30 * (attempt + 1))
        tries.append([(t.stage, round(t.predicted_ms, 3), round(t.measured_ms, 3), round(t.speed, 3)) for t in timings])
        if all(abs(t.calibrated_error) <= 0.25 for t in timings) and 0.5 < timings[0].speed < 2.0:
            break
    else:
        pytest.fail(f"no attempt within 25% (stage, predicted ms, measured ms, machine speed): {tries}")
