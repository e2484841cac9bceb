"""A split folder as a Triton Inference Server model repository.

Layout written for a split of NAME with stages 0..n-1::

    REPO/
      .onnxsplit-triton            marker: this repository was written by onnxsplit (Triton ignores files here)
      NAME/config.pbtxt            the ensemble: graph inputs -> stage 0 -> ... -> graph outputs
      NAME/1/                      empty; Triton wants a version folder even for an ensemble
      NAME_stage_K/config.pbtxt    one model per stage
      NAME_stage_K/1/model.onnx    the stage model (and its external data file, under the name it references)
      NAME_stage_K/1/model.py      with the Python backend only: runs model.onnx with onnxruntime

The ensemble's steps route every tensor exactly as the manifest does; the
ensemble's tensor names are the model's own tensor names, which are unique
in the graph. The batch dim is handed to Triton (``max_batch_size`` and a
dynamic batcher on every stage) only when every graph input, graph output
and hand-off starts with one and the same symbolic dim; otherwise
``max_batch_size`` is 0 and every dim is declared, symbolic ones as -1.

Written atomically like a split folder (see :mod:`onnxsplit.outdir`): an
existing REPO is replaced only when asked, and only when it holds nothing
but a repository this module wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsplit.choices import TRITON_BACKENDS, TRITON_MAX_BATCH
from onnxsplit.errors import OutputError
from onnxsplit.export.triton_config import (
    GPU_PROVIDERS, NO_PARAMETERS, Step, TritonExportError, TritonTensor, ensemble_config, provider_parameters, stage_config,
    triton_tensor,
)
from onnxsplit.export.triton_model import write_stage_model
from onnxsplit.export.triton_python import MODEL_PY
from onnxsplit.fileio import write_json_atomic
from onnxsplit.manifest import Manifest, Stage, TensorSpec, load_manifest
from onnxsplit.outdir import MARKER as SCRATCH_MARKER
from onnxsplit.outdir import check_outdir, output_folder

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

BACKENDS = TRITON_BACKENDS
MARKER = ".onnxsplit-triton"
MARKER_FORMAT = "onnxsplit.triton"
CONFIG = "config.pbtxt"
VERSION = "1"  # the one model version written
DEFAULT_MAX_BATCH = TRITON_MAX_BATCH
# Triton model names become folder names and URL path segments; these need no quoting anywhere (the rule
# `onnxsplit serve` applies to its model name too).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TritonRepository:
    """What :func:`export_triton` wrote: the repository, its ensemble's name and its stage models in order."""

    path: Path
    name: str
    stage_models: tuple[str, ...]
    backend: str
    max_batch_size: int  # 0: Triton sees every dim, batching off


def default_name(manifest: Manifest) -> str:
    """The ensemble's name when none is given: the source model's file stem, made a safe folder name."""
    stem = Path(manifest.source.path).stem
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-")
    return name or "model"


def batch_dim(manifest: Manifest) -> str | None:
    """The symbolic dim every graph input, graph output and hand-off starts with, or None when there is none."""
    specs: list[TensorSpec] = [*manifest.inputs, *manifest.outputs, *manifest.handoffs]
    for s in manifest.stages:
        specs += [*s.inputs, *s.outputs]
    firsts = {s.shape[0] if s.shape else None for s in specs}
    if len(firsts) == 1:
        (first,) = firsts
        if isinstance(first, str):
            return first
    return None


def _gpu(stage: Stage) -> int | None:
    """The GPU a stage runs on, or None for a stage Triton should run on the CPU."""
    if stage.provider not in GPU_PROVIDERS:
        return None
    try:
        return int(stage.provider_options.get("device_id", 0))
    except (TypeError, ValueError):
        raise TritonExportError(f"stage {stage.index}: provider option device_id "
                                f"{stage.provider_options.get('device_id')!r} is not a GPU number") from None


def _data_files(manifest: Manifest, stage: Stage) -> tuple[Path, str] | None:
    """The stage's external data file and the name its model references it by (relative to the model)."""
    if stage.external_data is None:
        return None
    model = manifest.stage_path(stage.index)
    data = manifest.folder / stage.external_data
    ref = os.path.relpath(data, model.parent)
    if ref.startswith(".."):
        raise TritonExportError(f"stage {stage.index}: external data {stage.external_data} lies outside the folder "
                                f"of {stage.file}, so it cannot be copied beside model.onnx")
    return data, ref


def check_name(name: str) -> str:
    """``name`` if it can name a Triton model (a plain folder name); TritonExportError otherwise."""
    if not _NAME.fullmatch(name):
        raise TritonExportError(f"model name {name!r}: use letters, digits, '_', '.' and '-' only, "
                                "starting with a letter or digit")
    return name


def check_replaceable_repository(folder: Path) -> None:
    """Raise OutputError unless ``folder`` is empty or holds only a repository :func:`export_triton` wrote."""
    try:
        names = sorted(e.name for e in os.scandir(folder))
    except OSError as exc:
        raise OutputError(f"{folder}: cannot read the folder ({exc.strerror})") from None
    if not set(names) - {SCRATCH_MARKER}:
        return
    try:
        doc = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT or not isinstance(doc.get("models"), list):
        raise OutputError(f"{folder}: not replaced: it is not a model repository onnxsplit wrote (no {MARKER})")
    ours = {MARKER, SCRATCH_MARKER, *map(str, doc["models"])}
    for name in names:
        if name not in ours:
            raise OutputError(f"{folder}: not replaced: {name} was not written by onnxsplit")


def export_triton(outdir: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None,
                  backend: str = "onnxruntime", max_batch: int = DEFAULT_MAX_BATCH,
                  force: bool = False) -> TritonRepository:
    """Write the split in ``outdir`` as a Triton model repository at ``repo``.

    ``name`` names the ensemble (default: :func:`default_name`); stage K's
    model is ``{name}_stage_{K}``. ``backend`` "onnxruntime" runs the stages
    on Triton's onnxruntime backend, "python" on the Python backend through
    onnxruntime. ``max_batch`` is the ``max_batch_size`` written when the
    split has a shared batch dim (0 turns batching off).

    Raises UsageError for a folder that is not a split, TritonExportError
    naming the tensor Triton cannot declare, OutputError (or OutputExists,
    without ``force``) when ``repo`` exists and may not be replaced. After
    it returns ``repo`` holds the whole repository; on any error it is as it
    was before.
    """
    if backend not in BACKENDS:
        raise TritonExportError(f"backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    if max_batch < 0:
        raise TritonExportError(f"max batch size {max_batch}: must be 0 or more")
    manifest = load_manifest(outdir)
    name = check_name(default_name(manifest) if name is None else name)
    batched = max_batch > 0 and batch_dim(manifest) is not None
    max_batch_size = max_batch if batched else 0
    python = backend == "python"

    def declare(specs: tuple[TensorSpec, ...], renamed: Mapping[str, str]) -> tuple[TritonTensor, ...]:
        return tuple(triton_tensor(s, batched=batched, python_backend=python, name=renamed.get(s.name))
                     for s in specs)

    def scalars(specs: tuple[TensorSpec, ...]) -> tuple[str, ...]:
        return () if batched else tuple(s.name for s in specs if s.shape == ())

    # Everything that can be refused is refused before a byte is written.
    for specs in (manifest.inputs, manifest.outputs, *(s.inputs + s.outputs for s in manifest.stages)):
        declare(specs, {})
    gpus = [_gpu(s) for s in manifest.stages]
    data_files = [_data_files(manifest, s) for s in manifest.stages]
    stage_names = tuple(f"{name}_stage_{s.index}" for s in manifest.stages)

    target = check_outdir(repo, force=force, replaceable=check_replaceable_repository)
    with output_folder(repo, force=force, replaceable=check_replaceable_repository) as tmp:
        steps = []
        for stage, model_name, gpu, data in zip(manifest.stages, stage_names, gpus, data_files):
            version = tmp / model_name / VERSION
            version.mkdir(parents=True)
            renamed = write_stage_model(manifest.stage_path(stage.index), version / "model.onnx",
                                        scalar_inputs=scalars(stage.inputs), scalar_outputs=scalars(stage.outputs))
            if data is not None:
                src, ref = data
                (version / ref).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, version / ref)
            if python:
                (version / "model.py").write_text(MODEL_PY, encoding="utf-8")
            parameters = (provider_parameters(stage.provider, stage.provider_options, stage.threads) if python
                          else NO_PARAMETERS)
            text = stage_config(name=model_name, inputs=declare(stage.inputs, renamed),
                                outputs=declare(stage.outputs, renamed), max_batch_size=max_batch_size, gpu=gpu,
                                backend=backend, parameters=parameters)
            (tmp / model_name / CONFIG).write_text(text, encoding="utf-8")
            steps.append(Step(model_name, tuple((renamed.get(i.name, i.name), i.name) for i in stage.inputs),
                              tuple((renamed.get(o.name, o.name), o.name) for o in stage.outputs)))
        (tmp / name / VERSION).mkdir(parents=True)
        text = ensemble_config(name=name, inputs=declare(manifest.inputs, {}), outputs=declare(manifest.outputs, {}),
                               steps=steps, max_batch_size=max_batch_size)
        (tmp / name / CONFIG).write_text(text, encoding="utf-8")
        write_json_atomic(tmp / MARKER, {"format": MARKER_FORMAT, "version": 1, "models": [name, *stage_names]})
    return TritonRepository(path=target, name=name, stage_models=stage_names, backend=backend,
                            max_batch_size=max_batch_size)


# -- checked against Triton's own schema ------------------------------------------------------------------------------


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise TritonExportError(f"checking {path} needs tritonclient's gRPC package ({exc})") from None
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except text_format.ParseError as exc:
        raise TritonExportError(f"{path}: not a Triton model configuration ({exc})") from None
    return config


def check_repository(repo: str | os.PathLike) -> Mapping[str, Any]:
    """Parse every ``config.pbtxt`` in ``repo`` into Triton's ``ModelConfig`` and check the ensembles' wiring.

    Returns model name -> ModelConfig. Raises TritonExportError, naming the
    file and what is wrong, when a config does not parse, its name is not
    its folder's, a model has no version folder (or an onnxruntime model no
    ``model.onnx``, a Python one no ``model.py``), or an ensemble step names
    a model that is not there, a tensor that model does not have, or an
    ensemble tensor that is neither an ensemble input nor made by an earlier
    step; or leaves a model input unfed or an ensemble output unmade; or
    maps two tensors of different data types onto each other.
    """
    repo = Path(repo)
    configs: dict[str, Any] = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir()):
        path = folder / CONFIG
        if not path.is_file():
            raise TritonExportError(f"{folder}: a model folder without {CONFIG}")
        config = _parse(path)
        if config.name != folder.name:
            raise TritonExportError(f"{path}: name {config.name!r} is not its folder's name {folder.name!r}")
        if not (folder / VERSION).is_dir():
            raise TritonExportError(f"{folder}: no version folder {VERSION}/")
        needs = {"onnxruntime_onnx": "model.onnx", "ensemble": None}.get(config.platform)
        if config.backend == "python":
            needs = "model.py"
        if needs and not (folder / VERSION / needs).is_file():
            raise TritonExportError(f"{folder}: no {VERSION}/{needs}")
        configs[folder.name] = config
    for name, config in configs.items():
        if config.platform == "ensemble":
            _check_ensemble(repo / name / CONFIG, config, configs)
    return configs


def _check_ensemble(path: Path, ensemble: Any, configs: Mapping[str, Any]) -> None:
    # ensemble tensor name -> its data type, for every tensor available so far
    available = {t.name: t.data_type for t in ensemble.input}
    for k, step in enumerate(ensemble.ensemble_scheduling.step):
        where = f"{path}: step {k} ({step.model_name})"
        model = configs.get(step.model_name)
        if model is None:
            raise TritonExportError(f"{where}: no such model in the repository")
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        for key, value in step.input_map.items():
            if key not in inputs:
                raise TritonExportError(f"{where}: input_map names {key!r}, not an input of the model")
            if value not in available:
                raise TritonExportError(f"{where}: input_map reads {value!r}, which no earlier step makes and "
                                        "the ensemble does not take")
            if available[value] != inputs[key].data_type:
                raise TritonExportError(f"{where}: {value!r} does not have the data type of input {key!r}")
        unfed = [n for n, t in inputs.items() if n not in step.input_map and not t.optional]
        if unfed:
            raise TritonExportError(f"{where}: input {unfed[0]!r} is not fed")
        for key, value in step.output_map.items():
            if key not in outputs:
                raise TritonExportError(f"{where}: output_map names {key!r}, not an output of the model")
            if value in available:
                raise TritonExportError(f"{where}: output_map writes {value!r}, which already exists")
            available[value] = outputs[key].data_type
    produced = set(available) - {t.name for t in ensemble.input}
    for t in ensemble.output:
        if t.name not in produced:
            raise TritonExportError(f"{path}: ensemble output {t.name!r} is made by no step")
        if available[t.name] != t.data_type:
            raise TritonExportError(f"{path}: ensemble output {t.name!r} does not have the data type its step makes")
