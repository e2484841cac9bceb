"""The paper's cost-graph format (see the reference graphs' README).

Nodes carry ``cpuLatency``, ``fpgaLatency``, ``size``, ``supportedOnFpga``,
``isBackwardNode`` (training graphs) and an optional ``colorClass``; edges
carry ``cost``, the time to move the source node's output. Devices come from
the file: ``maxFPGAs`` accelerators of ``maxSizePerFPGA`` bytes (kind
``acc``) and ``maxCPUs`` CPUs (kind ``cpu``), which pay no communication.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.dag import UnionFind, topological_order
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import ModelError

ACC = "acc"
CPU = "cpu"


def _topological(ids: list[int], edges: list[tuple[int, int]], where: str) -> list[int]:
    order, stuck = topological_order(ids, edges)
    if stuck:
        raise ModelError(f"{where}: the graph has a cycle through nodes {stuck[:5]}")
    return order


def paper_devices(doc: dict[str, Any]) -> Devices:
    return Devices(
        (
            DeviceKind(ACC, int(doc.get("maxFPGAs", 0)), memory=float(doc.get("maxSizePerFPGA", math.inf))),
            DeviceKind(CPU, int(doc.get("maxCPUs", 0)), communicates=False),
        )
    )


def parse_paper(doc: dict[str, Any], *, where: str = "graph") -> tuple[CostGraph, Devices]:
    """CostGraph and Devices from a paper-format document.

    Node names are the original ids (as strings), so plans can be reported
    and expert splits read in the file's own numbering. ``isBackwardNode``
    marks a training graph's backward nodes; colour classes become groups.
    """
    try:
        nodes = {int(n["id"]): n for n in doc["nodes"]}
        edges = [(int(e["sourceId"]), int(e["destId"]), float(e["cost"])) for e in doc["edges"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: not a paper-format cost graph ({exc})") from None
    for u, v, _ in edges:
        if u not in nodes or v not in nodes:
            raise ModelError(f"{where}: edge {u}->{v} names a node that does not exist")
    order = _topological(sorted(nodes), [(u, v) for u, v, _ in edges], where)
    index = {nid: i for i, nid in enumerate(order)}
    acc, cpu, memory, backward = [], [], [], []
    for nid in order:
        n = nodes[nid]
        try:
            backward.append(bool(n.get("isBackwardNode", False)))
            supported = bool(n.get("supportedOnFpga", True))
            acc.append(float(n["fpgaLatency"]) if supported else math.inf)
            cpu.append(float(n["cpuLatency"]))
            memory.append(float(n.get("size", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: node {nid}: missing or non-numeric field ({type(exc).__name__}: {exc})") from None
    edge_sizes = any("size" in e for e in doc["edges"])
    out: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for u, v, c in edges:
        out[u].append((v, c))
    # Largest edge size per source, in one pass (a scan per source is quadratic on big graphs).
    biggest: dict[int, float] = {}
    for e in doc["edges"] if edge_sizes else ():
        u, size = int(e["sourceId"]), float(e.get("size", 0))
        biggest[u] = max(biggest[u], size) if u in biggest else size
    tensors = []
    for u in sorted(out, key=index.__getitem__):
        consumers = tuple(sorted({index[v] for v, _ in out[u]}))
        # The format promises one cost per source; the max is the safe reading if a file breaks that.
        cost = max(c for _, c in out[u])
        nbytes = biggest[u] if edge_sizes else 0
        tensors.append(Tensor(name=str(u), producer=index[u], consumers=consumers, cost=cost, nbytes=nbytes))
    classes: dict[Any, list[int]] = defaultdict(list)
    for nid in order:
        if nodes[nid].get("colorClass") is not None:
            classes[nodes[nid]["colorClass"]].append(index[nid])
    groups = tuple(tuple(g) for _, g in sorted(classes.items(), key=lambda kv: min(kv[1])) if len(g) > 1)
    try:
        graph = CostGraph(
            names=tuple(str(nid) for nid in order),
            compute={ACC: tuple(acc), CPU: tuple(cpu)},
            memory=tuple(memory),
            tensors=tuple(tensors),
            groups=groups,
            attrs=tuple(dict(nodes[nid]) for nid in order),
            backward=tuple(backward),
        )
        devices = paper_devices(doc)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: malformed device fields ({type(exc).__name__}: {exc})") from None
    return graph, devices


def load_paper(path: str | Path) -> tuple[CostGraph, Devices]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read cost graph ({exc})") from None
    return parse_paper(doc, where=str(path))


def load_expert_split(path: str | Path, graph: CostGraph) -> tuple[list[int], list[str]]:
    """An expert split file as (node -> device slot, kind of each slot).

    Slots list the file's accelerators first, then its CPUs. In a training
    graph a backward node the file leaves out goes to the slot of its colour
    class (the paper's rule: a split of the forward nodes is completed by
    the classes).
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read expert split ({exc})") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: an expert split is an object with \"fpgas\" and \"cpus\" lists")
    index = {name: i for i, name in enumerate(graph.names)}
    slot_of = [-1] * graph.n
    kinds: list[str] = []
    for key, kind in (("fpgas", ACC), ("cpus", CPU)):
        devs = doc.get(key, [])
        if not isinstance(devs, list) or not all(isinstance(d, dict) and isinstance(d.get("nodes", []), list) for d in devs):
            raise ModelError(f"{path}: {key!r} must be a list of objects with a \"nodes\" list")
        for dev in devs:
            slot = len(kinds)
            kinds.append(kind)
            for nid in dev.get("nodes", []):
                if str(nid) not in index:
                    raise ModelError(f"{path}: node {nid} is not in the graph")
                slot_of[index[str(nid)]] = slot
    if graph.training:
        _place_backward(graph, slot_of, path)
    missing = [graph.names[v] for v in range(graph.n) if slot_of[v] < 0]
    if missing:
        raise ModelError(f"{path}: nodes {missing[:5]} are not placed")
    return slot_of, kinds


def _place_backward(graph: CostGraph, slot_of: list[int], path: str | Path) -> None:
    """Put each unplaced backward node on the one slot its colour class has; ModelError if none or several."""
    classes = UnionFind(graph.n)
    for group in graph.groups:
        for v in group[1:]:
            classes.union(group[0], v)
    slots: dict[int, set[int]] = defaultdict(set)
    for v in range(graph.n):
        if slot_of[v] >= 0:
            slots[classes.find(v)].add(slot_of[v])
    for v in range(graph.n):
        if slot_of[v] >= 0 or not graph.backward[v]:
            continue
        found = slots.get(classes.find(v), set())
        if len(found) != 1:
            what = "no node of its colour class is placed" if not found else "its colour class is placed on several devices"
            raise ModelError(f"{path}: backward node {graph.names[v]} is not placed and {what}")
        slot_of[v] = next(iter(found))


def to_paper(graph: CostGraph, devices: Devices) -> dict[str, Any]:
    """The paper's format. Nodes keep the fields they were read with; others are derived.

    Devices that communicate are written as accelerators (the first such
    kind), devices that do not as CPUs.
    """
    talking = [k for k in devices.kinds if k.communicates]
    quiet = [k for k in devices.kinds if not k.communicates]
    acc_kind = talking[0].name if talking else graph.kinds[0]
    cpu_kind = quiet[0].name if quiet else acc_kind
    # Groups are colour classes; a graph read from the paper's format has them in its attrs already.
    color: dict[int, int] = {}
    if not any("colorClass" in a for a in graph.attrs):
        for i, group in enumerate(graph.groups):
            for v in group:
                color.setdefault(v, i)
    nodes = []
    for v in range(graph.n):
        attrs = dict(graph.attrs[v]) if graph.attrs else {}
        fpga = graph.compute[acc_kind][v]
        node = {
            "name": attrs.get("name", graph.names[v]),
            "id": attrs.get("id", v),
            "supportedOnFpga": attrs.get("supportedOnFpga", math.isfinite(fpga)),
            "cpuLatency": attrs.get("cpuLatency", graph.compute[cpu_kind][v]),
            "fpgaLatency": attrs.get("fpgaLatency", fpga if math.isfinite(fpga) else 0.0),
            # The graph's flag decides; the file's own spelling (0/1) is kept when it agrees.
            "isBackwardNode": attrs["isBackwardNode"] if bool(attrs.get("isBackwardNode")) == graph.is_backward(v)
            and "isBackwardNode" in attrs else graph.is_backward(v),
            "size": attrs.get("size", graph.memory[v]),
            **({"colorClass": color[v]} if v in color else {}),
        }
        for key, value in attrs.items():
            node.setdefault(key, value)
        nodes.append(node)
    ids = [n["id"] for n in nodes]
    edges = [{"sourceId": ids[t.producer], "destId": ids[c], "cost": t.cost, "size": t.nbytes}
             for t in graph.tensors for c in t.consumers]
    acc = next((k for k in devices.kinds if k.name == acc_kind), devices.kinds[0])
    cpus = sum(k.count for k in quiet)
    return {"maxSizePerFPGA": acc.memory if math.isfinite(acc.memory) else 1e300, "maxFPGAs": acc.count,
            "maxCPUs": cpus, "nodes": nodes, "edges": edges}
