"""costgraph.json, onnxsplit's own format, and reading either format by name."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices, Link
from onnxsplit.errors import ModelError, UsageError
from onnxsplit.paperformat import load_paper, to_paper

FORMAT = "onnxsplit.costgraph"
VERSION = 1


def _num(x: float) -> float | str:
    # JSON has no infinity; "inf" marks a node a kind cannot run, or unlimited memory.
    return "inf" if math.isinf(x) else x


def _unnum(x: float | str) -> float:
    return math.inf if x == "inf" else float(x)


def _flag(x: Any, node: str) -> bool:
    if not isinstance(x, bool):
        raise ModelError(f"node {node!r}: \"backward\" must be true or false, got {x!r}")
    return x


def to_json(graph: CostGraph, devices: Devices) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "time_unit": "ms",
        "devices": {
            "kinds": [{"name": k.name, "count": k.count, "memory": _num(k.memory), "communicates": k.communicates,
                       "provider": k.provider, "threads": k.threads, "speed": k.speed} for k in devices.kinds],
            "link": {"bandwidth": devices.link.bandwidth, "latency": devices.link.latency},
        },
        "nodes": [
            {"id": v, "name": graph.names[v], **({"op": graph.ops[v]} if graph.ops else {}),
             "compute": {k: _num(graph.compute[k][v]) for k in graph.kinds}, "memory": graph.memory[v],
             **({"attrs": dict(graph.attrs[v])} if graph.attrs else {}),
             **({"backward": graph.backward[v]} if graph.training else {})}
            for v in range(graph.n)
        ],
        "tensors": [{"name": t.name, "producer": t.producer, "consumers": list(t.consumers), "bytes": t.nbytes,
                     "cost": t.cost} for t in graph.tensors],
        "groups": [list(g) for g in graph.groups],
    }


def from_json(doc: dict[str, Any], *, where: str = "costgraph") -> tuple[CostGraph, Devices]:
    if doc.get("format") != FORMAT:
        raise ModelError(f"{where}: not an onnxsplit cost graph (no \"format\": \"{FORMAT}\"; is it in the paper's format?)")
    if doc.get("version") != VERSION:
        raise ModelError(f"{where}: cost graph version {doc.get('version')} is not supported")
    try:
        nodes = sorted(doc["nodes"], key=lambda n: n["id"])
        kinds = list(nodes[0]["compute"]) if nodes else [k["name"] for k in doc["devices"]["kinds"]]
        graph = CostGraph(
            names=tuple(n["name"] for n in nodes),
            compute={k: tuple(_unnum(n["compute"][k]) for n in nodes) for k in kinds},
            memory=tuple(float(n["memory"]) for n in nodes),
            tensors=tuple(Tensor(t["name"], int(t["producer"]), tuple(t["consumers"]), t.get("bytes", 0), float(t["cost"]))
                          for t in doc["tensors"]),
            groups=tuple(tuple(g) for g in doc.get("groups", [])),
            ops=tuple(n["op"] for n in nodes) if nodes and all(n.get("op") for n in nodes) else (),
            attrs=tuple(n["attrs"] for n in nodes) if nodes and all("attrs" in n for n in nodes) else (),
            # A training graph marks its backward nodes; files without the field are inference graphs.
            backward=tuple(_flag(n.get("backward", False), n["name"]) for n in nodes),
        )
        dev = doc["devices"]
        devices = Devices(
            tuple(DeviceKind(k["name"], int(k["count"]), memory=_unnum(k["memory"]), communicates=bool(k["communicates"]),
                             provider=k.get("provider", "CPUExecutionProvider"), threads=int(k.get("threads", 1)),
                             speed=float(k.get("speed", 1.0))) for k in dev["kinds"]),
            link=Link(float(dev["link"]["bandwidth"]), float(dev["link"]["latency"])),
        )
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"{where}: malformed cost graph ({type(exc).__name__}: {exc})") from None
    return graph, devices


def load_costgraph(path: str | Path, *, fmt: str = "auto") -> tuple[CostGraph, Devices]:
    """Read a cost graph in onnxsplit's format or the paper's; 'auto' looks at the file."""
    path = Path(path)
    if fmt not in ("auto", "onnxsplit", "paper"):
        raise UsageError(f"unknown cost graph format {fmt!r} (choose auto, onnxsplit or paper)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read cost graph ({exc})") from None
    if fmt == "auto":
        fmt = "onnxsplit" if isinstance(doc, dict) and doc.get("format") == FORMAT else "paper"
    if fmt == "paper":
        return load_paper(path)
    return from_json(doc, where=str(path))


def dump_costgraph(graph: CostGraph, devices: Devices, *, fmt: str = "onnxsplit") -> dict[str, Any]:
    if fmt == "paper":
        return to_paper(graph, devices)
    if fmt == "onnxsplit":
        return to_json(graph, devices)
    raise UsageError(f"unknown cost graph format {fmt!r} (choose onnxsplit or paper)")
