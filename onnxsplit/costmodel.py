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


def build_costgraph(
    model: Model,
    info: GraphInfo,
    devices: Devices,
    times_ms: list[float],
    types: dict[str, TensorType],
) -> CostGraph:
    """The solver's view of the model.

    Tensors made by const nodes cost nothing to hand over: the rewrite copies
    their producers instead. A kind's compute is the profiled time divided by
    its speed factor.
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
    compute = {k.name: tuple(t / k.speed for t in times_ms) for k in devices.kinds}
    return CostGraph(
        names=info.names,
        compute=compute,
        memory=tuple(weight_bytes(model, info)),
        tensors=tuple(tensors),
        ops=tuple(n.op_type for n in model.graph.node),
    )
