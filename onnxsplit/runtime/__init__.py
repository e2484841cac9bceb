"""Run a split folder as a pipeline, and measure it against the original model."""

from __future__ import annotations

from onnxsplit.runtime.pipeline import FeedError, Pipeline, StageError, StageStats

__all__ = ["FeedError", "Pipeline", "StageError", "StageStats"]
