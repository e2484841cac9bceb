"""The `onnxsplit` command: subcommands, one-line errors, exit codes.

Exit codes: 0 success (validate: PASSED), 1 a user error or validate FAILED,
130 interrupted (Ctrl-C).

This module imports nothing at the top but ``sys``: everything else loads
inside :func:`main`, within the handler that turns Ctrl-C into one line, so
that an interrupt while modules are still importing prints no traceback.
Each command imports its heavy modules (onnx, onnxruntime, python-mip) in its
``run``, so ``--help`` and ``solve`` start without them.
"""

from __future__ import annotations

import sys


def build_parser():
    """The argparse parser of every subcommand (imports only the light command modules)."""
    from onnxsplit import __version__
    from onnxsplit.cli import (
        bench_cmd, costgraph_cmd, export_cmd, generate_cmd, profile_cmd, report_cmd, run_cmd, serve_cmd, solve_cmd,
        split_cmd, validate_cmd,
    )
    from onnxsplit.cli.common import Parser

    parser = Parser(prog="onnxsplit", description="Split ONNX models across devices for pipelined inference.")
    parser.add_argument("--version", action="version", version=f"onnxsplit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (split_cmd, validate_cmd, profile_cmd, costgraph_cmd, solve_cmd, run_cmd, bench_cmd, serve_cmd,
                    report_cmd, export_cmd, generate_cmd):
        command.add_parser(sub)
    return parser


def _route_warnings(verbose: bool) -> None:
    """Library log records and Python warnings alike reach stderr as ``onnxsplit: <level>: ...``."""
    import logging
    import warnings

    class OneLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"onnxsplit: {record.levelname.lower()}: {record.getMessage()}"

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    root = logging.getLogger("onnxsplit")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (warnings' hook)
        text = " ".join(str(message).split())
        sys.stderr.write(f"onnxsplit: warning: {text}\n")

    warnings.showwarning = show


def _run(argv: list[str] | None) -> int:
    from onnxsplit.errors import OnnxSplitError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad flag already reported in one line
        return int(exc.code or 0)
    _route_warnings(args.verbose)
    try:
        return int(args.run(args) or 0)
    except OnnxSplitError as exc:
        sys.stderr.write(f"onnxsplit: error: {' '.join(str(exc).splitlines())}\n")
        return 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    try:
        return _run(argv)
    except KeyboardInterrupt as exc:
        if argv is None:
            # The process is ending: a second Ctrl-C must not print a traceback on the way out.
            import signal

            signal.signal(signal.SIGINT, signal.SIG_IGN)
        note = getattr(exc, "note", "")
        sys.stderr.write(f"onnxsplit: interrupted{'; ' + note if note else ''}\n")
        sys.stderr.flush()
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
