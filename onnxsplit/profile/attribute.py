"""Attribute the kernels of the graph onnxruntime ran to the original nodes they computed.

onnxruntime rewrites a graph before it runs it: it fuses nodes (Conv+Relu,
MatMul+Add -> Gemm, the Erf chain -> Gelu), folds constants, drops no-ops,
changes layouts (NCHWc) and adds nodes of its own (reorders, casts, copies).
Its profiler times the kernels of that optimized graph; the solver needs
times for the original nodes. The profiling session saves the graph it ran,
and kernels are related to original nodes through tensor names, which
onnxruntime keeps for every original tensor it still computes:

1. A kernel is *anchored* to the original tensors it computes: its outputs
   with original names, the outputs of the original node whose name it
   kept, and, by onnxruntime's naming conventions, the tensor an NCHWc node
   is named after or a float16 tensor it computes in float32.
2. An anchored kernel *covers* the original nodes between its anchors and
   the original tensors that still exist: walking back from its anchors
   through tensors that are gone finds every node it absorbed. A kernel
   reading an input its cover does not need also computed what combines
   that input with its result (a Conv that does the residual Add and Relu).
3. A kernel with no anchor (a reorder, a cast, a copy, the body of an
   inlined function) covers what the nearest anchored kernels downstream
   cover, since its work exists for theirs; upstream if nothing is.

A kernel's time is split over the nodes it covers in proportion to their
estimated FLOPs (:func:`attribute`); how the profile uses the shares, and
what happens to nodes no kernel covers, is up to
:mod:`onnxsplit.profile.measure`.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import onnx

from onnxsplit.graphinfo import GraphInfo
from onnxsplit.model import node_reads

# onnxruntime's InsertCastTransformer computes float16 tensor T in float32 as this prefix + T.
_TENSOR_PREFIXES = ("InsertedPrecisionFreeCast_",)
# The NchwcTransformer names the node that computes tensor T in blocked layout T + "_nchwc".
_NODE_SUFFIXES = ("_nchwc",)
# Graph::GenerateNodeName makes a taken name unique with this suffix.
_UNIQUIFIER = re.compile(r"_token_\d+$")
# Activations onnxruntime fuses into the kernel before them (Conv, Gemm, NCHWc Conv with a residual Sum).
_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "Elu", "Softplus"})


@dataclass(frozen=True)
class Kernel:
    """One node of the graph onnxruntime ran."""

    name: str
    op_type: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


def kernels_of(graph: onnx.GraphProto) -> list[Kernel]:
    return [Kernel(n.name, n.op_type, tuple(node_reads(n)), tuple(o for o in n.output if o)) for n in graph.node]


@dataclass(frozen=True)
class Attribution:
    """``covers[k]``: the original node indices kernel k computed (empty: unknown).

    ``shares[k]`` pairs each with its fraction of the kernel's time (they sum
    to 1). ``folded``: original nodes no kernel covers whose values were
    computed once, when the session was built.
    """

    covers: tuple[frozenset[int], ...]
    shares: tuple[tuple[tuple[int, float], ...], ...]
    folded: frozenset[int]


def _original_tensor(t: str, info: GraphInfo) -> str | None:
    """The original tensor (made by an original node) that optimized tensor ``t`` holds, if known."""
    if t in info.producer:
        return t
    for prefix in _TENSOR_PREFIXES:
        if t.startswith(prefix) and t[len(prefix):] in info.producer:
            return t[len(prefix):]
    return None


def _anchors(kernels: Sequence[Kernel], info: GraphInfo) -> list[set[str]]:
    index = {name: i for i, name in enumerate(info.names)}
    anchors = []
    for k in kernels:
        found = {m for t in k.writes if (m := _original_tensor(t, info)) is not None}
        if k.name in index:
            found.update(info.writes[index[k.name]])
        else:
            base = _UNIQUIFIER.sub("", k.name)
            for suffix in _NODE_SUFFIXES:
                if base.endswith(suffix) and base[: -len(suffix)] in info.producer:
                    found.add(base[: -len(suffix)])
        anchors.append(found)
    return anchors


def _topological(kernels: Sequence[Kernel]) -> list[int]:
    """Kernel indices in dependency order, ties in file order."""
    producer = {t: k for k, kern in enumerate(kernels) for t in kern.writes}
    users: list[list[int]] = [[] for _ in kernels]
    indeg = [0] * len(kernels)
    for k, kern in enumerate(kernels):
        for j in {producer[t] for t in kern.reads if t in producer and producer[t] != k}:
            users[j].append(k)
            indeg[k] += 1
    order = [k for k in range(len(kernels)) if indeg[k] == 0]
    for k in order:  # grows while walked
        for u in users[k]:
            indeg[u] -= 1
            if indeg[u] == 0:
                order.append(u)
    seen = set(order)  # names that form a cycle cannot come from onnxruntime; keep them anyway
    return order + [k for k in range(len(kernels)) if k not in seen]


def _absorbed(start: set[str], info: GraphInfo, present: set[str]) -> set[int]:
    """Original nodes behind tensors ``start``, walking back through tensors not ``present`` in the optimized graph."""
    found: set[int] = set()
    stack = [info.producer[t] for t in start]
    while stack:
        i = stack.pop()
        if i not in found:
            found.add(i)
            # Constant inputs were folded away, not recomputed inside the kernel.
            stack.extend(p for r in info.reads[i] if r not in present
                         and (p := info.producer.get(r)) is not None and p not in info.const)
    return found


def _fused_ahead(kernels: Sequence[Kernel], anchors: list[set[str]], direct: list[set[int] | None], info: GraphInfo,
                 op_types: Sequence[str], present: set[str], order: list[int]) -> list[set[int]]:
    """For each kernel, the original nodes past its anchors that it computed too (see _absorbed_forward).

    Walks the kernels in order, tracking which original tensor each
    optimized tensor holds: its name says so, or the one output of a kernel
    holds that kernel's last computed tensor (in whatever layout), or a
    one-in one-out kernel without an anchor (a reorder, a copy) passes its
    input on.
    """
    meaning = {t: t for t in set(info.inputs) | set(info.initializers)}
    ahead: list[set[int]] = [set() for _ in kernels]
    for k in order:
        kern = kernels[k]
        if direct[k]:
            ahead[k] = _absorbed_forward(kern, direct[k], info, op_types, meaning, present)
        for t in kern.writes:
            m = _original_tensor(t, info)
            if m is None and len(kern.writes) == 1:
                if ahead[k]:
                    # The output is the end of the chain computed ahead: the tensor no absorbed node reads.
                    ends = {w for i in ahead[k] for w in info.writes[i]} - {r for i in ahead[k] for r in info.reads[i]}
                    m = ends.pop() if len(ends) == 1 else None
                elif len(anchors[k]) == 1:
                    m = next(iter(anchors[k]))
                elif not anchors[k]:
                    sources = {meaning[r] for r in kern.reads if r in meaning and r not in info.initializers}
                    m = sources.pop() if len(sources) == 1 else None
            if m is not None:
                meaning[t] = m
    return ahead


def _absorbed_forward(kern: Kernel, cover: set[int], info: GraphInfo, op_types: Sequence[str],
                      meaning: dict[str, str], present: set[str]) -> set[int]:
    """Original nodes after ``cover`` that the kernel computed too (a Conv that also does the residual Add).

    The evidence is an input the kernel reads that its cover does not need:
    a node combining it with the cover's result, whose output is gone from
    the optimized graph, was fused in, and so is an activation after that
    whose output is gone too.
    """
    reads = {meaning[t] for t in kern.reads if t in meaning} - set(info.initializers)
    made = {t for i in cover for t in info.writes[i]}
    extra = reads - made - {r for i in cover for r in info.reads[i]}
    if not extra:
        return set()

    def live(i: int) -> list[str]:
        return [r for r in info.reads[i] if r not in info.initializers and info.producer.get(r) not in info.const]

    def gone(i: int) -> bool:
        return i not in cover and i not in info.const and not any(w in present for w in info.writes[i])

    found = {i for t in extra for i in info.consumers.get(t, ())
             if gone(i) and set(live(i)) <= reads | made and any(r in made for r in live(i))}
    frontier = {w for i in found for w in info.writes[i]}
    while frontier:
        step = {i for t in frontier for i in info.consumers.get(t, ())
                if i not in found and gone(i) and op_types[i] in _ACTIVATIONS and len(live(i)) == 1}
        found |= step
        frontier = {w for i in step for w in info.writes[i]}
    return found


def _spread_unanchored(kernels: Sequence[Kernel], direct: list[set[int] | None], order: list[int]) -> list[set[int]]:
    """Covers for every kernel: a kernel without anchors covers what the nearest anchored kernels after it
    cover (its work exists for theirs), or if none, what the kernels before it cover."""
    producer = {t: k for k, kern in enumerate(kernels) for t in kern.writes}
    users: dict[str, list[int]] = defaultdict(list)
    for k, kern in enumerate(kernels):
        for t in kern.reads:
            users[t].append(k)
    downstream: list[set[int]] = [set() for _ in kernels]
    for k in reversed(order):
        if direct[k] is None:
            for t in kernels[k].writes:
                for u in users.get(t, ()):
                    downstream[k] |= direct[u] if direct[u] is not None else downstream[u]
    covers = [d if d is not None else downstream[k] for k, d in enumerate(direct)]
    for k in order:
        if not covers[k]:
            # Nothing anchored reads it (say, a copy of a graph output): it belongs to what it consumed.
            for t in kernels[k].reads:
                if t in producer:
                    covers[k] |= covers[producer[t]]
    return covers


def attribute(kernels: Sequence[Kernel], info: GraphInfo, op_types: Sequence[str], flops: Sequence[float], *,
              initializers: frozenset[str] = frozenset(), ran: Sequence[bool] | None = None) -> Attribution:
    """Relate the optimized graph's ``kernels`` (``initializers``: its initializer names) to original nodes.

    ``op_types[i]`` and ``flops[i]`` describe original node i; flops weigh it when a kernel's time is split;
    ``ran[k]`` says whether kernel k was timed at all (if not, it covers nothing).
    """
    anchors = _anchors(kernels, info)
    order = _topological(kernels)
    folded_tensors = {m for t in initializers if (m := _original_tensor(t, info)) is not None}
    present = set(info.inputs) | set(info.initializers) | folded_tensors | {t for a in anchors for t in a}
    direct = [_absorbed(a, info, present) if a else None for a in anchors]
    forward = _fused_ahead(kernels, anchors, direct, info, op_types, present, order)
    if any(forward):
        # What a kernel computed ahead of its anchors exists now: later kernels start from it.
        present |= {t for f in forward for i in f for t in info.writes[i]}
        direct = [_absorbed(a, info, present) | f if a else None for a, f in zip(anchors, forward)]
    covers = _spread_unanchored(kernels, direct, order)
    timed = list(ran) if ran is not None else [True] * len(kernels)
    shares = []
    for k, cover in enumerate(covers):
        nodes = sorted(cover) if timed[k] else []
        # A floor keeps nodes of unknown size (0 FLOPs) from vanishing entirely.
        w = [max(float(flops[i]), 1.0) if math.isfinite(flops[i]) else 1.0 for i in nodes]
        total = math.fsum(w)
        shares.append(tuple((i, wi / total) for i, wi in zip(nodes, w)))
    covered = {i for s in shares for i, _ in s}
    folded = {i for i in range(len(info.names)) if i not in covered
              and (i in info.const or any(t in folded_tensors for t in info.writes[i]))}
    return Attribution(covers=tuple(frozenset(c) if timed[k] else frozenset() for k, c in enumerate(covers)),
                       shares=tuple(shares), folded=frozenset(folded))
