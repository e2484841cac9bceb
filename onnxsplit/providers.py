"""Execution provider names: one table of short names, for flags, devices.toml and profiles.

:func:`resolve_provider` turns what a user wrote (``cuda``, ``TensorRT``,
``CUDAExecutionProvider``) into onnxruntime's name without importing
onnxruntime, so reading a devices file stays cheap. Whether the provider is
installed here is a separate question, asked by :func:`require_available`
only when a session is about to be built: a plan can be made on a machine
that lacks the devices it plans for.
"""

from __future__ import annotations

from onnxsplit.errors import UsageError

CPU = "CPUExecutionProvider"

# Short name -> onnxruntime's name. Short names are matched without regard to case.
PROVIDERS: dict[str, str] = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "cann": "CANNExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "azure": "AzureExecutionProvider",
}
_FULL = {name.lower(): name for name in PROVIDERS.values()}


def _onnxruntime_names() -> list[str]:
    """Every provider this onnxruntime build knows of (installed or not); empty without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_all_providers())


def _available() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_provider(text: str) -> str:
    """A short name (``cuda``) or a full name (``CUDAExecutionProvider``) -> onnxruntime's full name.

    Names onnxruntime knows that the table lacks (a newer provider) are
    accepted as written. Raises UsageError for anything else.
    """
    key = text.strip().lower()
    if key in PROVIDERS:
        return PROVIDERS[key]
    if key in _FULL:
        return _FULL[key]
    # Only an unusual name pays for importing onnxruntime.
    known = _onnxruntime_names()
    if text in known:
        return text
    available = ", ".join(_available()) if known else "none: onnxruntime is not installed"
    raise UsageError(f"unknown execution provider {text!r} (short names: {', '.join(PROVIDERS)}; "
                     f"available here: {available})")


def require_available(provider: str, *, where: str = "") -> None:
    """Raise UsageError unless ``provider`` (a full name) is installed here. ``where`` prefixes the message."""
    available = _available()
    if provider not in available:
        prefix = f"{where}: " if where else ""
        raise UsageError(f"{prefix}execution provider {provider!r} is not available here "
                         f"(available: {', '.join(available)})")
