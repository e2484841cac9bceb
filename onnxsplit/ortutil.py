"""onnxruntime sessions, running a model with extra outputs, and whether onnxruntime can run a model at all.

Sessions built here keep onnxruntime's own log quiet (:data:`QUIET`); its
exceptions become one line (:mod:`onnxsplit.orterrors`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxsplit.errors import ModelError, UsageError
from onnxsplit.feeds import check_feeds
from onnxsplit.model import Model
from onnxsplit.orterrors import is_ort_error, ort_errors, ort_failure, ort_message
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
