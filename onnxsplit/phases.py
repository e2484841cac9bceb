"""Phases of a decoder: the input shapes each phase runs at, and costs weighted over both.

A decoder with a KV cache runs in two phases that cost very differently:
the prefill reads a whole prompt of P tokens with an empty cache (past
length 0), and every decode step reads one token with a cache of L past
tokens. A split is planned for one of them, or for both weighted::

    times and hand-off bytes = W * decode + (1 - W) * prefill

Each phase is costed at its own input shapes, so the profile cache keeps one
entry per phase. The phase shapes come from the decoding signature
(:mod:`onnxsplit.decoding`): ``input_ids`` and ``position_ids`` [B, S],
``attention_mask`` [B, L + S], each past [B, heads, L, head_dim]; the user's
input shapes give the batch B and the dims the model leaves open, and their
sequence lengths are the defaults of P (``input_ids``) and L (the pasts).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from onnxsplit.choices import PHASES
from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.errors import UsageError
from onnxsplit.manifest import TensorSpec
from onnxsplit.state import StatePair, find_state_pairs

if TYPE_CHECKING:
    import onnx

    from onnxsplit.decoding import DecoderSignature
    from onnxsplit.prepared import Prepared

Phase = Literal["prefill", "decode"]

DEFAULT_DECODE_WEIGHT = 0.9  # a generation runs one prefill and many decode steps
DEFAULT_PROMPT_LENGTH = 32
DEFAULT_CACHE_LENGTH = 128

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class PhasePlan:
    """What a split costs: the phase it optimises and the input shapes of each phase it costs.

    ``shapes`` are the optimised phase's (``decode`` for ``both``): the
    manifest's input shapes. ``prefill_shapes`` is set for ``both`` only: the
    second phase costed, weighted ``1 - decode_weight``. A model without a
    decoding signature has the phase ``prefill`` and the user's shapes as
    given.
    """

    phase: Literal["prefill", "decode", "both"]
    shapes: Shapes
    prefill_shapes: Shapes | None = None
    decode_weight: float = DEFAULT_DECODE_WEIGHT

    def __str__(self) -> str:
        return self.phase if self.phase != "both" else f"both (decode weight {self.decode_weight:g})"


# -- the shapes of a phase --------------------------------------------------------------------------------------------


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _batch(sig: DecoderSignature, given: Shapes) -> int:
    """B: the batch dim the user gave the decoder's inputs (all the same), else the model's, else 1."""
    names = [n for n in (sig.ids, sig.mask, sig.positions) if n is not None] + [s.name for s in sig.state_specs]
    seen = [(n, given[n][0]) for n in names if given.get(n)]
    for name, b in seen[1:]:
        if b != seen[0][1]:
            raise UsageError(f"input shapes of {seen[0][0]!r} and {name!r} give two batch sizes, {seen[0][1]} and {b}")
    if seen:
        return seen[0][1]
    fixed = [s.shape[0] for s in sig.state_specs if s.shape and isinstance(s.shape[0], int)]
    return fixed[0] if fixed else 1


def _given_length(given: Shapes, names: Sequence[str], axis: int) -> tuple[str, int] | None:
    """The first of ``names`` the user gave a shape, and its length on ``axis``."""
    for name in names:
        shape = given.get(name)
        if shape is not None and len(shape) > axis:
            return name, shape[axis]
    return None


def prompt_length_of(sig: DecoderSignature, given: Shapes, prompt_length: int | None) -> int:
    """P: ``prompt_length``, else the sequence length the user gave ``input_ids``, else the default.

    UsageError when both are given and differ.
    """
    from_shape = _given_length(given, [n for n in (sig.ids, sig.positions) if n is not None], 1)
    if prompt_length is None:
        return from_shape[1] if from_shape is not None else DEFAULT_PROMPT_LENGTH
    if prompt_length < 1:
        raise UsageError(f"prompt length {prompt_length}: a prompt has at least one token")
    if from_shape is not None and from_shape[1] != prompt_length:
        raise UsageError(f"input shape of {from_shape[0]!r}: {_fmt(given[from_shape[0]])} disagrees with the "
                         f"prompt length {prompt_length}")
    return prompt_length


def cache_length_of(sig: DecoderSignature, given: Shapes, cache_length: int | None) -> int:
    """L: ``cache_length``, else the past length the user gave the state inputs, else the default.

    UsageError when both are given and differ, or the given pasts differ.
    """
    lengths = {s.name: given[s.name][sig.seq_axis] for s in sig.state_specs
               if s.name in given and len(given[s.name]) > sig.seq_axis}
    if len(set(lengths.values())) > 1:
        names = sorted(lengths, key=lambda n: (lengths[n], n))
        raise UsageError(f"input shapes of {names[0]!r} and {names[-1]!r} give two past lengths, "
                         f"{lengths[names[0]]} and {lengths[names[-1]]}")
    from_shape = next(iter(lengths.items()), None)
    if cache_length is None:
        return from_shape[1] if from_shape is not None else DEFAULT_CACHE_LENGTH
    if cache_length < 0:
        raise UsageError(f"cache length {cache_length}: must be 0 or more")
    if from_shape is not None and from_shape[1] != cache_length:
        raise UsageError(f"input shape of {from_shape[0]!r}: {_fmt(given[from_shape[0]])} disagrees with the "
                         f"cache length {cache_length}")
    return cache_length


def _state_shape(spec: TensorSpec, given: tuple[int, ...] | None, *, batch: int, seq_axis: int,
                 length: int) -> tuple[int, ...]:
    """A past's shape: batch and past length from the phase, the other dims fixed by the model or given."""
    if spec.shape is None:
        if given is None:
            raise UsageError(f"state input {spec.name!r}: the model does not give its rank; give its shape")
        dims: list[int | str | None] = [None] * len(given)
    else:
        dims = list(spec.shape)
    if given is not None and len(given) != len(dims):
        raise UsageError(f"input shape of {spec.name!r}: the model input has rank {len(dims)}, got {len(given)} dims")
    if not 0 < seq_axis < len(dims):
        raise UsageError(f"state input {spec.name!r}: rank {len(dims)} has no past-length axis {seq_axis}")
    shape = []
    for axis, d in enumerate(dims):
        if axis == 0:
            shape.append(batch)
        elif axis == seq_axis:
            shape.append(length)
        elif given is not None:
            shape.append(given[axis])
        elif isinstance(d, int) and d >= 0:
            shape.append(d)
        else:
            raise UsageError(f"state input {spec.name!r}: dim {axis} ({d or '?'}) is not fixed by the model; "
                             "give the input's shape")
    return tuple(shape)


def phase_shapes(sig: DecoderSignature, phase: Phase, *, given: Shapes, prompt_length: int,
                 cache_length: int) -> dict[str, tuple[int, ...]]:
    """Every input shape of one phase: the user's, with the decoder's inputs set for the phase.

    prefill: S = ``prompt_length`` new tokens, past length 0; decode: S = 1,
    past length ``cache_length``. Before: the lengths are resolved
    (:func:`prompt_length_of`, :func:`cache_length_of`). After: ids and
    positions are [B, S], the mask [B, past + S], each past has its batch
    and past-length axes set and its other dims from the model or ``given``.
    """
    new, past = (prompt_length, 0) if phase == "prefill" else (1, cache_length)
    batch = _batch(sig, given)
    shapes = {name: tuple(shape) for name, shape in given.items()}
    shapes[sig.ids] = (batch, new)
    if sig.positions is not None:
        shapes[sig.positions] = (batch, new)
    if sig.mask is not None:
        shapes[sig.mask] = (batch, past + new)
    for spec in sig.state_specs:
        shapes[spec.name] = _state_shape(spec, given.get(spec.name), batch=batch, seq_axis=sig.seq_axis, length=past)
    return shapes


# -- choosing the phases of a split -----------------------------------------------------------------------------------


def io_specs(graph: onnx.GraphProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's real inputs (initializers left out) and its outputs, as the manifest names them."""
    from onnxsplit.shapes import fixed_dim
    from onnxsplit.valuetypes import dtype_name

    def spec(vi: onnx.ValueInfoProto) -> TensorSpec:
        tt = vi.type.tensor_type
        if vi.type.WhichOneof("value") != "tensor_type":
            return TensorSpec(vi.name, None, None)
        shape = None
        if tt.HasField("shape"):
            shape = tuple(fixed_dim(d) if fixed_dim(d) is not None else (d.dim_param or None) for d in tt.shape.dim)
        return TensorSpec(vi.name, dtype_name(tt.elem_type) if tt.elem_type else None, shape)

    inits = {t.name for t in graph.initializer}
    return (tuple(spec(i) for i in graph.input if i.name not in inits), tuple(spec(o) for o in graph.output))


def _read_graph(model_path: str | os.PathLike) -> onnx.GraphProto:
    """The model's graph without its weights; a file that cannot be read fails as loading it would."""
    import onnx

    try:
        return onnx.load(str(model_path), load_external_data=False).graph
    except Exception:  # whatever the reason, load_model names it in one line
        from onnxsplit.model import load_model

        load_model(model_path)
        raise


def plan_phases(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, given: Shapes,
                phase: str = "auto", prompt_length: int | None = None, cache_length: int | None = None,
                decode_weight: float = DEFAULT_DECODE_WEIGHT, state: Sequence[StatePair] = (),
                where: str = "the model", fixed: bool = False) -> PhasePlan:
    """The phases a split of a model with these inputs and outputs costs, at which shapes.

    ``phase``: ``auto`` (decode for a decoder, else prefill), ``prefill``,
    ``decode`` or ``both``. ``prompt_length`` / ``cache_length``: None takes
    them from ``given`` or the defaults. ``state``: declared state pairs
    (the conventional ones are found by name). A model is a decoder when it
    has state pairs and a decoding signature. UsageError, naming ``where``,
    for a decode phase or a cache length on a model that is not one, a
    prompt length on one that is not, and a weight outside [0, 1].
    ``fixed``: representative inputs fix every shape (``given``): the
    shapes are theirs, and choosing a phase or a length is a UsageError.
    """
    if phase not in PHASES:
        raise UsageError(f"phase {phase!r}: choose {', '.join(PHASES)}")
    if not 0.0 <= decode_weight <= 1.0:
        raise UsageError(f"decode weight {decode_weight}: must lie in [0, 1]")
    if fixed:
        if phase != "auto" or prompt_length is not None or cache_length is not None:
            raise UsageError(f"{where}: representative inputs fix every input shape, so no phase or length "
                             "can be chosen with them")
        return PhasePlan("prefill", dict(given), None, decode_weight)
    need = ("the decode phase needs" if phase in ("decode", "both") else
            "a cache length applies to" if cache_length is not None else
            "a prompt length applies to" if prompt_length is not None else None)
    sig = _signature(inputs, outputs, state=state, where=where, need=need)
    if sig is None:
        return PhasePlan("prefill", dict(given), None, decode_weight)
    chosen = "decode" if phase == "auto" else phase
    prompt = prompt_length_of(sig, given, prompt_length)
    cache = cache_length_of(sig, given, cache_length)
    prefill = phase_shapes(sig, "prefill", given=given, prompt_length=prompt, cache_length=cache)
    if chosen == "prefill":
        return PhasePlan("prefill", prefill, None, decode_weight)
    decode = phase_shapes(sig, "decode", given=given, prompt_length=prompt, cache_length=cache)
    return PhasePlan(chosen, decode, prefill if chosen == "both" else None, decode_weight)  # type: ignore[arg-type]


_NOT_DECODER = "it has no state pairs (past_key_values.N.key -> present.N.key, or declared ones)"


def _signature(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, state: Sequence[StatePair],
               where: str, need: str | None) -> DecoderSignature | None:
    """The decoding signature, or None for a model that is not a decoder.

    ``need``: why a decoder is required ("the decode phase needs"), which
    turns None into a UsageError saying so.
    """
    from onnxsplit.decoding import decoder_signature

    pairs = find_state_pairs([i.name for i in inputs], [o.name for o in outputs], declared=state)
    if not pairs:
        if need is not None:
            raise UsageError(f"{where}: {need} a decoder with a KV cache, and {_NOT_DECODER}")
        return None
    try:
        return decoder_signature(inputs, outputs, pairs)
    except UsageError as exc:
        if need is not None:
            raise UsageError(f"{where}: {need} a decoder with a KV cache: {exc}") from None
        return None  # state without the decoder's inputs: costed as any model, at the user's shapes


def plan_model_phases(model_path: str | os.PathLike, *, given: Shapes, phase: str = "auto",
                      prompt_length: int | None = None, cache_length: int | None = None,
                      decode_weight: float = DEFAULT_DECODE_WEIGHT, state: Sequence[StatePair] = (),
                      fixed: bool = False) -> PhasePlan:
    """:func:`plan_phases` for the model file at ``model_path`` (its weights are not read)."""
    inputs, outputs = io_specs(_read_graph(model_path))
    return plan_phases(inputs, outputs, given=given, phase=phase, prompt_length=prompt_length,
                       cache_length=cache_length, decode_weight=decode_weight, state=state, where=str(model_path),
                       fixed=fixed)


# -- weighing two cost graphs -----------------------------------------------------------------------------------------


def _mix(decode: float, prefill: float, w: float) -> float:
    # The ends are exact (and keep inf, which 0 * inf would turn into nan).
    if w == 1.0:
        return decode
    if w == 0.0:
        return prefill
    if math.isinf(decode) or math.isinf(prefill):
        return math.inf
    return w * decode + (1.0 - w) * prefill


def combine_costgraphs(prefill: CostGraph, decode: CostGraph, *, decode_weight: float) -> CostGraph:
    """One cost graph for both phases of a model: W * decode + (1 - W) * prefill.

    Before: both graphs are of the same model (same nodes, kinds, tensors
    and groups; ValueError otherwise: a bug, not a user error). After: node
    times, tensor bytes and tensor costs are weighted; a node's memory is the
    larger of the two, since the stages run both phases; the rest is
    ``decode``'s. W = 1 gives ``decode``'s times and tensors, W = 0
    ``prefill``'s.
    """
    w = float(decode_weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"decode weight {w} is outside [0, 1]")
    if prefill.names != decode.names or set(prefill.compute) != set(decode.compute):
        raise ValueError("the two cost graphs are not of the same model (nodes or device kinds differ)")
    if prefill.groups != decode.groups:
        raise ValueError("the two cost graphs have different co-location groups")
    keys = [(t.name, t.producer, t.consumers) for t in prefill.tensors]
    if keys != [(t.name, t.producer, t.consumers) for t in decode.tensors]:
        raise ValueError("the two cost graphs are not of the same model (tensors differ)")
    compute = {kind: tuple(_mix(d, p, w) for d, p in zip(decode.compute[kind], prefill.compute[kind]))
               for kind in decode.compute}
    tensors = tuple(Tensor(name=d.name, producer=d.producer, consumers=d.consumers,
                           nbytes=d.nbytes if w == 1.0 else round(_mix(d.nbytes, p.nbytes, w)),
                           cost=_mix(d.cost, p.cost, w))
                    for d, p in zip(decode.tensors, prefill.tensors))
    memory = tuple(max(d, p) for d, p in zip(decode.memory, prefill.memory))
    return replace(decode, compute=compute, tensors=tensors, memory=memory)


def prepare_phases(phases: PhasePlan, prepare_at: Callable[[dict[str, tuple[int, ...]]], Prepared]) -> Prepared:
    """The model prepared for the phases of ``phases``.

    ``prepare_at(shapes)`` loads and costs the model at the given input
    shapes; it is called at ``phases.shapes`` and, for ``both``, at the
    prefill's too. After: for ``both`` the cost graph is
    :func:`combine_costgraphs` of the two, while the model, its types and its
    shapes stay the decode phase's, so the split is cut and written at those.
    A profile file (the user's, or a device kind's) holds one phase only:
    for ``both``, ProfileError at the prefill's shapes.
    """
    prepared = prepare_at(dict(phases.shapes))
    if phases.prefill_shapes is None:
        return prepared
    from onnxsplit.profile.store import ProfileError

    try:
        prefill = prepare_at(dict(phases.prefill_shapes))
    except ProfileError as exc:
        raise ProfileError(f"both phases are costed, each at its own input shapes, and {exc}") from None
    graph = combine_costgraphs(prefill.graph, prepared.graph, decode_weight=phases.decode_weight)
    return replace(prepared, graph=graph)
