"""onnxruntime sessions, random inputs, and running a model with extra outputs."""

from __future__ import annotations

import os

import numpy as np
import onnx

from onnxsplit.errors import UsageError
from onnxsplit.model import Model

# onnx element type -> numpy dtype name, for manifests and random feeds.
def dtype_name(elem_type: int) -> str:
    if elem_type == onnx.TensorProto.STRING:
        return "str"
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def elem_type_of(name: str) -> int:
    if name == "bfloat16":
        return onnx.TensorProto.BFLOAT16
    if name == "str":
        return onnx.TensorProto.STRING
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(name))


def make_session(model: str | os.PathLike | bytes, *, provider: str = "CPUExecutionProvider",
                 provider_options: dict[str, str] | None = None, threads: int = 1,
                 external_folder: str | os.PathLike | None = None):
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise UsageError(f"execution provider {provider!r} is not available here (available: {', '.join(available)})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if external_folder is not None:
        # A model given as bytes finds its external data files here.
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
    target = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(target, sess_options=opts, providers=[provider],
                                provider_options=[provider_options or {}])


def random_array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values safe for any model: small non-negative ints, bools, floats in [-1, 1)."""
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.startswith(("int", "uint")):
        # Small ids stay inside any vocabulary or gather range a test model has.
        return rng.integers(0, 4, size=shape).astype(dtype)
    if dtype == "str":
        return np.array(rng.integers(0, 10, size=shape).astype(str), dtype=object)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def random_feeds(specs: list[tuple[str, str, tuple[int, ...]]], *, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: random_array(dtype, shape, rng) for name, dtype, shape in specs}


def load_feeds(path: str | os.PathLike, expected: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"--inputs {path}: not a readable .npz file ({exc})") from None
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise UsageError(f"--inputs {path}: no array for model input {missing[0]!r} (has {sorted(feeds)})")
    extra = sorted(set(feeds) - set(expected))
    if extra:
        raise UsageError(f"--inputs {path}: {extra[0]!r} is not an input of the model (inputs: {expected})")
    return feeds


def run_with_outputs(model: Model, names: list[str], feeds: dict[str, np.ndarray], *, threads: int = 1) -> dict[str, np.ndarray]:
    """Run the original model, returning its graph outputs and the named intermediate tensors.

    The model (without its external weights) is passed as bytes, and
    onnxruntime is told where the weights live, so big models are not copied.
    """
    graph = model.proto.graph
    existing = {o.name for o in graph.output}
    added = [n for n in dict.fromkeys(names) if n not in existing]
    for name in added:
        vi = graph.output.add()
        vi.name = name
        if name in model.value_info:
            vi.type.tensor_type.elem_type = model.value_info[name].type.tensor_type.elem_type
    try:
        data = model.proto.SerializeToString()
    finally:
        del graph.output[len(graph.output) - len(added):]
    session = make_session(data, threads=threads, external_folder=model.base_dir)
    wanted = [o.name for o in session.get_outputs()]
    return dict(zip(wanted, session.run(wanted, feeds)))
