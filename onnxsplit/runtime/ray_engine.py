"""Run a split folder's stages as Ray actors, on one machine or across a cluster.

One actor per stage, each in its own bundle of one placement group (the
bundle asks for what the stage's device kind needs: its threads as CPUs, a
GPU for a CUDA stage, and any Ray resources or node labels devices.toml pins
the kind to). For every request the driver calls each stage actor in
pipeline order, handing it the object references that earlier stages'
calls returned, so tensors go from actor to actor through Ray's object
store and the driver only ever fetches the model outputs. A Ray actor runs
its calls one at a time in the order one caller made them, so stage K
works on request i while stage K+1 works on request i-1, as in the
in-process engine.

Faults: a stage that raises fails that request alone; a stage actor that
dies fails the requests it held and Ray restarts it (``max_restarts``), so
later requests succeed; a node that leaves the cluster kills the actors on
it, which fails their requests the same way.

``ray`` is imported here only, and this module only when the Ray engine is
chosen, so the package works without Ray installed.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from onnxsplit.devices import Devices
from onnxsplit.errors import OnnxSplitError, UsageError
from onnxsplit.manifest import load_manifest
from onnxsplit.runtime.pipeline import FeedError, Pipeline, StageError, StageStats, _finish, _one_line
from onnxsplit.runtime.sessions import BindingRunner, HostRunner, open_session
from onnxsplit.runtime.specs import CUDA, StageSpec, stage_specs

log = logging.getLogger(__name__)

# Ray's placement-group strategies, keyed by the names onnxsplit.choices.PLACEMENTS offers.
STRATEGIES = {"pack": "PACK", "spread": "SPREAD", "strict-spread": "STRICT_SPREAD"}
_GPU_PROVIDERS = (CUDA, "TensorrtExecutionProvider")

# Ray instances this module started itself, and how many open pipelines use them: the last to close stops it.
_owned_lock = threading.Lock()
_owned_users = 0


class PlacementError(OnnxSplitError):
    """The cluster has no room for the stages' placement group (or a stage actor never started)."""


def import_ray() -> Any:
    """The ``ray`` module, or a UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError("the Ray engine needs ray: pip install 'onnxsplit[ray]'") from None
    return ray


@dataclass(frozen=True)
class StageLocation:
    """Where a stage actor runs: the Ray node (its id and IP) and the worker process."""

    stage: int
    node_id: str
    node_ip: str
    pid: int


class StageFailed(Exception):
    """Raised inside a stage actor when its session fails on a request; the driver turns it into a StageError.

    A plain Exception (not an OnnxSplitError) so that it pickles through Ray
    with nothing but its arguments.
    """

    def __init__(self, stage: int, node_id: str, node_ip: str, text: str) -> None:
        super().__init__(stage, node_id, node_ip, text)
        self.stage, self.node_id, self.node_ip, self.text = stage, node_id, node_ip, text


class _StageActor:
    """One stage's onnxruntime session inside a Ray actor (made remote by :func:`_actor_class`).

    ``files`` holds one ``(relative name, size, ObjectRef of the bytes or
    None)`` per file of the stage (the model and its external data), wrapped
    in a list so Ray passes the references unresolved: a node that sees the
    split folder at the driver's path reads it there, any other fetches the
    bytes; without bytes it reports the folder missing, and the driver makes
    the actor again with them.
    """

    def __init__(self, spec: StageSpec, folder: str, files: list[tuple[str, int, Any]]) -> None:
        import ray

        context = ray.get_runtime_context()
        self.spec = spec
        self.node_id = context.get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.error: tuple[str, str] | None = None  # (what kind of error, one line), reported by where()
        self.runs = 0
        self.busy_s = 0.0
        self.started = time.perf_counter()
        self._tmp: tempfile.TemporaryDirectory | None = None
        try:
            path = self._local_copy(Path(folder), files)
            if path is None:
                self.error = ("missing", f"the split folder {folder} is not on node {self.node_ip}")
                self.runner = None
                return
            self.spec = replace(spec, path=path)
            session = open_session(self.spec, spin=False)
            self.runner = (BindingRunner(session, self.spec) if spec.provider == CUDA and spec.tensors_only
                           else HostRunner(session, self.spec))
        except Exception as exc:  # reported to the driver by where(): a restart would fail the same way
            self.error = ("user", str(exc)) if isinstance(exc, OnnxSplitError) else ("bug", _one_line(exc))
            self.runner = None

    def _local_copy(self, folder: Path, files: list[tuple[str, int, Any]]) -> Path | None:
        import ray

        if all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size, _ in files):
            return self.spec.path
        if any(ref is None for *_, ref in files):
            return None
        # Another machine: the split folder is not here, so the stage's files come through the object store.
        self._tmp = tempfile.TemporaryDirectory(prefix=f"onnxsplit-stage{self.spec.index}-")
        for name, _, ref in files:
            target = Path(self._tmp.name) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(ray.get(ref))
        return Path(self._tmp.name) / files[0][0]

    def where(self) -> tuple[str, str, int, tuple[str, str] | None]:
        return self.node_id, self.node_ip, os.getpid(), self.error

    def stats(self) -> tuple[int, float, float]:
        return self.runs, self.busy_s, time.perf_counter() - self.started

    def run(self, *values: Any) -> Any:
        if self.runner is None:
            raise StageFailed(self.spec.index, self.node_id, self.node_ip,
                              f"the stage could not be loaded: {self.error[1] if self.error else 'unknown error'}")
        t0 = time.perf_counter()
        try:
            out = self.runner(dict(zip(self.spec.inputs, values)))
        except Exception as exc:
            raise StageFailed(self.spec.index, self.node_id, self.node_ip, _one_line(exc)) from None
        finally:
            self.busy_s += time.perf_counter() - t0
            self.runs += 1
        values_out = tuple(out[n] for n in self.spec.outputs)
        return values_out[0] if len(values_out) == 1 else values_out


_ACTOR_CLASS: Any = None


def _actor_class(ray: Any) -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        _ACTOR_CLASS = ray.remote(_StageActor)
    return _ACTOR_CLASS


class _Request:
    """One inference in flight: its Future, every stage's output references, and the outputs still awaited."""

    __slots__ = ("future", "stage_refs", "output_refs", "passthrough", "left", "lock")

    def __init__(self, future: Future, stage_refs: list[list[Any]], output_refs: dict[str, Any],
                 passthrough: dict[str, Any]) -> None:
        self.future = future
        self.stage_refs = stage_refs
        self.output_refs = output_refs
        self.passthrough = passthrough
        self.left = len(output_refs)
        self.lock = threading.Lock()


_STOP = object()


class RayPipeline(Pipeline):
    """A split folder's stages as Ray actors, with the API and error semantics of :class:`Pipeline`.

    Made by ``Pipeline(outdir, engine="ray", ...)``. ``address``: the cluster
    to join; None joins ``$RAY_ADDRESS`` when set and otherwise starts a
    local Ray instance on 127.0.0.1 (stopped again when the last pipeline
    using it closes). A Ray session already open in this process is used
    as it is. ``placement``: pack, spread or strict-spread (each stage on a
    node of its own). ``devices``: a devices file's kinds, whose
    ``ray_resources`` and ``ray_labels`` each stage of that kind then needs.

    ``submit`` blocks while ``capacity`` requests are in flight
    (back-pressure). Futures complete on a collector thread of the pipeline.
    """

    def __init__(self, outdir: str | os.PathLike, *, engine: str = "ray", queue_size: int = 4, pin: bool = True,
                 address: str | None = None, placement: str = "pack", devices: Devices | None = None,
                 max_restarts: int = 3, start_timeout_s: float = 120.0) -> None:
        if queue_size < 1:
            raise UsageError(f"queue_size must be at least 1, got {queue_size}")
        if placement not in STRATEGIES:
            raise UsageError(f"placement must be one of {', '.join(STRATEGIES)}, got {placement!r}")
        ray = import_ray()
        self._ray = ray
        self.outdir = Path(outdir)
        self.manifest = load_manifest(self.outdir)
        self.specs = tuple(_for_actor(s) for s in stage_specs(self.manifest))
        self.input_names = self.manifest.input_names
        self.output_names = self.manifest.output_names
        made = {n for s in self.specs for n in s.outputs}
        self._passthrough = tuple(n for n in self.output_names if n not in made and n in self.input_names)
        readers = {n: sum(n in s.inputs for s in self.specs) for n in self.input_names}
        self._shared_inputs = frozenset(n for n, count in readers.items() if count > 1)
        self.queue_size = queue_size
        self.placement = placement
        self._closed = False
        self._cancelling = threading.Event()
        self._submit_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._pending: dict[int, _Request] = {}
        self._pending_lock = threading.Lock()
        self._done: queue.Queue = queue.Queue()
        self._next_id = 0
        self._owner = _connect(ray, address, cpus=sum(s.threads for s in self.specs if s.provider not in _GPU_PROVIDERS))
        self._pg: Any = None
        self._actors: list[Any] = []
        try:
            self._start(devices, max_restarts=max_restarts, timeout=start_timeout_s)
        except BaseException:
            self._teardown()
            raise
        self._actor_stage = {a._actor_id.hex(): k for k, a in enumerate(self._actors)}
        self._calls = [a.run.options(num_returns=len(s.outputs)) for a, s in zip(self._actors, self.specs)]
        self._collector = threading.Thread(target=self._collect, name="onnxsplit-ray-collector", daemon=True)
        self._collector.start()
        log.info("Ray pipeline of %d stages started (%s placement): %s", len(self.specs), placement,
                 [(loc.stage, loc.node_ip) for loc in self._locations])

    # -- start-up ------------------------------------------------------------------------------------------------------

    def _start(self, devices: Devices | None, *, max_restarts: int, timeout: float) -> None:
        ray = self._ray
        from ray.util.placement_group import placement_group

        asks = [_stage_resources(spec, stage.device_kind, devices)
                for spec, stage in zip(self.specs, self.manifest.stages)]
        bundles = [{**({"CPU": float(cpus)} if cpus else {}), **({"GPU": float(gpus)} if gpus else {}), **extra}
                   for cpus, gpus, extra, _ in asks]
        labels = [dict(lab) for *_, lab in asks]
        self._pg = placement_group(bundles, strategy=STRATEGIES[self.placement],
                                   **({"bundle_label_selector": labels} if any(labels) else {}))
        try:
            ray.get(self._pg.ready(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            wanted = "; ".join(f"stage {k} {b}{f' labels {lab}' if lab else ''}"
                               for k, (b, lab) in enumerate(zip(bundles, labels)))
            raise PlacementError(f"{self.outdir}: the Ray cluster found no room within {timeout:g} s for the stages "
                                 f"({STRATEGIES[self.placement]}: {wanted}; the cluster has "
                                 f"{_resources_text(ray.cluster_resources())})") from None
        # First without the stage files' bytes: a cluster that sees the split folder (one machine, a shared
        # file system) needs none. Actors holding references in their arguments are also the ones Ray warns
        # about restarting, so only stages on nodes without the folder get them.
        sizes = [_stage_files(self.manifest, k) for k in range(len(self.specs))]
        self._actors = [self._make_actor(k, asks[k], sizes[k], max_restarts) for k in range(len(self.specs))]
        found = self._wait_started(timeout)
        missing = [k for k, (*_, error) in enumerate(found) if error is not None and error[0] == "missing"]
        if missing:
            for k in missing:
                ray.kill(self._actors[k], no_restart=True)
                files = [(name, size, self._ray.put((self.manifest.folder / name).read_bytes()))
                         for name, size, _ in sizes[k]]
                self._actors[k] = self._make_actor(k, asks[k], files, max_restarts)
            found = self._wait_started(timeout)
        for k, (*_, error) in enumerate(found):
            if error is not None:
                kind, text = error
                name = self.specs[k].path.name
                if kind == "user":
                    raise UsageError(f"stage {k} ({name}): {text}")
                raise StageError(k, f"stage {k} ({name}) could not be loaded on node {found[k][1]}: {text}")
        self._locations = tuple(StageLocation(k, node, ip, pid) for k, (node, ip, pid, _) in enumerate(found))

    def _make_actor(self, k: int, ask: tuple[float, float, dict[str, float], Any], files: list[tuple[str, int, Any]],
                    max_restarts: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cpus, gpus, extra, _ = ask
        return _actor_class(self._ray).options(
            num_cpus=cpus, num_gpus=gpus, resources=extra or None, max_restarts=max_restarts, max_task_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=self._pg,
                                                                 placement_group_bundle_index=k),
        ).remote(self.specs[k], str(self.manifest.folder), files)

    def _wait_started(self, timeout: float) -> list[tuple[str, str, int, Any]]:
        ray = self._ray
        try:
            return ray.get([a.where.remote() for a in self._actors], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise PlacementError(f"{self.outdir}: the stage actors did not start within {timeout:g} s") from None
        except ray.exceptions.RayActorError as exc:
            stage = next((k for k, a in enumerate(self._actors) if a._actor_id.hex() == exc.actor_id), -1)
            raise StageError(stage, f"stage {stage}: its Ray actor died while starting: "
                             f"{_first_line(str(exc))}") from None

    def locations(self) -> tuple[StageLocation, ...]:
        """Where each stage actor runs now (asked of the actors, so after a restart it is the new place)."""
        found = self._ray.get([a.where.remote() for a in self._actors])
        self._locations = tuple(StageLocation(k, node, ip, pid) for k, (node, ip, pid, _) in enumerate(found))
        return self._locations

    @property
    def actors(self) -> tuple[Any, ...]:
        """The stage actors' handles, in pipeline order."""
        return tuple(self._actors)

    # -- requests ------------------------------------------------------------------------------------------------------

    def submit(self, feeds: Mapping[str, Any]) -> Future:
        """Queue one inference, as :meth:`Pipeline.submit`; blocks while ``capacity`` requests are in flight."""
        self._check_feeds(feeds)
        future: Future = Future()
        with self._submit_lock:
            if self._closed:
                raise RuntimeError("cannot submit to a closed pipeline")
            while not self._slots.acquire(timeout=0.1):
                if self._cancelling.is_set() or self._closed:
                    raise RuntimeError("cannot submit to a closed pipeline")
            future.submitted_at = time.perf_counter()  # type: ignore[attr-defined]
            put = self._ray.put
            env: dict[str, Any] = {n: (put(feeds[n]) if n in self._shared_inputs else feeds[n])
                                   for n in self.input_names}
            stage_refs: list[list[Any]] = []
            for spec, call in zip(self.specs, self._calls):
                out = call.remote(*(env[n] for n in spec.inputs))
                refs = [out] if len(spec.outputs) == 1 else list(out)
                stage_refs.append(refs)
                env.update(zip(spec.outputs, refs))
            req = _Request(future, stage_refs, {n: env[n] for n in self.output_names if n not in self._passthrough},
                           {n: feeds[n] for n in self._passthrough})
            with self._pending_lock:
                rid = self._next_id
                self._next_id += 1
                self._pending[rid] = req
        if not req.output_refs:
            self._done.put(rid)
        for ref in req.output_refs.values():
            # Called on a Ray thread: only note it there, the collector does the rest.
            ref._on_completed(lambda _value, rid=rid, req=req: self._one_ready(rid, req))
        return future

    def _one_ready(self, rid: int, req: _Request) -> None:
        with req.lock:
            req.left -= 1
            last = req.left == 0
        if last:
            self._done.put(rid)

    def _collect(self) -> None:
        while True:
            rid = self._done.get()
            if rid is _STOP:
                return
            with self._pending_lock:
                req = self._pending.pop(rid, None)
            if req is None:
                continue
            try:
                self._finish(req)
            finally:
                self._slots.release()

    def _finish(self, req: _Request) -> None:
        ray = self._ray
        if req.future.done():  # the caller cancelled it
            return
        try:
            values = dict(zip(req.output_refs, ray.get(list(req.output_refs.values()))))
        except ray.exceptions.RayError as exc:
            _finish(req.future, exception=self._stage_error(req, exc))
            return
        values.update(req.passthrough)
        # Arrays read from the object store are read-only views of it; the caller gets arrays of its own.
        _finish(req.future, result={n: (v if not isinstance(v, np.ndarray) or v.flags.writeable else v.copy())
                                    for n, v in ((n, values[n]) for n in self.output_names)})

    def _stage_error(self, req: _Request, exc: BaseException) -> StageError:
        """The failure of the first stage whose outputs hold an error: later stages only passed it on."""
        ray = self._ray
        stage, cause = len(self.specs) - 1, exc
        for k, refs in enumerate(req.stage_refs):
            try:
                ray.get(refs, timeout=0)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayError as found:
                stage, cause = k, found
                break
        spec = self.specs[stage]
        what = f"stage {stage} ({spec.path.name}, {spec.provider})"
        inner = getattr(cause, "cause", None)
        if isinstance(inner, StageFailed):
            err = StageError(inner.stage, f"stage {inner.stage} ({self.specs[inner.stage].path.name}, "
                             f"{self.specs[inner.stage].provider}) failed on node {inner.node_id[:12]} "
                             f"({inner.node_ip}): {inner.text}")
        else:
            if isinstance(cause, ray.exceptions.RayActorError) and cause.actor_id in self._actor_stage:
                stage = self._actor_stage[cause.actor_id]
                spec = self.specs[stage]
                what = f"stage {stage} ({spec.path.name}, {spec.provider})"
            loc = self._locations[stage]
            kind = ("its Ray actor died or became unreachable" if isinstance(cause, ray.exceptions.RayActorError)
                    else "its outputs were lost" if isinstance(cause, ray.exceptions.ObjectLostError)
                    else "Ray failed")
            err = StageError(stage, f"{what} failed on node {loc.node_id[:12]} ({loc.node_ip}): {kind}: "
                             f"{type(cause).__name__}: {_first_line(str(cause))}")
        err.__cause__ = exc
        return err

    def stats(self) -> tuple[StageStats, ...]:
        """Each actor's runs and time inside its session; the rest of its life counts as starved.

        The actors answer between requests, so a snapshot waits for the calls queued before it.
        """
        got = self._ray.get([a.stats.remote() for a in self._actors])
        return tuple(StageStats(k, runs, busy, max(alive - busy, 0.0), 0.0, 0.0, ())
                     for k, (runs, busy, alive) in enumerate(got))

    # -- shutting down -------------------------------------------------------------------------------------------------

    def close(self, *, cancel: bool = False) -> None:
        """Stop the actors. By default every submitted request finishes (or fails) first; with ``cancel=True``
        the requests not yet finished are cancelled and the actors stopped under them."""
        if threading.current_thread() is getattr(self, "_collector", None):
            raise RuntimeError("RayPipeline.close() called from a done-callback would deadlock")
        if cancel:
            self._cancelling.set()
        with self._submit_lock:
            already = self._closed
            self._closed = True
        if already:
            return
        if cancel:
            with self._pending_lock:
                for req in self._pending.values():
                    req.future.cancel()
        else:
            with self._pending_lock:
                waiting = [req.future for req in self._pending.values()]
            for future in waiting:
                try:
                    future.exception()  # every request ends: actors that die fail theirs
                except BaseException:
                    pass
        self._done.put(_STOP)
        self._collector.join()
        self._teardown()

    def _teardown(self) -> None:
        ray = self._ray
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as exc:  # already gone with its node: nothing left to stop
                log.debug("stopping a stage actor: %s", exc)
        if self._pg is not None:
            try:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self._pg)
            except Exception as exc:
                log.debug("removing the placement group: %s", exc)
        _disconnect(ray, self._owner)
        self._owner = False

    def __del__(self) -> None:  # a pipeline dropped without close() must not leave actors holding the cluster
        if not getattr(self, "_closed", True) and getattr(self, "_collector", None) is not None:
            try:
                self.close(cancel=True)
            except Exception:
                pass


# -- helpers ----------------------------------------------------------------------------------------------------------


def _for_actor(spec: StageSpec) -> StageSpec:
    """A stage spec as an actor runs it: hand-offs come back to the host (they travel through Ray's object store),
    and a GPU stage sees only the GPU Ray gave it, which is device 0 inside the actor."""
    options = dict(spec.provider_options)
    if spec.provider in _GPU_PROVIDERS:
        options["device_id"] = "0"
    return replace(spec, on_device=frozenset(), provider_options=options)


def _stage_resources(spec: StageSpec, kind_name: str, devices: Devices | None
                     ) -> tuple[float, float, dict[str, float], tuple[tuple[str, str], ...]]:
    """(CPUs, GPUs, custom resources, node labels) that a stage's actor asks for."""
    extra: dict[str, float] = {}
    labels: tuple[tuple[str, str], ...] = ()
    if devices is not None:
        kind = next((k for k in devices.kinds if k.name == kind_name), None)
        if kind is None:
            raise UsageError(f"stage {spec.index} runs on device kind {kind_name!r}, which the devices file does "
                             f"not declare (kinds: {', '.join(k.name for k in devices.kinds)})")
        extra = dict(kind.ray_resources)
        labels = kind.ray_labels
    if spec.provider in _GPU_PROVIDERS:
        return 0.0, 1.0, extra, labels
    return float(spec.threads), 0.0, extra, labels


def _stage_files(manifest: Any, k: int) -> list[tuple[str, int, Any]]:
    """The stage's files as (name relative to the folder, size, None), the model first."""
    stage = manifest.stages[k]
    names = [stage.file] + ([stage.external_data] if stage.external_data else [])
    return [(name, (manifest.folder / name).stat().st_size, None) for name in names]


def _connect(ray: Any, address: str | None, *, cpus: int) -> bool:
    """Join or start Ray; True when this call started it (and so must stop it)."""
    global _owned_users
    with _owned_lock:
        if ray.is_initialized():
            if _owned_users:
                _owned_users += 1
                return True
            return False
        target = address or os.environ.get("RAY_ADDRESS")
        if target:
            ray.init(address=target, log_to_driver=False)
            return False
        # A new instance of our own ("local"), never a cluster another program left running on this machine.
        # Logical CPUs only: enough for every stage's bundle even where the machine has fewer cores.
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 num_cpus=max(os.cpu_count() or 1, cpus))
        _owned_users = 1
        return True


def _disconnect(ray: Any, owner: bool) -> None:
    global _owned_users
    if not owner:
        return
    with _owned_lock:
        _owned_users -= 1
        if _owned_users == 0:
            ray.shutdown()


def _first_line(text: str) -> str:
    line = next((t.strip() for t in text.splitlines() if t.strip()), "")
    return line[:300]


def _resources_text(resources: Mapping[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if not k.startswith(("node:", "memory", "object_store_memory"))}
    return ", ".join(f"{k}={v:g}" for k, v in sorted(shown.items())) or "nothing"


__all__ = ["FeedError", "PlacementError", "RayPipeline", "StageFailed", "StageLocation", "import_ray"]
