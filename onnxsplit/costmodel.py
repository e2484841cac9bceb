"""Build a CostGraph from a normalised Model, node times and Devices."""

from __future__ import annotations

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import Devices
from onnxsplit.graphinfo import GraphInfo
from onnxsplit.model import Model, tensor_nbytes
from onnxsplit.shapes import TensorType


def weight_bytes(model: Model, info: GraphInfo) -> list[float]:
    """Initializer bytes per node; an initializer read by several nodes counts at its first reader."""
    sizes = {t.name: tensor_nbytes(t) for t in model.graph.initializer}
    seen: set[str] = set()
    out = []
    for reads in info.reads:
        total = 0
        for name in reads:
            if name in sizes and name not in seen:
                seen.add(name)
                total += sizes[name]
        out.append(float(total))
    return out


def output_bytes(info: GraphInfo, types: dict[str, TensorType]) -> list[float]:
    """Bytes of the tensors each node writes, at the given input shapes (0 where unknown)."""
    out = []
    for writes in info.writes:
        out.append(float(sum((types[o].nbytes or 0) if o in types else 0 for o in writes)))
    return out


def activation_peak(info: GraphInfo, types: dict[str, TensorType], nodes: tuple[int, ...],
                    inputs: tuple[str, ...], outputs: tuple[str, ...]) -> int:
    """Peak bytes of live tensors while a stage runs its nodes in order.

    A tensor is live from when it arrives (stage inputs) or is written until
    its last reader in the stage has run; stage outputs stay live to the end.
    """
    size = {name: (types[name].nbytes or 0) if name in types else 0 for name in list(inputs) + [o for v in nodes for o in info.writes[v]]}
    last_read: dict[str, int] = {}
    for step, v in enumerate(nodes):
        for r in info.reads[v]:
            last_read[r] = step
    keep = set(outputs)
    live = {name for name in inputs}
    current = sum(size[n] for n in live)
    peak = current
    for step, v in enumerate(nodes):
        for o in info.writes[v]:
            if o not in live:
                live.add(o)
                current += size[o]
        peak = max(peak, current)
        for name in [n for n in live if n not in keep and last_read.get(n, -1) <= step]:
            live.discard(name)
            current -= size[name]
    return peak


def build_costgraph(
    model: Model,
    info: GraphInfo,
    devices: Devices,
    times_ms: dict[str, list[float]],
    types: dict[str, TensorType],
) -> CostGraph:
    """The solver's view of the model.

    Tensors made by const nodes cost nothing to hand over: the rewrite copies
    their producers instead. A kind's compute is the profiled time divided by
    its speed factor (already applied in ``times_ms``). A node's memory is its weights plus the tensors it
    writes: additive, so the solvers can sum it, and never below a stage's
    real working set except for the tensors the stage receives, which the
    split checks afterwards with :func:`activation_peak`.
    """
    tensors = []
    for name, producer in info.producer.items():
        consumers = tuple(sorted(set(info.consumers.get(name, ()))))
        if not consumers:
            continue
        t = types.get(name)
        nbytes = (t.nbytes if t is not None else None) or 0
        cost = 0.0 if producer in info.const else devices.link.ms(nbytes)
        tensors.append(Tensor(name=name, producer=producer, consumers=consumers, nbytes=nbytes, cost=cost))
    tensors.sort(key=lambda t: (t.producer, t.name))
    compute = {k.name: tuple(times_ms[k.name]) for k in devices.kinds}
    return CostGraph(
        names=info.names,
        compute=compute,
        memory=tuple(w + a for w, a in zip(weight_bytes(model, info), output_bytes(info, types))),
        tensors=tuple(tensors),
        ops=tuple(n.op_type for n in model.graph.node),
    )
