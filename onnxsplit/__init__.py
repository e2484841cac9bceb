"""onnxsplit: split ONNX models across devices for pipelined inference.

Public API::

    from onnxsplit import split, validate, Pipeline
    result = split("model.onnx", "out/", devices=4)
    report = validate("out/")
    with Pipeline("out/") as pipe:
        outputs = pipe.run(feeds)

The value types of the pass pipeline (Model, CostGraph, Devices, Plan) are
exported too; those load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# The functions share their modules' names: importing them here, once, makes
# `onnxsplit.split` the function even after `import onnxsplit.split`.
from onnxsplit.split import SplitResult, prepare, split  # noqa: E402
from onnxsplit.validate import Report, validate  # noqa: E402

_EXPORTS = {
    "Pipeline": "onnxsplit.runtime",
    "Model": "onnxsplit.model",
    "load_model": "onnxsplit.model",
    "CostGraph": "onnxsplit.costgraph",
    "Devices": "onnxsplit.devices",
    "DeviceKind": "onnxsplit.devices",
    "Plan": "onnxsplit.solve.plan",
    "OnnxSplitError": "onnxsplit.errors",
}

__all__ = sorted([*_EXPORTS, "split", "prepare", "SplitResult", "validate", "Report"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'onnxsplit' has no attribute {name!r}")
