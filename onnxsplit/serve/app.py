"""The HTTP endpoint: a split's pipeline behind the KServe v2 / Triton inference protocol.

Built on starlette (routing, requests, responses) served by uvicorn: a small,
widely used and well-kept ASGI stack with no framework beyond what a dozen
routes need, so every byte of the protocol stays in :mod:`onnxsplit.serve.protocol`
where it can be read and tested. When the stages run on Ray, the endpoint stays
this one process in front of the Ray engine: the engine already places the
stages as actors across the cluster, and a single front that submits to it
keeps one code path for both engines (Ray Serve would add its own proxy and
replica actors around a pipeline that is already distributed).

The pipeline is loaded in the background once the server listens, so health
checks answer at once: ``/v2/health/ready`` says 503 until every stage's
session is up, and again from the moment a shutdown starts. A request never
blocks the event loop: ``Pipeline.submit`` (which blocks while the first
stage's queue is full) runs on one submitting thread, and the loop awaits the
Future it returns.

Routes::

    GET  /v2/health/live                    200 while the process runs
    GET  /v2/health/ready                   200 when the model is ready, else 503
    GET  /v2                                server metadata
    GET  /v2/models/NAME[/versions/1]       model metadata: inputs and outputs, datatype and shape
    GET  /v2/models/NAME[/versions/1]/ready 200 or 503
    GET  /v2/models/NAME[/versions/1]/stats statistics extension: requests, samples, runs through the stages
    POST /v2/models/NAME[/versions/1]/infer inference, JSON or binary tensor data

Errors are ``{"error": "..."}`` with 400 (a bad request), 404 (an unknown
model or route), 405, 413 (a body over the limit), 500 (a stage failed),
503 (not ready, or shutting down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from onnxsplit import __version__
from onnxsplit.errors import OnnxSplitError
from onnxsplit.manifest import Manifest
from onnxsplit.serve.batching import Batcher
from onnxsplit.serve.protocol import (
    InferRequest,
    ProtocolError,
    encode_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
)

log = logging.getLogger(__name__)

VERSION = "1"  # a split folder is one model version
PLATFORM = "onnxsplit"
HEADER_LENGTH = "Inference-Header-Content-Length"
# Bodies above this are parsed and answered on a worker thread, so one big
# request does not hold up health checks and small requests on the loop.
_OFFLOAD_BYTES = 256 * 1024
# A body over the limit is read and dropped (not kept) up to this much more,
# so that the client gets its 413 instead of a connection reset mid-upload.
_DRAIN_BYTES = 64 * 1024 * 1024


class Engine(Protocol):
    """What the service needs of a pipeline (either engine's)."""

    def submit(self, feeds: Mapping[str, Any]) -> Any: ...  # a concurrent.futures.Future

    def close(self, *, cancel: bool = False) -> None: ...


class Statistics:
    """Counters of the statistics extension (``GET /v2/models/NAME/stats``); touched by the event loop only."""

    def __init__(self) -> None:
        self.inferences = 0  # samples answered (requests, without dynamic batching)
        self.executions = 0  # runs through the stages: fewer than the requests when batches form
        self.success = [0, 0]  # requests, nanoseconds
        self.fail = [0, 0]
        self.last_ms = 0

    def succeeded(self, ns: int, samples: int) -> None:
        self.inferences += samples
        self.success[0] += 1
        self.success[1] += ns
        self.last_ms = int(time.time() * 1000)

    def failed(self, ns: int) -> None:
        self.fail[0] += 1
        self.fail[1] += ns

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        return {"model_stats": [{
            "name": name, "version": version, "last_inference": self.last_ms,
            "inference_count": self.inferences, "execution_count": self.executions,
            "inference_stats": {"success": {"count": self.success[0], "ns": self.success[1]},
                                "fail": {"count": self.fail[0], "ns": self.fail[1]}},
        }]}


class ModelService:
    """One split folder served as one model: loads its pipeline, runs requests on it, closes it.

    States: ``loading`` -> ``ready`` -> ``stopping`` -> ``closed``, or
    ``loading`` -> ``failed`` (then ``error`` holds why). Requests are taken
    only while ``ready``.
    """

    def __init__(self, manifest: Manifest, *, name: str, open_pipeline: Callable[[], Engine], max_batch: int = 1,
                 batch_timeout_s: float = 0.001) -> None:
        self.manifest = manifest
        self.name = name
        self.output_names = manifest.output_names
        self.metadata = model_metadata(name, manifest.inputs, manifest.outputs, version=VERSION, platform=PLATFORM)
        self.state = "loading"
        self.error: BaseException | None = None
        self._open_pipeline = open_pipeline
        self._pipeline: Engine | None = None
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        # One thread: submissions keep their arrival order, and only this thread ever waits on back-pressure.
        self._submitter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxsplit-submit")
        self.stats = Statistics()
        self.batcher = Batcher(self._run, max_batch=max_batch, timeout_s=batch_timeout_s) if max_batch > 1 else None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def load(self, *, on_ready: Callable[[], None], on_failure: Callable[[], None]) -> None:
        """Start loading the pipeline on a background thread, which then calls ``on_ready`` or ``on_failure``."""
        def body() -> None:
            try:
                pipeline = self._open_pipeline()
            except BaseException as exc:  # reported by whoever runs the server, once it has stopped
                self.error = exc
                self.state = "failed"
                on_failure()
                return
            with self._lock:
                stopping = self.state != "loading"
                if not stopping:
                    self._pipeline = pipeline
                    self.state = "ready"
            if stopping:  # a shutdown came while the stages were loading
                pipeline.close(cancel=True)
            else:
                log.info("model %s ready", self.name)
                on_ready()

        self._loader = threading.Thread(target=body, name="onnxsplit-load", daemon=True)
        self._loader.start()

    def stop_accepting(self) -> None:
        """From now on ``ready`` is false and new requests get 503; requests already taken go on."""
        with self._lock:
            if self.state in ("loading", "ready"):
                self.state = "stopping"

    def close(self) -> None:
        """Stop accepting, then close the pipeline (blocking): whatever is still in it is cancelled."""
        self.stop_accepting()
        if self._loader is not None:
            self._loader.join()
        if self._pipeline is not None:
            self._pipeline.close(cancel=True)
        self._submitter.shutdown(wait=True)
        if self.state != "failed":
            self.state = "closed"

    async def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of one request; ProtocolError with the status to answer when it cannot be had.

        A request taken while ``ready`` is still run once a shutdown has begun (``stopping``): whoever
        takes requests checks ``ready`` when it takes one, not here.
        """
        if self.state not in ("ready", "stopping"):
            raise ProtocolError(f"model {self.name!r} is not ready ({self.state})", status=503)
        started = time.perf_counter_ns()
        try:
            if self.batcher is not None:
                results = await self.batcher(feeds)
            else:
                results = await self._run(feeds)
        except Exception:
            self.stats.failed(time.perf_counter_ns() - started)
            raise
        samples = next(iter(feeds.values())).shape[0] if self.batcher is not None and feeds else 1
        self.stats.succeeded(time.perf_counter_ns() - started, samples)
        return results

    async def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from onnxsplit.runtime import FeedError

        pipeline = self._pipeline
        if pipeline is None:
            raise ProtocolError(f"model {self.name!r} is not ready ({self.state})", status=503)
        loop = asyncio.get_running_loop()
        try:
            future = await loop.run_in_executor(self._submitter, pipeline.submit, feeds)
        except FeedError as exc:
            raise ProtocolError(str(exc)) from None
        except RuntimeError as exc:  # the pipeline closed under a request that was on its way in
            raise ProtocolError(f"model {self.name!r} is shutting down ({exc})", status=503) from None
        self.stats.executions += 1
        # Cancelling the awaiting task (the server giving up after its grace period) cancels the
        # request in the pipeline too, so a stage never runs a request nobody waits for.
        return await asyncio.wrap_future(future)


def make_app(service: ModelService, *, max_body_bytes: int, on_ready: Callable[[], None] = lambda: None,
             on_failure: Callable[[], None] = lambda: None) -> Starlette:
    """The starlette application serving ``service``.

    Starting it (its lifespan) starts loading the pipeline, then calls
    ``on_ready`` or ``on_failure`` from the loading thread; stopping it closes
    the pipeline.
    """
    routes = _Routes(service, max_body_bytes=max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.load(on_ready=on_ready, on_failure=on_failure)
        try:
            yield
        finally:
            # Blocking, but by now every request has been answered (or given up on after the grace period).
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    table = [
        Route("/v2/health/live", routes.live, methods=["GET"]),
        Route("/v2/health/ready", routes.ready, methods=["GET"]),
        Route("/v2", routes.server_metadata, methods=["GET"]),
        *(Route(p, routes.protocol(routes.model), methods=["GET"]) for p in model_paths),
        *(Route(p + "/ready", routes.protocol(routes.model_ready), methods=["GET"]) for p in model_paths),
        *(Route(p + "/stats", routes.protocol(routes.stats), methods=["GET"]) for p in model_paths),
        *(Route(p + "/infer", routes.protocol(routes.infer), methods=["POST"]) for p in model_paths),
    ]
    return Starlette(routes=table, exception_handlers={HTTPException: routes.http_error, Exception: routes.bug},
                     lifespan=lifespan)


def _answer(doc: Any, status: int = 200) -> Response:
    return Response(json.dumps(doc), status_code=status, media_type="application/json")


def _failure(message: str, status: int) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json")


class _Routes:
    """The handlers of every route, around one service."""

    def __init__(self, service: ModelService, *, max_body_bytes: int) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes

    @staticmethod
    def protocol(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` with its refusals (ProtocolError) and failures answered as the protocol's error body."""
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ProtocolError as exc:
                return _failure(str(exc), exc.status)
            except OnnxSplitError as exc:  # a stage failed, or its outputs cannot be sent back
                return _failure(f"inference failed: {exc}", 500)
        return endpoint

    def check_model(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.service.name:
            raise ProtocolError(f"unknown model {name!r} (this server has {self.service.name!r})", status=404)
        version = request.path_params.get("version", VERSION)
        if version != VERSION:
            raise ProtocolError(f"model {name!r} has no version {version!r} (it has {VERSION!r})", status=404)

    async def live(self, request: Request) -> Response:
        return _answer({"live": True})

    async def ready(self, request: Request) -> Response:
        if not self.service.ready:
            return _failure(f"not ready ({self.service.state})", 503)
        return _answer({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return _answer({"name": PLATFORM, "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model(self, request: Request) -> Response:
        self.check_model(request)
        return _answer(self.service.metadata)

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        if not self.service.ready:
            return _failure(f"model {self.service.name!r} is not ready ({self.service.state})", 503)
        return _answer({"name": self.service.name, "ready": True})

    async def stats(self, request: Request) -> Response:
        self.check_model(request)
        return _answer(self.service.stats.as_dict(self.service.name, VERSION))

    async def infer(self, request: Request) -> Response:
        service = self.service
        self.check_model(request)
        if not service.ready:
            raise ProtocolError(f"model {service.name!r} is not ready ({service.state})", status=503)
        body = await _read_body(request, self.max_body_bytes)
        header_length = _header_length(request.headers.get(HEADER_LENGTH))

        def parse() -> InferRequest:
            return parse_infer_request(body, header_length=header_length, inputs=service.manifest.inputs,
                                       outputs=service.output_names)

        parsed: InferRequest = await _maybe_offload(parse, len(body))
        try:
            results = await service.infer(parsed.feeds)
        except asyncio.CancelledError:
            if service.ready:
                raise
            # The server's grace period ended with this request unfinished: say so, rather than
            # let the server log a traceback and answer a bare 500.
            raise ProtocolError("the server shut down before this request finished", status=503) from None

        def encode() -> tuple[bytes, int | None]:
            return encode_infer_response(parsed, results, model_name=service.name, model_version=VERSION)

        out, out_header = await _maybe_offload(encode, sum(getattr(a, "nbytes", 0) for a in results.values()))
        if out_header is None:
            return Response(out, media_type="application/json")
        return Response(out, media_type="application/octet-stream", headers={HEADER_LENGTH: str(out_header)})

    async def bug(self, request: Request, exc: Exception) -> Response:
        # Still logged with its traceback by the server: this is a bug, not a bad request.
        return _failure(f"internal error: {type(exc).__name__}: {exc}", 500)

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        messages = {404: f"no such route: {request.method} {request.url.path}",
                    405: f"{request.method} is not allowed on {request.url.path}"}
        return _failure(messages.get(exc.status_code, str(exc.detail)), exc.status_code)


async def _maybe_offload(work: Callable[[], Any], size: int) -> Any:
    if size < _OFFLOAD_BYTES:
        return work()
    return await asyncio.get_running_loop().run_in_executor(None, work)


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be a whole number, got {value!r}") from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed if it says it is; ProtocolError 413 when it is (or unpacks to) more than ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise ProtocolError(f"Content-Length must be a whole number, got {declared!r}") from None
        if declared_size > limit:
            if declared_size <= limit + _DRAIN_BYTES:
                with contextlib.suppress(ClientDisconnect):
                    async for _ in request.stream():
                        pass
            raise ProtocolError(f"the request body of {declared_size} bytes is over the limit of {limit} bytes",
                                status=413)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"the request body is over the limit of {limit} bytes", status=413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ProtocolError("the client went away before sending the whole body") from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    unpacker = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        plain = unpacker.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} body cannot be decompressed ({exc})") from None
    if len(plain) > limit:
        raise ProtocolError(f"the request body decompresses to more than the limit of {limit} bytes", status=413)
    if not unpacker.eof:
        raise ProtocolError(f"the {encoding} body is truncated")
    return plain
