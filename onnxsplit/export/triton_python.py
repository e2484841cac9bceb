"""The ``model.py`` of a stage exported for Triton's Python backend.

Triton builds without the onnxruntime backend (such as the server bundled
with the ``nvidia-pytriton`` wheel) still run the stages this way: each
stage's ``1/model.py`` opens ``1/model.onnx`` with onnxruntime on the
provider its config's parameters name, falling back to the CPU when that
provider is not available, and runs every request on it. The file is the
same for every stage: what differs lives in ``config.pbtxt``.

The stub that runs it must import numpy and onnxruntime (start the server
with them on its ``PYTHONPATH``, or give the model an execution environment).
"""

from __future__ import annotations

MODEL_PY = '''\
"""A stage of a model split by onnxsplit, run with onnxruntime on Triton's Python backend."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# Numeric tensors cross between Triton and numpy through DLPack, which does not depend on the numpy ABI the
# backend's stub was built against (a stub built for numpy 1 misreads numpy 2 arrays it is handed directly).


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        provider = params.get("onnxsplit_provider", "CPUExecutionProvider")
        options = json.loads(params.get("onnxsplit_provider_options", "{}"))
        if args.get("model_instance_kind") == "GPU":
            options["device_id"] = str(args["model_instance_device_id"])
        providers = ["CPUExecutionProvider"]
        if provider != "CPUExecutionProvider" and provider in ort.get_available_providers():
            providers.insert(0, (provider, options))
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("onnxsplit_threads", "1"))
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), so, providers=providers)
        self.inputs = [t["name"] for t in config["input"]]
        self.strings = {t["name"] for t in config["input"] if t["data_type"] == "TYPE_STRING"}
        self.outputs = [t["name"] for t in config["output"]]
        self.batched = config.get("max_batch_size", 0) > 0

    def _feeds(self, request):
        feeds = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if name in self.strings:  # Triton passes strings as bytes; onnxruntime wants str
                value = tensor.as_numpy()
                value = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(value)
            else:
                value = np.from_dlpack(tensor)
            feeds[name] = value
        return feeds

    def _response(self, values):
        tensors = []
        for name, value in zip(self.outputs, values):
            value = np.asarray(value)
            if value.dtype == np.object_:
                value = np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(value)
                tensors.append(pb_utils.Tensor(name, value))
            else:
                tensors.append(pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(value)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        try:
            feeds = [self._feeds(r) for r in requests]
        except Exception as exc:  # a request Triton let through but this stage cannot read
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
        if self.batched and len(feeds) > 1:
            # The dynamic batcher handed over several requests: run them as one batch, then cut it apart.
            sizes = [len(f[self.inputs[0]]) for f in feeds]
            joined = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            try:
                values = self.session.run(self.outputs, joined)
            except Exception as exc:
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
            cuts = np.cumsum(sizes)[:-1]
            parts = [np.split(v, cuts) for v in values]
            return [self._response([p[i] for p in parts]) for i in range(len(requests))]
        responses = []
        for f in feeds:
            try:
                responses.append(self._response(self.session.run(self.outputs, f)))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self):
        self.session = None
'''
