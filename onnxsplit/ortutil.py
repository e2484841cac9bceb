"""onnxruntime sessions, input feeds, and running a model with extra outputs.

onnxruntime reports a problem twice: as an exception, and as a coloured,
multi-line entry in its own log on the terminal. Sessions built here keep
the log quiet (:data:`QUIET`) and every onnxruntime exception becomes one
:class:`~onnxsplit.errors.ModelError` line that names the node, when
onnxruntime names one or the model lets us find it (:func:`ort_errors`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxsplit.errors import ModelError, UsageError
from onnxsplit.model import Model
from onnxsplit.providers import CPU, require_available, resolve_provider

if TYPE_CHECKING:
    from onnxsplit.devices import Devices

# Session log severity: fatal only. Every error also comes back as an exception, which we turn into one line;
# at 3 (errors) onnxruntime would print a failed run a second time, in colour, on the user's terminal.
QUIET = 4


@functools.lru_cache(maxsize=1)
def onnxruntime():
    """The onnxruntime module, its process-wide default logger kept to errors (no warnings on the terminal)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    return ort


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


# ---------------------------------------------------------------------------------------------
# onnxruntime's errors as one line

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STATUS = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_SOURCE = re.compile(r"(?:[A-Za-z]:)?[/\\]\S+\.(?:h|hpp|cc|cpp|cu|c):\d+\s+")
_RUNNING = re.compile(r"Non-zero status code returned while running (\S+) node\. Name:'([^']*)' Status Message:\s*")
_IN_NODE = re.compile(r'In Node, \("([^"]*)", ([^,]+), "([^"]*)", -?\d+\) : .*? , Error\s*')
_NODE_OP = re.compile(r"Node \(([^)]*)\) Op \(([^)]*)\)\s*")
_UNREGISTERED = re.compile(r"(?:([\w.]+):)?(\w+)\(-?\d+\) is not a registered function/op")
_NO_OP = re.compile(r"No Op registered for (\w+) with domain_version of \d+")
_INPUT = re.compile(r"Node input '([^']*)' is not a graph input")


def _drop_signatures(text: str) -> str:
    """Remove ``/src/file.h:12 void ns::f(args)`` source locations onnxruntime puts before its messages."""
    out, pos = [], 0
    for m in _SOURCE.finditer(text):
        if m.start() < pos:
            continue
        out.append(text[pos:m.start()])
        pos = m.end()
        # A C++ signature (``void ns::Class::f``) follows: skip it through its balanced argument list.
        open_at = text.find("(", pos)
        if open_at < 0 or "::" not in text[pos:open_at]:
            continue
        depth = 0
        for i in range(open_at, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                qualifier = re.match(r"\s*(?:const|noexcept|override)\b", text[i + 1:])
                pos = i + 1 + (qualifier.end() if qualifier else 0)
                break
    out.append(text[pos:])
    return re.sub(r"\s+", " ", "".join(out)).strip()


def ort_message(exc: BaseException) -> str:
    """An onnxruntime exception's message as one plain line: first line, no colours, no status or source prefix."""
    text = _ANSI.sub("", str(exc)).strip()
    first = text.splitlines()[0].strip() if text else ""
    first = _drop_signatures(_STATUS.sub("", first))
    return first or type(exc).__name__


def _node_named(proto: onnx.ModelProto | None, *, op: str = "", domain: str = "", reads: str = "") -> str | None:
    """The first node of the main graph with this op (and domain) or reading this tensor."""
    if proto is None:
        return None
    for node in proto.graph.node:
        if reads and reads in node.input:
            return f"{node.name!r} ({node.op_type})"
        if op and node.op_type == op and (not domain or node.domain == domain):
            return f"{node.name!r} ({f'{node.domain}:' if node.domain else ''}{node.op_type})"
    return None


def ort_failure(exc: BaseException, *, label: str, model: onnx.ModelProto | None = None) -> ModelError:
    """One ModelError line for onnxruntime refusing to load or run a model.

    ``label`` names the model (a file name). The line names the node where
    onnxruntime names it, or where ``model`` shows which node it means (an
    unregistered op, an input nothing produces), then onnxruntime's cause.
    """
    message = ort_message(exc)
    node = None
    for pattern in (_RUNNING, _IN_NODE):
        m = pattern.search(message)
        if m:
            name, op = (m.group(2), m.group(1)) if pattern is _RUNNING else (m.group(1), m.group(2).strip())
            node = f"{name!r} ({op})"
            message = message[:m.start()] + message[m.end():]
            break
    if node is None:
        m = _NODE_OP.search(message)
        if m:
            node = f"{m.group(1)!r} ({m.group(2)})"
            message = message[:m.start()] + message[m.end():]
    if node is None:
        m = _UNREGISTERED.search(message) or _NO_OP.search(message)
        if m and m.re is _UNREGISTERED:
            node = _node_named(model, op=m.group(2), domain=m.group(1) or "")
        elif m:
            node = _node_named(model, op=m.group(1))
    if node is None:
        m = _INPUT.search(message)
        if m:
            node = _node_named(model, reads=m.group(1))
    message = re.sub(r"^(?:Fatal error|Error|Exception during initialization):\s*", "", message.strip(" ,:"))
    where = f"node {node}: " if node else ""
    return ModelError(f"{label}: onnxruntime cannot run the model: {where}{message or type(exc).__name__}")


def is_ort_error(exc: BaseException) -> bool:
    """Whether onnxruntime raised it (its exceptions live in its compiled module)."""
    return type(exc).__module__.startswith("onnxruntime")


@contextlib.contextmanager
def ort_errors(label: str, *, model: onnx.ModelProto | None = None) -> Iterator[None]:
    """Turn onnxruntime's exceptions inside into one ModelError line (see :func:`ort_failure`)."""
    try:
        yield
    except Exception as exc:
        if not is_ort_error(exc):
            raise
        raise ort_failure(exc, label=label, model=model) from None


# ---------------------------------------------------------------------------------------------
# Sessions


def make_session(model: str | os.PathLike | bytes, *, provider: str = CPU,
                 provider_options: dict[str, str] | None = None, threads: int = 1,
                 external_folder: str | os.PathLike | None = None, label: str = ""):
    """A session on one installed provider (a full name), its log kept quiet.

    Raises UsageError when the provider is not installed here, ModelError
    (one line, see :func:`ort_failure`) when onnxruntime refuses the model.
    ``label`` names the model in that line: default the file's name, or
    "the model" for a model given as bytes.
    """
    ort = onnxruntime()
    require_available(provider)
    opts = session_options(threads=threads, external_folder=external_folder, log_severity=QUIET)
    target = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(target, sess_options=opts, providers=[provider],
                                    provider_options=[provider_options or {}])
    except Exception as exc:
        if not is_ort_error(exc):
            raise
        failure = exc
    # Read the graph only now, to find the node the message means.
    try:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(target, load_external_data=False)
    except Exception:  # a file onnx cannot read either: the message is all there is
        proto = None
    label = label or ("the model" if isinstance(model, bytes) else Path(model).name)
    raise ort_failure(failure, label=label, model=proto) from None


def unknown_provider_options(session, provider: str, options: Mapping[str, str]) -> list[str]:
    """Requested options that ``session`` did not take up for ``provider``.

    onnxruntime ignores options it does not know (every option of the CPU
    provider, a misspelt one of CUDA's) without a word; the options a session
    reports back are the ones it knows.
    """
    taken = session.get_provider_options().get(provider, {})
    return sorted(k for k in options if k not in taken)


def check_provider_options(provider: str, options: Mapping[str, str]) -> None:
    """Raise UsageError naming an option ``provider`` does not know, or a value it refuses.

    ``provider``: a short or full name; it must be installed here. Builds a
    session of a one-node model to ask onnxruntime itself.
    """
    if not options:
        return
    provider = resolve_provider(provider)
    require_available(provider)
    ort = onnxruntime()
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
                                   [vi("x", onnx.TensorProto.FLOAT, [1])], [vi("y", onnx.TensorProto.FLOAT, [1])])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    probe.ir_version = 8
    try:
        session = ort.InferenceSession(probe.SerializeToString(), sess_options=session_options(log_severity=QUIET),
                                       providers=[provider], provider_options=[dict(options)])
    except Exception as exc:
        if not is_ort_error(exc) and not isinstance(exc, (ValueError, TypeError, RuntimeError)):
            raise
        raise UsageError(f"{provider} refuses the options {dict(options)} ({ort_message(exc)})") from None
    unknown = unknown_provider_options(session, provider, options)
    if unknown:
        known = ", ".join(sorted(session.get_provider_options().get(provider, {}))) or "none"
        raise UsageError(f"{provider} has no option {unknown[0]!r} (its options: {known})")


# ---------------------------------------------------------------------------------------------
# Feeds


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
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{path}: not a readable .npz file of input arrays ({exc})") from None
    except Exception as exc:  # a damaged zip member (BadZipFile, zlib.error) is a bad file, not a bug
        raise UsageError(f"{path}: not a readable .npz file of input arrays ({type(exc).__name__}: {exc})") from None
    _check_names(feeds, expected, where=str(path))
    return feeds


def _check_names(feeds: Mapping[str, object], expected: Sequence[str], *, where: str) -> None:
    """UsageError unless ``feeds`` has an entry for every expected input and nothing else."""
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise UsageError(f"{where}: no array for model input {missing[0]!r} (has {sorted(feeds)})")
    extra = sorted(set(feeds) - set(expected))
    if extra:
        raise UsageError(f"{where}: {extra[0]!r} is not an input of the model (inputs: {sorted(expected)})")


def _dims(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def check_feeds(model: Model, feeds: Mapping[str, np.ndarray], *,
                shapes: Mapping[str, tuple[int, ...]] = MappingProxyType({}), where: str = "the inputs") -> None:
    """Raise UsageError (one line, prefixed ``where``) unless ``feeds`` fit the model's inputs.

    Checks, in order: an array for every input and none for anything else,
    each array's dtype against the input's element type, its rank, the dims
    the model fixes, and, for inputs in ``shapes``, the whole shape.
    """
    from onnxsplit.shapes import fixed_dim

    inputs = {vi.name: vi for vi in model.inputs}
    _check_names(feeds, list(inputs), where=where)
    for name, vi in inputs.items():
        if vi.type.WhichOneof("value") != "tensor_type":
            continue  # a sequence, optional or map: onnxruntime checks its elements
        array = np.asarray(feeds[name])
        tt = vi.type.tensor_type
        if tt.elem_type:
            want = dtype_name(tt.elem_type)
            ok = array.dtype.kind in "OUS" if want == "str" else array.dtype.name == want
            if not ok:
                raise UsageError(f"{where}: input {name!r} is an array of {array.dtype.name}, the model takes {want}")
        if tt.HasField("shape"):
            dims = tt.shape.dim
            if array.ndim != len(dims):
                raise UsageError(f"{where}: input {name!r} has rank {array.ndim} ({_dims(array.shape)}), "
                                 f"the model takes rank {len(dims)}")
            for axis, (d, have) in enumerate(zip(dims, array.shape)):
                fixed = fixed_dim(d)
                if fixed is not None and fixed != have:
                    raise UsageError(f"{where}: input {name!r} has {have} in dim {axis}, the model fixes it to "
                                     f"{fixed}")
        if name in shapes and tuple(array.shape) != tuple(shapes[name]):
            raise UsageError(f"{where}: input {name!r} has shape {_dims(array.shape)}, expected "
                             f"{_dims(shapes[name])}")


def model_feeds(model: Model, shapes: Mapping[str, tuple[int, ...]], *,
                feeds: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays to run ``model`` on: the user's ``feeds``, checked, or seeded random ones at ``shapes``.

    ``shapes`` holds a concrete shape for every model input (see
    :func:`onnxsplit.shapes.resolve_input_shapes`). User feeds must fit the
    model and these shapes (:func:`check_feeds`); random ones are small
    non-negative integers, bools or floats in [-1, 1) (:func:`random_array`).
    Values that steer control flow (an ``If`` condition, a ``Loop`` count)
    are only right in the user's feeds.
    """
    if feeds is not None:
        check_feeds(model, feeds, shapes=shapes)
        return {vi.name: np.asarray(feeds[vi.name]) for vi in model.inputs}
    specs = [(vi.name, dtype_name(vi.type.tensor_type.elem_type), tuple(shapes[vi.name])) for vi in model.inputs]
    return random_feeds(specs, seed=seed)


# ---------------------------------------------------------------------------------------------
# Running


def run_with_outputs(model: Model, names: list[str], feeds: dict[str, np.ndarray], *, threads: int = 1) -> dict[str, np.ndarray]:
    """Run the original model, returning its graph outputs and the named intermediate tensors.

    ``feeds``: an array for every model input (the user's, or from
    :func:`model_feeds`); UsageError when they do not fit the model's
    inputs. The model (without its external weights) is passed as bytes,
    and onnxruntime is told where the weights live, so big models are not
    copied. onnxruntime refusing the model or failing on these inputs is a
    ModelError naming the node.
    """
    check_feeds(model, feeds)
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
    label = model.path.name
    session = make_session(data, threads=threads, external_folder=model.base_dir, label=label)
    wanted = [o.name for o in session.get_outputs()]
    with ort_errors(label, model=model.proto):
        return dict(zip(wanted, session.run(wanted, dict(feeds))))


# ---------------------------------------------------------------------------------------------
# Can onnxruntime run this model at all?


def _check_structure(model: Model) -> None:
    """What onnxruntime would refuse late or unclearly, checked on the graph: one ModelError line each."""
    where = model.path.name
    graph = model.graph
    if not graph.output:
        raise ModelError(f"{where}: the model has no outputs")
    names = [vi.name for vi in graph.input]
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise ModelError(f"{where}: the model declares input {dup!r} twice")
    if model.proto.ir_version > onnx.IR_VERSION:
        raise ModelError(f"{where}: IR version {model.proto.ir_version} is newer than this onnx supports "
                         f"({onnx.IR_VERSION})")
    newest = onnx.defs.onnx_opset_version()
    for opset in model.proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise ModelError(f"{where}: opset {opset.version} is newer than this onnx supports ({newest})")
    defined = {vi.name: "a graph input" for vi in model.inputs}
    for t in graph.initializer:
        if t.name in defined:
            raise ModelError(f"{where}: tensor {t.name!r} is defined twice (an initializer, and {defined[t.name]})")
        defined[t.name] = "an initializer"
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            if out in defined:
                raise ModelError(f"{where}: tensor {out!r} is defined twice (by node {node.name!r}, and by "
                                 f"{defined[out]})")
            defined[out] = f"node {node.name!r}"


def _weights_as_inputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose external initializers are graph inputs of the same type and shape.

    onnxruntime resolves every kernel of it without reading a byte of the
    weights, so checking that a model loads costs no memory for big models.
    """
    from onnxsplit.model import copy_without_initializers, is_external

    copy, saved = copy_without_initializers(proto)
    declared = {i.name for i in copy.graph.input}
    for t in saved:
        if not is_external(t):
            copy.graph.initializer.append(t)
        elif t.name not in declared:
            copy.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return copy


def check_runnable(model: Model, devices_or_providers: Devices | Sequence[str], *,
                   require_installed: bool = True) -> None:
    """Refuse, in one line, a model onnxruntime cannot run on the providers a split would use.

    What measuring costs finds by running the model, found without timing
    it: a model with no outputs, an input declared twice, a tensor defined
    twice, an IR or opset newer than onnx knows (ModelError); then one
    session per provider (with the kind's options), which refuses unknown
    or custom ops, dangling inputs and anything else onnxruntime rejects
    (ModelError naming the node). ``devices_or_providers``: Devices, or
    provider names (short or full). With ``require_installed``, a provider
    not installed here is a UsageError; without, it is skipped (a plan may
    be made on a machine without the devices it plans for).
    """
    _check_structure(model)
    wanted: dict[str, dict[str, str]] = {}
    if isinstance(devices_or_providers, (list, tuple)) and all(isinstance(p, str) for p in devices_or_providers):
        for name in devices_or_providers:
            wanted.setdefault(resolve_provider(name), {})
    else:
        for kind in devices_or_providers.kinds:
            wanted.setdefault(kind.provider, dict(kind.provider_options))
    ort = onnxruntime()
    available = set(ort.get_available_providers())
    data = _weights_as_inputs(model.proto).SerializeToString()
    for provider, options in wanted.items():
        if provider not in available:
            if require_installed:
                require_available(provider, where=model.path.name)
            continue
        check_provider_options(provider, options)
        opts = session_options(external_folder=model.base_dir, log_severity=QUIET)
        # Only whether it loads matters here: optimising the graph would only cost time.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        with ort_errors(model.path.name, model=model.proto):
            ort.InferenceSession(data, sess_options=opts, providers=[provider], provider_options=[options])
