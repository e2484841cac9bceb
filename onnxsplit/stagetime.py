"""Time each stage model alone, to check the cost model's predictions against reality."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxsplit.manifest import load_manifest
from onnxsplit.model import load_model
from onnxsplit.feeds import random_feeds
from onnxsplit.ortutil import make_session
from onnxsplit.validation import run_stages


@dataclass(frozen=True)
class StageTiming:
    stage: int
    predicted_ms: float  # the plan's compute time for the stage
    measured_ms: float  # median latency of the stage model alone
    # How much slower the machine runs the whole original now than the predictions say it does:
    # the same machine drifts by tens of percent over minutes (other tenants, clocks).
    speed: float = 1.0

    @property
    def error(self) -> float:
        """Relative error of the prediction (positive: predicted too slow)."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def calibrated_error(self) -> float:
        """The error with the prediction scaled by the machine's speed now."""
        return (self.predicted_ms * self.speed - self.measured_ms) / self.measured_ms


def time_stages(outdir: str | Path, *, runs: int = 30, warmup: int = 5, seed: int = 0) -> list[StageTiming]:
    """Median single-thread latency of every stage on inputs from a chained run of random feeds.

    Stages, and the original model, are timed round-robin, one run each in
    turn, so that a burst of load from elsewhere on the machine slows them
    all alike; the original's latency against the sum of the predictions
    gives the machine's speed now (``StageTiming.speed``).
    """
    outdir = Path(outdir)
    manifest = load_manifest(outdir)
    env = run_stages(manifest, random_feeds(manifest.feed_specs(), seed=seed))
    sessions, feeds = [], []
    for stage, path in zip(manifest.stages, manifest.stage_paths()):
        sessions.append(make_session(path, provider=stage.provider, provider_options=dict(stage.provider_options),
                                     threads=1))
        feeds.append({i.name: env[i.name] for i in stage.inputs})
    original = load_model(manifest.source_path())
    sessions.append(make_session(original.proto.SerializeToString(), threads=1, external_folder=original.base_dir))
    feeds.append({name: env[name] for name in manifest.input_names})
    samples: list[list[float]] = [[] for _ in sessions]
    for step in range(warmup + runs):
        for k, (session, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            session.run(None, feed)
            if step >= warmup:
                samples[k].append((time.perf_counter() - start) * 1e3)
    predicted_total = sum(stage.predicted.compute_ms for stage in manifest.stages)
    speed = float(np.median(samples[-1])) / predicted_total if predicted_total > 0 else 1.0
    return [StageTiming(k, stage.predicted.compute_ms, float(np.median(samples[k])), speed)
            for k, stage in enumerate(manifest.stages)]
