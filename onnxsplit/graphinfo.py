"""Who produces and who reads each tensor of a normalised model's main graph."""

from __future__ import annotations

from dataclasses import dataclass

from onnxsplit.model import NONDETERMINISTIC, Model, node_reads, node_subgraphs


@dataclass(frozen=True)
class GraphInfo:
    """Dataflow facts of the main graph, node indices in topological order.

    ``const`` holds nodes whose value depends on no graph input (Constant,
    and nodes fed only by initializers and other const nodes): the rewrite
    copies them into every stage that needs them instead of handing their
    outputs over.
    """

    names: tuple[str, ...]
    reads: tuple[tuple[str, ...], ...]
    writes: tuple[tuple[str, ...], ...]
    producer: dict[str, int]
    consumers: dict[str, tuple[int, ...]]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    initializers: frozenset[str]
    const: frozenset[int]

    def const_closure(self, node_ids) -> set[int]:
        """The const nodes that the given nodes need, transitively."""
        need: set[int] = set()
        stack = [r for v in node_ids for r in self.reads[v]]
        while stack:
            name = stack.pop()
            p = self.producer.get(name)
            if p is not None and p in self.const and p not in need:
                need.add(p)
                stack.extend(self.reads[p])
        return need


def graph_info(model: Model) -> GraphInfo:
    graph = model.graph
    inits = frozenset(model.initializer_names)
    producer: dict[str, int] = {}
    reads = []
    consumers: dict[str, list[int]] = {}
    const: set[int] = set()
    for i, node in enumerate(graph.node):
        r = tuple(node_reads(node))
        reads.append(r)
        for name in r:
            consumers.setdefault(name, []).append(i)
        is_const = (
            node.op_type not in NONDETERMINISTIC
            and not node_subgraphs(node)
            and all(name in inits or producer.get(name) in const for name in r)
        )
        if is_const:
            const.add(i)
        for o in node.output:
            if o:
                producer[o] = i
    return GraphInfo(
        names=tuple(n.name for n in graph.node),
        reads=tuple(reads),
        writes=tuple(tuple(o for o in n.output if o) for n in graph.node),
        producer=producer,
        consumers={k: tuple(v) for k, v in consumers.items()},
        inputs=tuple(i.name for i in model.inputs),
        outputs=tuple(o.name for o in graph.output),
        initializers=inits,
        const=frozenset(const),
    )
