"""onnxruntime's errors as one line.

onnxruntime reports a problem twice: as an exception, and as a coloured,
multi-line entry in its own log on the terminal. Sessions keep the log
quiet (:data:`onnxsplit.ortutil.QUIET`) and every onnxruntime exception
becomes one :class:`~onnxsplit.errors.ModelError` line that names the node,
when onnxruntime names one or the model lets us find it (:func:`ort_errors`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import onnx

from onnxsplit.errors import ModelError

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
