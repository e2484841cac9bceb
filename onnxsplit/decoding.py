"""Decoding conventions: what a decoder with a KV cache reads and writes at each step, and the unsplit reference.

A decoder exported the way Hugging Face Optimum and onnxruntime-genai do
reads ``input_ids`` [batch, n], ``attention_mask`` [batch, past + n] and
``position_ids`` [batch, n], plus the cache of every layer as state inputs
(``past_key_values.N.key`` [batch, heads, past, head_dim]), and writes
``logits`` [batch, n, vocab] and the caches one step longer
(``present.N.key``). A prefill feeds the whole prompt with empty caches
(past 0); each decode step feeds one token and the presents of the step
before as pasts.

:class:`OriginalDecoder` runs that loop on the unsplit model: the
reference a split pipeline's generation is checked against.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxsplit.errors import UsageError
from onnxsplit.manifest import TensorSpec
from onnxsplit.state import StatePair, find_state_pairs

IDS = "input_ids"
MASK = "attention_mask"
POSITIONS = "position_ids"
LOGITS = "logits"

# Symbolic dim names that mark the growing axis of a cache, as exporters spell them.
_SEQ_WORDS = ("past", "seq", "len", "total")


@dataclass(frozen=True)
class DecoderSignature:
    """Which of a decoder's inputs and outputs play which part in a step.

    ``state_specs[i]`` is the spec of ``state[i].input``; the batch is axis
    0 of every state input and ``seq_axis`` the axis that grows by the
    step's tokens (2 for KV caches).
    """

    ids: str
    mask: str | None
    positions: str | None
    logits: str
    state: tuple[StatePair, ...]
    state_specs: tuple[TensorSpec, ...]
    seq_axis: int


def _seq_axis(spec: TensorSpec) -> int:
    """The growing axis of a state input: the symbolic dim named like a length, else 2 of a rank-4 cache."""
    if spec.shape is None:
        raise UsageError(f"state input {spec.name!r} has no known rank: cannot tell its sequence axis")
    named = [axis for axis, dim in enumerate(spec.shape)
             if axis > 0 and isinstance(dim, str) and any(w in dim.lower() for w in _SEQ_WORDS)]
    if len(named) == 1:
        return named[0]
    if len(spec.shape) == 4:
        return 2
    raise UsageError(f"state input {spec.name!r} of shape {list(spec.shape)}: cannot tell its sequence axis")


def decoder_signature(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                      state: Sequence[StatePair]) -> DecoderSignature:
    """The signature of a decoder whose graph inputs and outputs are ``inputs`` / ``outputs``.

    ``state``: its state pairs (see :func:`onnxsplit.state.find_state_pairs`),
    both ends among ``inputs`` / ``outputs``. Every input must be the ids,
    the mask, the positions or a state input, so a step can feed them all.
    Raises UsageError, one line, naming what is missing or not understood.
    """
    in_specs = {s.name: s for s in inputs}
    out_names = {s.name for s in outputs}
    if IDS not in in_specs:
        raise UsageError(f"not a decoder: the model has no input {IDS!r}")
    if LOGITS not in out_names:
        raise UsageError(f"not a decoder: the model has no output {LOGITS!r}")
    if not state:
        raise UsageError("not a decoder with a cache: the model has no state pairs "
                         "(past_key_values.N.key -> present.N.key, or declared ones)")
    for pair in state:
        if pair.input not in in_specs:
            raise UsageError(f"state pair {pair}: the model has no input {pair.input!r}")
        if pair.output not in out_names:
            raise UsageError(f"state pair {pair}: the model has no output {pair.output!r}")
    known = {IDS, MASK, POSITIONS} | {p.input for p in state}
    for spec in inputs:
        if spec.name not in known:
            raise UsageError(f"decoder input {spec.name!r} is neither {IDS}, {MASK}, {POSITIONS} nor a state input: "
                             "a step cannot feed it")
    state_specs = tuple(in_specs[p.input] for p in state)
    axis = _seq_axis(state_specs[0])
    for spec in state_specs[1:]:
        if spec.shape is not None and len(spec.shape) != len(state_specs[0].shape or ()):
            raise UsageError(f"state input {spec.name!r} has rank {len(spec.shape)}, "
                             f"{state_specs[0].name!r} rank {len(state_specs[0].shape or ())}")
    return DecoderSignature(ids=IDS, mask=MASK if MASK in in_specs else None,
                            positions=POSITIONS if POSITIONS in in_specs else None, logits=LOGITS,
                            state=tuple(state), state_specs=state_specs, seq_axis=axis)


def step_feeds(sig: DecoderSignature, tokens: np.ndarray, *, past_len: int) -> dict[str, np.ndarray]:
    """The non-state feeds of one step over ``tokens`` [batch, n] after ``past_len`` cached positions.

    Every token of every row is attended to (the mask is all ones); the
    positions run from ``past_len`` to ``past_len + n - 1``.
    """
    ids = np.ascontiguousarray(tokens, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise UsageError(f"tokens of shape {list(ids.shape)}: expected [batch, n] with n >= 1")
    batch, n = ids.shape
    feeds = {sig.ids: ids}
    if sig.mask is not None:
        feeds[sig.mask] = np.ones((batch, past_len + n), dtype=np.int64)
    if sig.positions is not None:
        feeds[sig.positions] = np.broadcast_to(np.arange(past_len, past_len + n, dtype=np.int64), (batch, n)).copy()
    return feeds


def empty_state(sig: DecoderSignature, *, batch: int) -> dict[str, np.ndarray]:
    """Zero-length caches (``seq_axis`` 0, batch ``batch``) for a prefill, by state input name.

    Every other dim of a state input must be a fixed number in its spec;
    UsageError naming the input otherwise.
    """
    state = {}
    for spec in sig.state_specs:
        if spec.shape is None or spec.dtype is None:
            raise UsageError(f"state input {spec.name!r} has no known shape or dtype: cannot make an empty cache")
        shape = []
        for axis, dim in enumerate(spec.shape):
            if axis == 0:
                shape.append(batch)
            elif axis == sig.seq_axis:
                shape.append(0)
            elif isinstance(dim, int):
                shape.append(dim)
            else:
                raise UsageError(f"state input {spec.name!r}: axis {axis} is {dim!r}, not a fixed size")
        state[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
    return state


def greedy(logits: np.ndarray) -> np.ndarray:
    """The next token of every row, int64 [batch, 1]: the argmax over the vocabulary at the last position."""
    return np.argmax(logits[:, -1, :], axis=-1).astype(np.int64)[:, None]


@dataclass(frozen=True)
class Generation:
    """A greedy generation: ``tokens`` [batch, prompt + new]; ``logits[i]`` chose token ``prompt + i``.

    ``logits[0]`` is the prefill's [batch, prompt, vocab]; each later one a
    decode step's [batch, 1, vocab].
    """

    tokens: np.ndarray
    logits: tuple[np.ndarray, ...]


def model_specs(path: str | os.PathLike) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph inputs (initializers left out) and outputs of the model at ``path``, as TensorSpecs."""
    import onnx

    from onnxsplit.valuetypes import dtype_name

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}

    def spec(vi: onnx.ValueInfoProto) -> TensorSpec:
        tt = vi.type.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        return TensorSpec(vi.name, dtype_name(tt.elem_type) if tt.elem_type else None, shape)

    return (tuple(spec(vi) for vi in graph.input if vi.name not in inits),
            tuple(spec(vi) for vi in graph.output))


class OriginalDecoder:
    """The unsplit decoder at ``model_path``, run on onnxruntime's CPU provider, its presents fed back as pasts.

    ``state``: pairs declared beyond those the naming conventions find.
    Raises ModelError when onnxruntime refuses the model, UsageError when it
    is not a decoder (see :func:`decoder_signature`).
    """

    def __init__(self, model_path: str | os.PathLike, *, threads: int = 1,
                 state: Sequence[StatePair] = ()) -> None:
        from onnxsplit.ortutil import make_session

        inputs, outputs = model_specs(model_path)
        pairs = find_state_pairs([s.name for s in inputs], [s.name for s in outputs], declared=state)
        self.signature = decoder_signature(inputs, outputs, pairs)
        self._session = make_session(Path(model_path), threads=threads)
        self._outputs = [self.signature.logits] + [p.output for p in self.signature.state]

    def step(self, tokens: np.ndarray, state: Mapping[str, np.ndarray], *,
             past_len: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run one step over ``tokens`` [batch, n] with caches ``state`` (by state input name) of ``past_len``.

        Returns the logits [batch, n, vocab] and the next step's state (the
        presents, by state input name).
        """
        sig = self.signature
        feeds = {**step_feeds(sig, tokens, past_len=past_len), **state}
        logits, *presents = self._session.run(self._outputs, feeds)
        return logits, {pair.input: value for pair, value in zip(sig.state, presents)}

    def generate(self, prompt_ids: np.ndarray, max_new_tokens: int) -> Generation:
        """Greedy generation of ``max_new_tokens`` after ``prompt_ids`` [batch, prompt]: one prefill, then one
        decode step per further token (``max_new_tokens`` runs in all)."""
        prompt = np.asarray(prompt_ids)
        if prompt.ndim != 2 or prompt.shape[1] == 0 or not np.issubdtype(prompt.dtype, np.integer):
            raise UsageError(f"prompt ids of shape {list(prompt.shape)}: expected integers [batch, prompt >= 1]")
        if max_new_tokens < 0:
            raise UsageError(f"max_new_tokens {max_new_tokens}: expected 0 or more")
        tokens = prompt.astype(np.int64)
        state = empty_state(self.signature, batch=tokens.shape[0])
        logits_seen: list[np.ndarray] = []
        fed, past_len = tokens, 0
        for _ in range(max_new_tokens):
            logits, state = self.step(fed, state, past_len=past_len)
            logits_seen.append(logits)
            past_len += fed.shape[1]
            fed = greedy(logits)
            tokens = np.concatenate([tokens, fed], axis=1)
        return Generation(tokens=tokens, logits=tuple(logits_seen))
