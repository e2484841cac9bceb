"""Run the endpoint: check the split and the options, bind the port, serve until a signal, shut down cleanly.

Everything a user can get wrong (a folder that is not a split, a model the
protocol cannot carry, batching a model whose first dim is not its batch, a
port in use) is refused by :class:`Server`'s constructor, before anything
loads, with one line. :meth:`Server.run` then serves until SIGTERM or SIGINT:

1. the listening socket closes and the model stops being ready (new requests
   on open connections get 503);
2. requests already taken finish, for at most ``grace_s`` seconds, after
   which those left are cancelled (and their clients' connections closed);
3. the pipeline closes; ``run`` returns the signal that stopped it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import uvicorn

from onnxsplit.choices import ENGINES
from onnxsplit.errors import UsageError
from onnxsplit.manifest import Manifest, load_manifest
from onnxsplit.serve.app import ModelService, make_app
from onnxsplit.serve.batching import check_batchable
from onnxsplit.serve.protocol import check_servable

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def default_model_name(manifest: Manifest) -> str:
    """The source model's file stem, with any character a URL path would need escaped replaced by ``_``."""
    stem = Path(manifest.source.path).stem
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-")
    return name or "model"


def check_model_name(name: str) -> str:
    """``name`` if it can stand in a URL path as it is; UsageError otherwise."""
    if not _NAME.fullmatch(name):
        raise UsageError(f"model name {name!r}: use letters, digits, '_', '.' and '-', starting with a letter or "
                         "digit")
    return name


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); UsageError naming the address if refused."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"{host}: not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        # Lets a restarted server reuse the port its predecessor's closed connections still hold
        # (TIME_WAIT); a port another process listens on stays refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = {errno.EADDRINUSE: "address already in use", errno.EACCES: "permission denied",
                  errno.EADDRNOTAVAIL: "not an address of this machine"}.get(exc.errno, exc.strerror or str(exc))
        raise UsageError(f"{host}:{port}: cannot listen ({reason})") from None
    return sock


class Server:
    """A split folder served over HTTP with the KServe v2 protocol.

    After the constructor returns, the split and the options are checked and
    the socket listens (connections wait in its backlog until :meth:`run`).
    ``name`` None means :func:`default_model_name`. ``max_batch`` above 1
    turns on dynamic batching (every input's first dim must be one symbolic
    dim). ``pipeline_options`` go to the Pipeline as keywords (an engine's
    own options).
    """

    def __init__(self, outdir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000,
                 name: str | None = None, engine: str = "inproc", max_batch: int = 1, batch_timeout_s: float = 0.001,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, pin: bool = True, queue_size: int = 4,
                 grace_s: float = 30.0, pipeline_options: Mapping[str, Any] = MappingProxyType({})) -> None:
        if engine not in ENGINES:
            raise UsageError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
        if max_batch < 1:
            raise UsageError(f"the batch limit must be at least 1, got {max_batch}")
        if max_body_bytes < 1:
            raise UsageError(f"the body limit must be at least 1 byte, got {max_body_bytes}")
        self.outdir = Path(outdir)
        self.manifest = load_manifest(self.outdir)
        where = str(self.outdir)
        check_servable(self.manifest.inputs, self.manifest.outputs, where=where)
        self.batch_dim = check_batchable(self.manifest.inputs, self.manifest.outputs, where=where) \
            if max_batch > 1 else None
        self.name = check_model_name(name) if name is not None else default_model_name(self.manifest)
        self.engine = engine
        self.max_batch = max_batch
        self.batch_timeout_s = batch_timeout_s
        self.max_body_bytes = max_body_bytes
        self.pin = pin
        self.queue_size = queue_size
        self.grace_s = grace_s
        self.pipeline_options = dict(pipeline_options)
        self.service: ModelService | None = None  # while running
        self._uvicorn: _SignalledServer | None = None
        self.socket = bind(host, port)
        self.host, self.port = self.socket.getsockname()[:2]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _open_pipeline(self):
        from onnxsplit.runtime import Pipeline

        options = dict(self.pipeline_options)
        if self.engine != "inproc":
            options["engine"] = self.engine
        return Pipeline(self.outdir, pin=self.pin, queue_size=self.queue_size, **options)

    def run(self, *, on_ready: Callable[[], None] = lambda: None) -> int:
        """Serve until SIGTERM or SIGINT, then shut down as the module says; return the signal's number.

        ``on_ready`` is called (from another thread) once the pipeline is up.
        Re-raises the error that kept the pipeline from loading, after the
        server has stopped. Signals are caught only when called from the main
        thread; elsewhere, call :meth:`stop` to end it (``run`` then returns 0).
        """
        service = ModelService(self.manifest, name=self.name, open_pipeline=self._open_pipeline,
                               max_batch=self.max_batch, batch_timeout_s=self.batch_timeout_s)
        app = make_app(service, max_body_bytes=self.max_body_bytes, on_ready=on_ready, on_failure=self.stop)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=self.grace_s)
        self._uvicorn = _SignalledServer(config, on_stop=service.stop_accepting)
        self.service = service
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self.socket.close()
        if service.error is not None:
            raise service.error
        return self._uvicorn.stop_signal

    def close(self) -> None:
        """Release the port without serving (for a server that will not :meth:`run`)."""
        self.socket.close()

    def stop(self) -> None:
        """Ask a running server to shut down (from any thread), as a signal would."""
        if self.service is not None:
            self.service.stop_accepting()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True  # polled by uvicorn's main loop


class _SignalledServer(uvicorn.Server):
    """uvicorn's server, stopped by SIGTERM or SIGINT without re-raising the signal afterwards
    (uvicorn does, which would end the process by the signal instead of an exit code)."""

    def __init__(self, config: uvicorn.Config, *, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_stop = on_stop
        self.stop_signal = 0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(sig: int, frame: Any) -> None:
            self.stop_signal = self.stop_signal or sig
            self.on_stop()
            self.handle_exit(sig, frame)  # a second SIGINT forces the exit, as in uvicorn

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
