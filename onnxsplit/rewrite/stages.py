"""Decide what each stage holds: nodes, inputs, outputs, initializers.

Pure bookkeeping over GraphInfo; nothing here touches protobuf. The policy
(which stage a node goes to) arrives as a mapping; this module only checks
that it can be cut (no stage feeds an earlier one) and orders stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxsplit.dag import topological_order
from onnxsplit.errors import PlanError
from onnxsplit.graphinfo import GraphInfo


@dataclass(frozen=True)
class StageSpec:
    """One stage: node indices (topological), and tensors in and out, in deterministic order."""

    index: int
    nodes: tuple[int, ...]
    own: tuple[int, ...]  # nodes placed here (the rest are copied const nodes)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    initializers: tuple[str, ...]
    label: int | None = None  # the stage number the plan gave these nodes; None for a stage of const nodes only


@dataclass(frozen=True)
class Cut:
    stages: tuple[StageSpec, ...]
    source: dict[str, int | None]  # stage input name -> producing stage, None for a graph input
    consumers: dict[str, tuple[int, ...]]  # stage output name -> stages that read it
    output_stage: dict[str, int]  # graph output -> stage that makes it


def _stage_cycle(edges: dict[tuple[int, int], tuple[int, int]], names: tuple[str, ...]) -> str:
    """Describe one cycle among stages, naming a node pair for each step."""
    succ: dict[int, list[int]] = {}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
    state: dict[int, int] = {}
    path: list[int] = []

    def dfs(u: int) -> list[int] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(succ.get(u, [])):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state:
                found = dfs(v)
                if found:
                    return found
        state[u] = 2
        path.pop()
        return None

    for start in sorted(succ):
        if start not in state:
            cycle = dfs(start)
            if cycle:
                steps = []
                for a, b in zip(cycle, cycle[1:]):
                    p, c = edges[(a, b)]
                    steps.append(f"{names[p]!r} (stage {a}) feeds {names[c]!r} (stage {b})")
                return "; ".join(steps)
    return ""


def dead_nodes(info: GraphInfo) -> frozenset[int]:
    """Nodes no graph output depends on: nothing reads their outputs, or only other dead nodes do."""
    live: set[int] = set()
    stack = [info.producer[o] for o in info.outputs if o in info.producer]
    while stack:
        v = stack.pop()
        if v in live:
            continue
        live.add(v)
        stack.extend(info.producer[r] for r in info.reads[v] if r in info.producer)
    return frozenset(range(len(info.names))) - live


def _attach_dead(info: GraphInfo, dead: frozenset[int], final: dict[int, int]) -> None:
    """Give every dead non-const node the latest stage among its producers (the first stage if none).

    A dead node cannot change any output, so where it runs is free: beside
    its inputs it needs no hand-off of its own and never makes a stage that
    outputs nothing. Its readers are dead too and come later in topological
    order, so no tensor flows backwards.
    """
    for v in sorted(dead - info.const):
        producers = [final[info.producer[r]] for r in info.reads[v] if info.producer.get(r) in final]
        final[v] = max(producers, default=0)


def cut_stages(info: GraphInfo, stage_of: dict[int, int]) -> Cut:
    """Stages from a node -> stage mapping over the non-const nodes.

    Stage numbers may be any integers; stages are renumbered 0.. in an order
    where tensors only flow forward. Raises PlanError when stages would feed
    each other, naming the nodes that cause it.

    Dead nodes (see :func:`dead_nodes`) do not keep the stage the plan gave
    them: each joins the latest stage among its producers
    (:func:`_attach_dead`), so a stage of dead nodes alone, which would have
    no outputs, never exists; the stage count drops instead. A model whose
    nodes are all const (a lone Constant) is one stage of those nodes.
    After: every stage has at least one output.
    """
    missing = [info.names[v] for v in range(len(info.names)) if v not in info.const and v not in stage_of]
    if missing:
        raise PlanError(f"the plan does not place node {missing[0]!r} ({len(missing)} unplaced)")
    dead = dead_nodes(info)
    placed = {v: s for v, s in stage_of.items() if v not in info.const and v not in dead}
    edges: dict[tuple[int, int], tuple[int, int]] = {}
    for v, s in sorted(placed.items()):
        for r in info.reads[v]:
            p = info.producer.get(r)
            if p is None or p not in placed:
                continue
            if placed[p] != s:
                edges.setdefault((placed[p], s), (p, v))
    labels = sorted(set(placed.values()))
    order, stuck = topological_order(labels, edges)
    if stuck:
        raise PlanError(f"the plan makes stages feed each other: {_stage_cycle(edges, info.names)}")
    renumber = {s: i for i, s in enumerate(order)}
    final = {v: renumber[s] for v, s in placed.items()}
    _attach_dead(info, dead, final)

    nstages = max(len(order), 1)  # all nodes const: one stage holds them
    stage_labels: list[int | None] = [*order] if order else [None]
    own: list[list[int]] = [[] for _ in range(nstages)]
    for v in sorted(final):
        own[final[v]].append(v)
    # Graph outputs made by const nodes come from the last stage.
    const_outputs = [info.producer[o] for o in info.outputs if info.producer.get(o) in info.const]

    output_stage: dict[str, int] = {}
    for o in info.outputs:
        p = info.producer.get(o)
        if p is None:
            raise PlanError(f"graph output {o!r} is a graph input or an initializer; onnxsplit cannot route it")
        output_stage[o] = final[p] if p in final else nstages - 1

    stages = []
    readers: dict[str, set[int]] = {}
    specs_io = []
    for s in range(nstages):
        extra = const_outputs if s == nstages - 1 else []
        consts = info.const_closure(own[s]) | set(extra) | info.const_closure(extra)
        nodes = sorted(set(own[s]) | consts)
        produced = {o for v in nodes for o in _outputs(info, v)}
        inputs: list[str] = []
        inits: list[str] = []
        for v in nodes:
            for r in info.reads[v]:
                if r in info.initializers:
                    if r not in inits:
                        inits.append(r)
                elif r not in produced and r not in inputs:
                    inputs.append(r)
        for r in inputs:
            readers.setdefault(r, set()).add(s)
        specs_io.append((nodes, inputs, inits))

    source: dict[str, int | None] = {}
    consumers: dict[str, tuple[int, ...]] = {}
    for s, (nodes, inputs, inits) in enumerate(specs_io):
        outputs = []
        for v in own[s]:
            for o in _outputs(info, v):
                if output_stage.get(o) == s or readers.get(o, set()) - {s}:
                    outputs.append(o)
        for v in nodes:
            if v in info.const:
                outputs.extend(o for o in _outputs(info, v) if output_stage.get(o) == s and o not in outputs)
        for o in outputs:
            consumers[o] = tuple(sorted(readers.get(o, set()) - {s}))
        for r in inputs:
            p = info.producer.get(r)
            source[r] = None if p is None else final[p]
        if not outputs:
            raise RuntimeError(f"stage {s} has no outputs")  # a bug: only dead nodes make no outputs
        stages.append(StageSpec(s, tuple(nodes), tuple(own[s]), tuple(inputs), tuple(outputs), tuple(inits),
                                stage_labels[s]))
    for r, src in source.items():
        if src is None and r not in info.inputs:
            raise PlanError(f"tensor {r!r} is read but nothing produces it")
    return Cut(tuple(stages), source, consumers, output_stage)


def _outputs(info: GraphInfo, v: int) -> tuple[str, ...]:
    return info.writes[v]
