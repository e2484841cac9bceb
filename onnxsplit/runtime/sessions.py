"""Stage sessions: one onnxruntime session per stage, and the two ways of running it.

``HostRunner`` passes numpy arrays in and out (every CPU stage);
``BindingRunner`` uses IO binding so a hand-off between two stages on the
same GPU never visits the host, and a decoder's caches, kept by their stage
between steps, stay on the GPU where the stage computed them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxsplit.ortutil import QUIET, session_options
from onnxsplit.providers import require_available
from onnxsplit.runtime.specs import CPU, StageSpec


def open_session(spec: StageSpec, *, spin: bool):
    """An onnxruntime session for one stage, on the manifest's provider, options and threads.

    ``spin=False``: idle pool threads that spin would steal the core from the other stages' workers.
    """
    import onnxruntime as ort

    require_available(spec.provider, where=f"stage {spec.index}")
    providers: list[Any] = [(spec.provider, dict(spec.provider_options))]
    if spec.provider != CPU:
        providers.append(CPU)  # nodes the accelerator cannot run fall back to the host
    options = session_options(threads=spec.threads, spin=spin, log_severity=QUIET)
    return ort.InferenceSession(str(spec.path), sess_options=options, providers=providers)


class HostRunner:
    """Runs a stage with numpy in, numpy out (every CPU stage)."""

    def __init__(self, session: Any, spec: StageSpec) -> None:
        self.session = session
        self.outputs = list(spec.outputs)

    def __call__(self, feeds: dict[str, Any]) -> dict[str, Any]:
        feeds = {n: to_host(v) for n, v in feeds.items()}
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))


class BindingRunner:
    """Runs a stage through IO binding, so tensors can stay on the device between stages.

    Inputs may be numpy arrays (copied in by onnxruntime) or OrtValues already
    on the device (a hand-off from the stage before, or the stage's own cache
    from the step before); outputs in ``spec.on_device`` stay on
    ``device_type`` as OrtValues, every other output comes back as a numpy
    array.
    """

    def __init__(self, session: Any, spec: StageSpec, *, device_type: str = "cuda") -> None:
        self.session = session
        self.outputs = list(spec.outputs)
        self.on_device = spec.on_device
        self.device_type = device_type
        self.device_id = spec.device_id

    def __call__(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import onnxruntime as ort

        # A fresh binding per call: each request gets its own output buffers,
        # so a tensor handed to the next stage is never overwritten under it.
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.outputs:
            if name in self.on_device:
                binding.bind_output(name, self.device_type, self.device_id)
            else:
                binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {name: (value if name in self.on_device else value.numpy())
                for name, value in zip(self.outputs, values)}


def to_host(value: Any) -> Any:
    """A value as a host array: OrtValues on a device are copied back, anything else passes through."""
    if isinstance(value, np.ndarray):
        return value
    numpy = getattr(value, "numpy", None)  # an OrtValue left on a device by a CUDA stage
    return numpy() if callable(numpy) else value
