"""`onnxsplit serve`: serve a split folder over HTTP with the KServe v2 / Triton inference protocol."""

from __future__ import annotations

import argparse
import sys

from onnxsplit.cli import common
from onnxsplit.errors import UsageError

DEFAULT_BATCH_TIMEOUT_US = 1000.0


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the split over HTTP (KServe v2 / Triton protocol)")
    p.add_argument("outdir", help="a folder written by `onnxsplit split`")
    common.add_engine(p)
    g = p.add_argument_group("endpoint")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    common.add_number(g, "--port", kind=int, zero=True, default=8000, help="port to listen on; 0 picks a free one "
                      "(default 8000)")
    g.add_argument("--name", default=None, help="the model's name in URLs (default: the source model's file stem)")
    g.add_argument("--max-body-bytes", default="64MiB", metavar="B",
                   help="largest request body, e.g. 64MiB; larger ones get 413 (default 64MiB)")
    g = p.add_argument_group("dynamic batching")
    common.add_number(g, "--max-batch", kind=int, default=1,
                      help="join requests into batches of up to N samples along dim 0 (default 1: no batching)")
    common.add_number(g, "--batch-timeout-us", zero=True, default=None, metavar="T",
                      help=f"microseconds a request waits for others to join it (default {DEFAULT_BATCH_TIMEOUT_US:g})")
    common.add_runtime(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.port > 65535:
        raise UsageError(f"--port must be at most 65535, got {args.port}")
    if args.batch_timeout_us is not None and args.max_batch == 1:
        raise UsageError("--batch-timeout-us applies only with --max-batch above 1")
    from onnxsplit.units import parse_bytes

    with common.flag_errors("--max-body-bytes"):
        max_body = parse_bytes(args.max_body_bytes)
    if max_body < 1:
        raise UsageError(f"--max-body-bytes must be at least 1 byte, got {args.max_body_bytes}")
    if args.max_batch > 1:
        from onnxsplit.manifest import load_manifest
        from onnxsplit.serve.batching import check_batchable

        manifest = load_manifest(args.outdir)
        with common.flag_errors("--max-batch"):
            check_batchable(manifest.inputs, manifest.outputs, where=args.outdir)
    try:
        from onnxsplit.serve.server import Server, check_model_name
    except ImportError as exc:  # the web stack is an optional extra
        raise UsageError(f"onnxsplit serve needs starlette and uvicorn ({exc}): pip install 'onnxsplit[serve]'") \
            from None

    if args.name is not None:
        with common.flag_errors("--name"):
            check_model_name(args.name)
    timeout_us = DEFAULT_BATCH_TIMEOUT_US if args.batch_timeout_us is None else args.batch_timeout_us
    options = common.engine_options(args)
    server = Server(args.outdir, host=args.host, port=args.port, name=args.name, engine=options.pop("engine"),
                    max_batch=args.max_batch, batch_timeout_s=timeout_us * 1e-6, max_body_bytes=int(max_body),
                    pin=not args.no_pin, pipeline_options=options)
    _route_server_logs()
    stages = len(server.manifest.stages)
    batching = f", batches of up to {args.max_batch} within {timeout_us:g} us" if args.max_batch > 1 else ""
    _say(f"serving {server.name!r} ({stages} stages, {args.engine}{batching}) at {server.url}"
         f"/v2/models/{server.name}; loading")
    stopped_by = server.run(on_ready=lambda: _say(f"ready: {server.url}/v2/models/{server.name}/infer"))
    import signal

    if stopped_by == signal.SIGINT:
        raise common.Interrupted("the server stopped after answering the requests it had taken")
    _say("stopped")
    return 0


def _say(line: str) -> None:
    """A status line on stdout, flushed at once (whoever started the server may be waiting for it)."""
    sys.stdout.write(f"onnxsplit: {line}\n")
    sys.stdout.flush()


def _route_server_logs() -> None:
    """uvicorn's own warnings and errors (a request cut off at shutdown, a bug's traceback) on stderr,
    marked as the server's so they do not read as the command failing."""
    import logging

    class ServerLines(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = f"onnxsplit: server {record.levelname.lower()}: {' '.join(record.getMessage().split())}"
            return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ServerLines())
    theirs = logging.getLogger("uvicorn")
    theirs.handlers[:] = [handler]
    theirs.setLevel(logging.INFO if logging.getLogger("onnxsplit").level <= logging.INFO else logging.WARNING)
    theirs.propagate = False
