"""onnxruntime sessions, random inputs, and running a model with extra outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from onnxsplit.errors import UsageError
from onnxsplit.model import Model
from onnxsplit.providers import CPU, require_available

def dtype_name(elem_type: int) -> str:
    """onnx element type -> numpy dtype name, for manifests and random feeds."""
    if elem_type == onnx.TensorProto.STRING:
        return "str"
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def session_options(*, threads: int = 1, spin: bool = True, log_severity: int = 3,
                    external_folder: str | os.PathLike | None = None,
                    profile_prefix: str | os.PathLike | None = None,
                    optimized_model: str | os.PathLike | None = None):
    """The onnxruntime SessionOptions every session of onnxsplit is built with.

    ``threads`` intra-op threads, one inter-op thread, nodes run in order.
    ``spin=False`` stops idle pool threads from spinning (they would steal
    cores from other stages' sessions). ``external_folder``: where a model
    given as bytes finds its external data files. ``profile_prefix``: turn
    onnxruntime's profiler on, its trace named with this prefix.
    ``optimized_model``: save the graph onnxruntime runs there, its weights
    in a side file beside it. ``log_severity``: 3 shows onnxruntime's
    errors only.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = log_severity
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if external_folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    if optimized_model is not None:
        opts.optimized_model_filepath = str(optimized_model)
        # Weights go to a side file: only the graph is read back, and big models stay under 2 GB.
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                      f"{Path(optimized_model).stem}.data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return opts


def make_session(model: str | os.PathLike | bytes, *, provider: str = CPU,
                 provider_options: dict[str, str] | None = None, threads: int = 1,
                 external_folder: str | os.PathLike | None = None):
    """A session on one installed provider (a full name); UsageError when it is not installed here."""
    import onnxruntime as ort

    require_available(provider)
    opts = session_options(threads=threads, external_folder=external_folder)
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
    """Arrays of an .npz file, one for each name in ``expected`` and no others; UsageError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable .npz file of input arrays ({exc})") from None
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise UsageError(f"{path}: no array for model input {missing[0]!r} (has {sorted(feeds)})")
    extra = sorted(set(feeds) - set(expected))
    if extra:
        raise UsageError(f"{path}: {extra[0]!r} is not an input of the model (inputs: {expected})")
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
