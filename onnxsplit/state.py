"""State pairs: a model input and output that carry the same state from one step to the next.

A decoder exported with a KV cache reads the cache of every layer as an
input (``past_key_values.N.key``) and writes it, one step longer, as an
output (``present.N.key``); the caller feeds each step's output back as the
next step's input. onnxsplit keeps both ends of such a pair, and the layer
between them, on one stage, so a cache never crosses a stage boundary.

Pairs are found by the names Hugging Face Optimum and onnxruntime-genai
give them, or declared by the user.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from onnxsplit.errors import UsageError

# (input pattern, output template): the index and the key/value part of the input name fill the output's.
_CONVENTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"past_key_values\.(\d+)\.(key|value)"), "present.{0}.{1}"),  # Optimum, onnxruntime-genai
    (re.compile(r"past_key_values_(\d+)_(key|value)"), "present_{0}_{1}"),
    (re.compile(r"past\.(\d+)\.(key|value)"), "present.{0}.{1}"),
    (re.compile(r"past_(key|value)_(\d+)"), "present_{0}_{1}"),
)


@dataclass(frozen=True)
class StatePair:
    """``output`` of one step is fed back as ``input`` of the next."""

    input: str
    output: str

    def __str__(self) -> str:
        return f"{self.input}:{self.output}"


def parse_state(text: str) -> StatePair:
    """A pair written ``IN:OUT``; UsageError when it is not one."""
    name_in, sep, name_out = text.partition(":")
    if not sep or not name_in or not name_out or ":" in name_out:
        raise UsageError(f"state pair {text!r}: expected INPUT:OUTPUT")
    return StatePair(name_in, name_out)


def conventional_pairs(inputs: Sequence[str], outputs: Sequence[str]) -> tuple[StatePair, ...]:
    """Pairs named by a known convention whose both ends exist, in the order of ``inputs``."""
    outs = set(outputs)
    found = []
    for name in inputs:
        for pattern, template in _CONVENTIONS:
            m = pattern.fullmatch(name)
            if m and template.format(*m.groups()) in outs:
                found.append(StatePair(name, template.format(*m.groups())))
                break
    return tuple(found)


def find_state_pairs(inputs: Sequence[str], outputs: Sequence[str], *,
                     declared: Sequence[StatePair] = ()) -> tuple[StatePair, ...]:
    """The model's state pairs: ``declared`` ones first, then those named by convention.

    ``inputs`` and ``outputs`` are the model's graph input and output names.
    A declared pair must name an existing input and output, and no input or
    output may be in two pairs; UsageError otherwise, naming the pair.
    """
    ins, outs = set(inputs), set(outputs)
    pairs: list[StatePair] = []
    used_in: set[str] = set()
    used_out: set[str] = set()

    def add(pair: StatePair, *, strict: bool) -> None:
        if pair.input in used_in or pair.output in used_out:
            if strict:
                raise UsageError(f"state pair {pair}: {pair.input if pair.input in used_in else pair.output!r} "
                                 "is already in another pair")
            return
        pairs.append(pair)
        used_in.add(pair.input)
        used_out.add(pair.output)

    for pair in declared:
        if pair.input not in ins:
            raise UsageError(f"state pair {pair}: the model has no input {pair.input!r}")
        if pair.output not in outs:
            raise UsageError(f"state pair {pair}: the model has no output {pair.output!r}")
        add(pair, strict=True)
    for pair in conventional_pairs(inputs, outputs):
        add(pair, strict=False)
    return tuple(pairs)
