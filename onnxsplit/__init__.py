"""onnxsplit: split ONNX models across devices for pipelined inference.

Public API::

    from onnxsplit import split, validate, Pipeline
    result = split("model.onnx", "out/", devices=4)
    report = validate("out/")
    with Pipeline("out/") as pipe:
        outputs = pipe.run(feeds)

The value types of the pass pipeline (Model, CostGraph, Devices, Plan,
Manifest) are exported too, and so are the decoder pieces (StatePair,
StateSpec, Sequence, Generation, OriginalDecoder) and the two ways out of a
split (write_report, export_triton). Everything loads on first use, so importing the
package (as the command line does) does not import onnx or onnxruntime, nor
even ``typing``: the command line must be ready to catch Ctrl-C within a
few milliseconds of starting.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

# name -> the module that defines it. No module is named after a function it
# exports (split lives in onnxsplit.splitting, validate in onnxsplit.validation),
# so `onnxsplit.split` is always the function.
_EXPORTS = {
    "split": "onnxsplit.splitting",
    "prepare": "onnxsplit.splitting",
    "SplitResult": "onnxsplit.splitting",
    "validate": "onnxsplit.validation",
    "Report": "onnxsplit.validation",
    "Pipeline": "onnxsplit.runtime",
    "Manifest": "onnxsplit.manifest",
    "load_manifest": "onnxsplit.manifest",
    "Model": "onnxsplit.model",
    "load_model": "onnxsplit.model",
    "CostGraph": "onnxsplit.costgraph",
    "Devices": "onnxsplit.devices",
    "DeviceKind": "onnxsplit.devices",
    "Plan": "onnxsplit.solve.plan",
    "OnnxSplitError": "onnxsplit.errors",
    "StatePair": "onnxsplit.state",
    "StateSpec": "onnxsplit.manifest",
    "Sequence": "onnxsplit.runtime.generation",
    "Generation": "onnxsplit.decoding",
    "OriginalDecoder": "onnxsplit.decoding",
    "write_report": "onnxsplit.export.report",
    "export_triton": "onnxsplit.export.triton",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'onnxsplit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
