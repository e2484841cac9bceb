"""State pairs in the split: each cache stays on the stage of the layer that uses it.

A pair's input (the past cache) and output (the present cache) must live on
one stage, with every node that reads either and the node that makes the
output: then the cache never crosses a stage boundary, and a pipeline can
keep it where it is between steps. :func:`pin_state` makes those nodes a
co-location group of the cost graph (the solvers contract a group and every
node between, so the plan keeps them on one stage) and adds each cache's
size at the largest batch and sequence length to the memory of its stage.
:func:`check_state_placement` refuses a cut that separates a pair anyway (a
plan a user wrote by hand).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import onnx

from onnxsplit.costgraph import CostGraph
from onnxsplit.devices import Devices
from onnxsplit.errors import InfeasibleError, PlanError, UsageError
from onnxsplit.graphinfo import GraphInfo
from onnxsplit.manifest import FrozenMap
from onnxsplit.model import Model
from onnxsplit.rewrite.stages import Cut
from onnxsplit.state import StatePair, find_state_pairs


@dataclass(frozen=True)
class CacheLimits:
    """The largest sequence length and batch a stage must hold caches for.

    ``max_batch`` None: the batch of the split's input shapes.
    """

    max_seq_len: int
    max_batch: int | None = None

    def __post_init__(self) -> None:
        if self.max_seq_len < 1:
            raise UsageError(f"maximum sequence length {self.max_seq_len}: expected a positive integer")
        if self.max_batch is not None and self.max_batch < 1:
            raise UsageError(f"maximum batch {self.max_batch}: expected a positive integer")


def model_state_pairs(model: Model, info: GraphInfo, *, declared: Sequence[StatePair] = ()) -> tuple[StatePair, ...]:
    """The model's state pairs (declared ones first, then those named by convention) whose input a node reads.

    A pair whose input no node reads has nothing to keep on a stage: it is
    left out, so its output stays an ordinary model output.
    """
    pairs = find_state_pairs([i.name for i in model.inputs], [o.name for o in model.graph.output],
                             declared=declared)
    return tuple(p for p in pairs if info.consumers.get(p.input))


def state_group(info: GraphInfo, pair: StatePair) -> tuple[int, ...]:
    """The nodes that must share the pair's stage: readers of its input, the maker and readers of its output."""
    nodes = set(info.consumers.get(pair.input, ()))
    if pair.output in info.producer:
        nodes.add(info.producer[pair.output])
    nodes.update(info.consumers.get(pair.output, ()))
    return tuple(sorted(nodes))


def cache_bytes(model: Model, shapes: Mapping[str, Sequence[int]], pair: StatePair, limits: CacheLimits) -> int:
    """Bytes of the pair's cache at ``limits``: the input's shape with batch (axis 0) and sequence axis set.

    The sequence axis is the one whose symbolic dim differs between input and
    output (past vs total length), else the only symbolic one after the
    batch, else the second to last (the KV-cache layout [batch, heads, seq, head_dim]).
    """
    vi_in = next(i for i in model.inputs if i.name == pair.input)
    vi_out = next(o for o in model.graph.output if o.name == pair.output)
    shape = list(shapes[pair.input])
    if not shape:
        raise UsageError(f"state pair {pair}: the input is a scalar, it has no sequence axis to grow")
    axis = _seq_axis(vi_in, vi_out, len(shape))
    if limits.max_batch is not None:
        shape[0] = limits.max_batch
    shape[axis] = limits.max_seq_len
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(vi_in.type.tensor_type.elem_type).itemsize
    return math.prod(shape) * itemsize


def _seq_axis(vi_in: onnx.ValueInfoProto, vi_out: onnx.ValueInfoProto, rank: int) -> int:
    def dims(vi: onnx.ValueInfoProto) -> list[str | int | None]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            return [None] * rank
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]

    ins, outs = dims(vi_in), dims(vi_out)
    symbolic = [a for a in range(1, rank) if not isinstance(ins[a], int)]
    grows = [a for a in symbolic if a < len(outs) and outs[a] != ins[a]]
    if len(grows) == 1:
        return grows[0]
    if len(symbolic) == 1:
        return symbolic[0]
    return max(rank - 2, 0)


def pin_state(graph: CostGraph, model: Model, info: GraphInfo, shapes: Mapping[str, Sequence[int]],
              devices: Devices, pairs: Sequence[StatePair], *,
              limits: CacheLimits | None = None) -> tuple[CostGraph, Mapping[str, int]]:
    """``graph`` with a co-location group per pair and, with ``limits``, each cache in its stage's memory.

    Before: ``graph``'s node ids are ``info``'s node indices. After: every
    pair's :func:`state_group` is one of the graph's groups (added to the ones
    it had); with ``limits``, the node that makes a pair's output also holds
    its cache bytes, so a stage's memory counts the caches it keeps. Returns
    the graph and the cache bytes by state input name (empty without
    ``limits``). Raises InfeasibleError naming a pair whose cache alone is
    larger than every device's memory.
    """
    groups = tuple(g for g in (state_group(info, p) for p in pairs) if len(g) > 1)
    sizes: dict[str, int] = {}
    memory = list(graph.memory)
    if limits is not None:
        largest = max(k.memory for k in devices.kinds)
        for p in pairs:
            nbytes = cache_bytes(model, shapes, p, limits)
            if nbytes > largest:
                batch = shapes[p.input][0] if limits.max_batch is None else limits.max_batch
                raise InfeasibleError(f"state pair {p}: its cache needs {nbytes} bytes at batch {batch} and "
                                      f"sequence length {limits.max_seq_len}, more than any device has "
                                      f"(largest: {largest:.0f} bytes)")
            sizes[p.input] = nbytes
            holder = info.producer.get(p.output, min(state_group(info, p), default=None))
            if holder is not None:
                memory[holder] += nbytes
    pinned = replace(graph, groups=graph.groups + groups, memory=tuple(memory))
    return pinned, FrozenMap(sizes)


def check_state_placement(cut: Cut, pairs: Sequence[StatePair]) -> None:
    """Raise PlanError, naming the pair, unless each pair's input is read and its output made on one stage
    and the output goes to no other stage."""
    for p in pairs:
        readers = [s.index for s in cut.stages if p.input in s.inputs]
        maker = cut.output_stage.get(p.output)
        sent = cut.consumers.get(p.output, ())
        where = f"input read on stage{'s' if len(readers) > 1 else ''} {', '.join(map(str, readers))}"
        if len(readers) > 1 or (readers and maker is not None and readers[0] != maker):
            raise PlanError(f"the plan separates state pair {p}: its {where}, its output made on stage {maker}")
        if sent:
            raise PlanError(f"the plan separates state pair {p}: its output is made on stage {maker} and sent to "
                            f"stage {', '.join(map(str, sent))}")
