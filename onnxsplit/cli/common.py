"""Flags shared by commands, declared once; and the command line's output conventions.

Every command builds its parser from the ``add_*`` groups below, so a flag
has the same spelling, meaning and default wherever it appears. The choices
come from :mod:`onnxsplit.choices`, which imports nothing: building the parser
(``onnxsplit --help``) loads neither numpy, onnx, onnxruntime nor python-mip.

Output conventions: results go to stdout (with ``--json``, exactly one JSON
document and nothing else); warnings go to stderr as ``onnxsplit: warning:
...``; user errors are :class:`~onnxsplit.errors.UsageError` and friends,
which ``main`` prints as one ``onnxsplit: error: ...`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsplit.choices import COSTGRAPH_FORMATS, COSTS, ENGINES, MIP_SOLVERS, OBJECTIVES, PLACEMENTS, SOLVERS
from onnxsplit.errors import UsageError

if TYPE_CHECKING:
    from onnxsplit.devices import Devices

__all__ = [
    "COSTGRAPH_FORMATS", "Interrupted", "Parser", "add_costs", "add_devices", "add_engine", "add_inputs", "add_json",
    "add_number", "add_output", "add_runtime", "add_solver", "check_output_file", "console", "engine_options",
    "flag_errors", "input_shapes", "parse_devices", "physical_memory", "print_json", "refuse_beyond_memory", "status",
    "warn", "writing",
]


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 1, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"onnxsplit: error: {message}\n")
        raise SystemExit(1)


# -- numbers ----------------------------------------------------------------------------------------------------------


class _Number(argparse.Action):
    """Store a number after checking it is finite and positive (or zero, where zero means something).

    A refused value ends the parse through ``parser.error`` with one line that
    names the flag, e.g. ``--seconds must be a positive number, got nan``.
    """

    def __init__(self, option_strings: list[str], dest: str, *, kind: type = float, zero: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.kind = kind
        self.zero = zero

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        flag = option_string or self.dest
        try:
            value = self.kind(values)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            parser.error(f"{flag} must be {what}, got {values!r}")
        if self.kind is int:
            least = 0 if self.zero else 1
            if value < least:
                parser.error(f"{flag} must be {'0 or more' if self.zero else 'at least 1'}, got {value}")
        elif not (math.isfinite(value) and (value >= 0 if self.zero else value > 0)):
            parser.error(f"{flag} must be {'zero or a positive' if self.zero else 'a positive'} number, got {values}")
        setattr(namespace, self.dest, value)


def add_number(p: argparse.ArgumentParser | Any, *flags: str, kind: type = float, zero: bool = False,
               default: float | None, help: str, metavar: str | None = None) -> None:
    """A numeric flag that refuses nan, inf, negatives, and zero unless ``zero`` (zero is meaningful)."""
    p.add_argument(*flags, action=_Number, kind=kind, zero=zero, default=default, help=help,
                   metavar=metavar or ("N" if kind is int else "X"))


# -- the shared groups ------------------------------------------------------------------------------------------------


def add_devices(p: argparse.ArgumentParser, *, default: str | None = "2", override: bool = False) -> None:
    """``--devices N|devices.toml`` and ``--device-memory SIZE``.

    ``override`` (solve): the devices default to the cost graph file's, and N
    means N devices of the file's kind.
    """
    g = p.add_argument_group("devices")
    if override:
        g.add_argument("--devices", default=None, metavar="N|FILE",
                       help="override the file's devices: N devices of the file's kind, or a devices.toml")
    else:
        g.add_argument("--devices", default=default, metavar="N|FILE",
                       help=f"number of identical devices (default {default}), or a devices.toml file")
    g.add_argument("--device-memory", default=None, metavar="SIZE",
                   help="memory of each device with --devices N, e.g. 8G (default: unlimited, or the file's)")


def add_inputs(p: argparse.ArgumentParser, *, shapes: bool = True, inputs_required: bool = False,
               inputs_help: str = "representative inputs: .npz of arrays keyed by input name (default: random)"
               ) -> None:
    """``--input-shape NAME:DxD`` (repeatable) and ``--inputs FEEDS.npz``."""
    g = p.add_argument_group("inputs")
    if shapes:
        g.add_argument("--input-shape", action="append", default=[], metavar="NAME:DxD",
                       help="fix an input's shape, e.g. input_ids:4x32 (repeatable)")
    g.add_argument("--inputs", default=None, required=inputs_required, metavar="FEEDS.npz", help=inputs_help)


def add_costs(p: argparse.ArgumentParser) -> None:
    """``--costs measure|estimate`` and ``--profile PROFILE.json``."""
    g = p.add_argument_group("costs")
    g.add_argument("--costs", default=COSTS[0], choices=COSTS,
                   help="measure node times with onnxruntime (cached) or estimate them from FLOPs (default measure)")
    g.add_argument("--profile", default=None, metavar="PROFILE.json",
                   help="node times from this profile.json (e.g. measured on the target machine)")


def add_output(p: argparse.ArgumentParser, *, what: str, required: bool = True) -> None:
    """``-o/--output PATH`` and ``--force`` (replace PATH if it exists; without it an existing PATH is refused)."""
    g = p.add_argument_group("output")
    g.add_argument("-o", "--output", required=required, default=None, metavar="PATH", help=what)
    g.add_argument("--force", action="store_true", help="replace the output if it exists")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout, nothing else")


def add_solver(p: argparse.ArgumentParser, *, solvers: tuple[str, ...] = SOLVERS, mip: bool = False) -> None:
    """``--solver``, ``--objective``, ``--time-limit`` (and ``--mip-solver`` where the integer program's backend can be chosen)."""
    g = p.add_argument_group("solver")
    g.add_argument("--solver", default="auto", choices=solvers,
                   help="placement solver (default auto: the exact DP, falling back to the integer program)")
    g.add_argument("--objective", default=OBJECTIVES[0], choices=OBJECTIVES,
                   help="minimise the bottleneck stage (throughput, default) or one sample's time (latency)")
    add_number(g, "--time-limit", default=60.0, metavar="S", help="seconds for solvers that can stop early (default 60)")
    if mip:
        g.add_argument("--mip-solver", default=MIP_SOLVERS[0], choices=MIP_SOLVERS,
                       help="integer program backend (default cbc, bundled; highs needs highspy and highsbox)")


def add_runtime(p: argparse.ArgumentParser) -> None:
    """``--no-pin``."""
    g = p.add_argument_group("runtime")
    g.add_argument("--no-pin", action="store_true", help="do not pin stage workers to cores")


def add_engine(p: argparse.ArgumentParser) -> None:
    """``--engine inproc|ray``, ``--address ADDR``, ``--placement pack|spread|strict-spread``, ``--ray-devices FILE``.

    Read them back with :func:`engine_options`, which gives the keyword
    arguments of :class:`onnxsplit.runtime.Pipeline` besides the folder.
    """
    g = p.add_argument_group("engine")
    g.add_argument("--engine", default=ENGINES[0], choices=ENGINES,
                   help="run the stages as threads in this process (inproc, default) or as Ray actors (ray)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS if set, else a local one)")
    g.add_argument("--placement", default=PLACEMENTS[0], choices=PLACEMENTS,
                   help="how Ray spreads the stages over nodes: pack (default), spread, strict-spread "
                        "(each stage on its own node)")
    g.add_argument("--ray-devices", default=None, metavar="FILE",
                   help="a devices.toml whose kinds' ray_resources / ray_labels pin each stage to Ray nodes")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine flags of :func:`add_engine` as Pipeline keyword arguments; Ray flags without ``--engine ray`` are refused."""
    if args.engine != "ray":
        given = [flag for flag, value in (("--address", args.address), ("--ray-devices", args.ray_devices),
                                          ("--placement", None if args.placement == PLACEMENTS[0] else 1))
                 if value is not None]
        if given:
            raise UsageError(f"{given[0]} applies to --engine ray")
        return {"engine": args.engine}
    options: dict[str, Any] = {"engine": "ray", "address": args.address, "placement": args.placement}
    if args.ray_devices is not None:
        from onnxsplit.devicefile import load_devices

        options["devices"] = load_devices(args.ray_devices)
    return options


# -- reading the shared flags -----------------------------------------------------------------------------------------


def parse_devices(text: str, *, memory: str | None = None) -> Devices:
    """``--devices N`` (N identical devices) or ``--devices devices.toml``."""
    from onnxsplit.devicefile import load_devices
    from onnxsplit.devices import identical_devices
    from onnxsplit.units import parse_bytes

    try:
        count = int(text)
    except ValueError:
        if text.endswith(".toml") or Path(text).is_file():
            if memory:
                raise UsageError("--device-memory applies to --devices N; set memory in the devices file") from None
            return load_devices(text)
        raise UsageError(f"--devices {text!r}: expected a number of devices or a devices.toml file") from None
    if count < 1:
        raise UsageError(f"--devices must be at least 1, got {count}")
    with flag_errors("--device-memory"):
        size = parse_bytes(memory) if memory else math.inf
    return identical_devices(count, memory=size)


def input_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` values as name -> shape."""
    from onnxsplit.shapes import parse_input_shapes

    with flag_errors("--input-shape"):
        return parse_input_shapes(specs)


@contextlib.contextmanager
def flag_errors(flag: str) -> Iterator[None]:
    """Prefix a UsageError raised inside with ``flag``: the library names the value at fault, the CLI the flag."""
    try:
        yield
    except UsageError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def check_output_file(path: str | os.PathLike, *, force: bool, flag: str = "-o",
                      creates_folder: bool = False) -> Path:
    """Refuse, before any work, an output file that cannot or must not be written.

    After it returns: ``path`` is not a folder and does not exist unless
    ``force``; its folder exists and is writable, or (``creates_folder``: the
    writer makes it) could be created, no file standing in its way.
    """
    out = Path(path)
    parent = out.parent
    if out.is_dir():
        raise UsageError(f"{flag} {out}: is a folder, not a file")
    if out.exists() or out.is_symlink():
        if not force:
            raise UsageError(f"{flag} {out}: the file exists (use --force to replace it)")
    if not parent.exists():
        for above in (parent, *parent.parents):
            if above.exists() and not above.is_dir():
                raise UsageError(f"{flag} {out}: {above} is a file, not a folder")
            if above.exists():
                break
        if creates_folder:
            return out
        raise UsageError(f"{flag} {out}: folder {parent} does not exist")
    if not parent.is_dir():
        raise UsageError(f"{flag} {out}: {parent} is {'a file, ' if parent.is_file() else ''}not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {out}: folder {parent} is not writable")
    return out


@contextlib.contextmanager
def writing(path: Path, *, flag: str = "-o") -> Iterator[None]:
    """Turn an OS error while writing ``path`` (a read-only or full disk, say) into one line."""
    try:
        yield
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write: {exc.strerror or exc}") from None


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def refuse_beyond_memory(what: str, nbytes: float) -> None:
    """UsageError when ``nbytes`` (of ``what``) exceed the machine's physical memory: better now than MemoryError later."""
    total = physical_memory()
    if total is not None and nbytes > total:
        raise UsageError(f"{what} would take {_size(nbytes)}, more than this machine's {_size(total)} of memory")


# -- output -----------------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready: non-finite floats as the strings "inf", "-inf", "nan" (as in costgraph.json), since JSON has none."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def print_json(doc: Any) -> None:
    """Write ``doc`` to stdout as one strict JSON document (what ``--json`` promises)."""
    import json

    sys.stdout.write(json.dumps(_plain(doc), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """A warning for the user: one line on stderr, in the same format as logged warnings."""
    sys.stderr.write(f"onnxsplit: warning: {message}\n")


def console(*, stderr: bool = False):
    """A rich console at least 120 columns wide, so tables stay whole in logs and pipes."""
    from rich.console import Console

    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=max(probe.width, 120))


def _spinner_shows() -> bool:
    """Whether rich would draw a spinner on stderr (its own test: TTY_COMPATIBLE, FORCE_COLOR, a tty, a notebook)."""
    forced = os.environ.get("TTY_COMPATIBLE", "")
    if forced in ("0", "1"):
        return forced == "1"
    if "FORCE_COLOR" in os.environ or "IPython" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def status(message: str):
    """A spinner on stderr while a long step runs (drawn only on a terminal).

    Where rich would draw nothing (stderr a pipe or a file), it is not even
    imported: a scripted ``onnxsplit solve --json`` then starts without rich.
    """
    if not _spinner_shows():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a note for the user (e.g. that the work had already completed)."""

    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


def add_max_seq_len(p: argparse.ArgumentParser | Any) -> None:
    """``--max-seq-len N``: the most positions a decoder's cache holds (split sizes the caches at it, generate
    fails a sequence that would pass it)."""
    add_number(p, "--max-seq-len", kind=int, default=None, metavar="N",
               help="the most positions a cache holds: split counts each stage's caches at this length in its "
                    "memory, generation past it fails (default: not counted, no limit)")
