"""The `onnxsplit` command: subcommands, one-line errors, exit codes.

Exit codes: 0 success (validate: PASSED), 1 a user error or validate FAILED.
"""

from __future__ import annotations

import argparse
import logging
import sys

from onnxsplit.errors import OnnxSplitError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 1, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"onnxsplit: error: {message}\n")
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    from onnxsplit.cli import bench_cmd, costgraph_cmd, profile_cmd, run_cmd, solve_cmd, split_cmd, validate_cmd

    parser = _Parser(prog="onnxsplit", description="Split ONNX models across devices for pipelined inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    split_cmd.add_parser(sub)
    validate_cmd.add_parser(sub)
    profile_cmd.add_parser(sub)
    costgraph_cmd.add_parser(sub)
    solve_cmd.add_parser(sub)
    run_cmd.add_parser(sub)
    bench_cmd.add_parser(sub)
    return parser


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"onnxsplit: {record.levelname.lower()}: {record.getMessage()}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad flag already reported in one line
        return int(exc.code or 0)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger("onnxsplit")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    root.propagate = False
    try:
        return int(args.run(args) or 0)
    except OnnxSplitError as exc:
        sys.stderr.write(f"onnxsplit: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("onnxsplit: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
