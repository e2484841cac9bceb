"""Generation on a split decoder: sequences whose caches stay on their stages.

A :class:`Sequence` is a prompt being continued token by token. Its steps
go through the pipeline like any request, but carry only the non-state
feeds (ids, attention mask, positions) and the hand-offs between stages:
each stage keeps the caches of its own layers per sequence, between steps,
and frees them when the sequence ends (see :mod:`onnxsplit.runtime.pipeline`).

One sequence cannot overlap with itself (its next token needs its last
logits), so the pipelining comes from many sequences in flight at once:
:func:`generate_many` keeps up to ``concurrent`` of them stepping, and while
one stage computes sequence A's step the stage before it computes B's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence as Seq
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING

import numpy as np

from onnxsplit.decoding import DecoderSignature, Generation, empty_state, greedy, step_feeds
from onnxsplit.errors import OnnxSplitError, UsageError
from onnxsplit.runtime.pipeline import END, START, STEP

if TYPE_CHECKING:
    from onnxsplit.runtime.pipeline import Pipeline

Chooser = Callable[[np.ndarray], np.ndarray]  # logits [batch, n, vocab] -> next tokens [batch, 1]


class SequenceError(OnnxSplitError):
    """A sequence cannot take this step: it ended, or its cache would pass ``max_seq_len``."""


def _prompt(prompt_ids: object) -> np.ndarray:
    prompt = np.asarray(prompt_ids)
    if prompt.ndim == 1:
        prompt = prompt[None, :]
    if prompt.ndim != 2 or prompt.shape[1] == 0 or not np.issubdtype(prompt.dtype, np.integer):
        raise UsageError(f"prompt ids of shape {list(prompt.shape)}: expected integers [batch, prompt >= 1]")
    return prompt.astype(np.int64)


class Sequence:
    """One sequence in a pipeline: its prompt's prefill is submitted when it is made.

    Made by :meth:`Pipeline.start_sequence`. ``logits`` is the Future of the
    latest step's logits (the prefill's at first); ``length`` the positions
    the caches hold once every submitted step has run. Steps may be
    submitted before the earlier ones finish (they run in order), but only
    from one thread at a time. A failed step leaves the sequence without
    state on the stage that failed: call :meth:`end` to free the others.
    """

    def __init__(self, pipeline: Pipeline, signature: DecoderSignature, sequence_id: int, prompt_ids: object, *,
                 max_seq_len: int | None = None) -> None:
        if max_seq_len is not None and max_seq_len < 1:
            raise UsageError(f"max_seq_len must be at least 1, got {max_seq_len}")
        prompt = _prompt(prompt_ids)
        self.id = sequence_id
        self.batch = prompt.shape[0]
        self.max_seq_len = max_seq_len
        self.length = 0
        self._pipeline = pipeline
        self._signature = signature
        self._ended: Future | None = None
        self._check_room(prompt.shape[1])
        env = {**step_feeds(signature, prompt, past_len=0), **empty_state(signature, batch=self.batch)}
        self.logits: Future = self._submit(env, START, prompt.shape[1])

    @property
    def ended(self) -> bool:
        return self._ended is not None

    def _check_room(self, n: int) -> None:
        if self.max_seq_len is not None and self.length + n > self.max_seq_len:
            raise SequenceError(f"sequence {self.id}: a cache of {self.length + n} positions would pass "
                                f"max_seq_len {self.max_seq_len}")

    def _submit(self, env: dict, kind: str, n: int) -> Future:
        future = self._pipeline._submit_step(env, sequence=self.id, kind=kind, pick=self._signature.logits)
        self.length += n
        return future

    def step(self, tokens: object) -> Future:
        """Submit the next step over ``tokens`` [batch, n] (int); returns the Future of its logits [batch, n, vocab].

        Raises SequenceError at once, submitting nothing, when the sequence
        has ended or its caches would pass ``max_seq_len``.
        """
        if self._ended is not None:
            raise SequenceError(f"sequence {self.id} has ended")
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[0] != self.batch or ids.shape[1] == 0:
            raise UsageError(f"sequence {self.id}: tokens of shape {list(ids.shape)}, expected [{self.batch}, n >= 1]")
        self._check_room(ids.shape[1])
        self.logits = self._submit(step_feeds(self._signature, ids, past_len=self.length), STEP, ids.shape[1])
        return self.logits

    def end(self, *, wait: bool = True) -> Future:
        """Free the sequence's state on every stage; again is a no-op.

        The release goes through the stages behind the sequence's last step;
        with ``wait`` this returns once every stage has dropped it. Returns
        the Future that is done then.
        """
        if self._ended is None:
            self._ended = self._pipeline._submit_step({}, sequence=self.id, kind=END, pick=None)
        if wait:
            self._ended.result()
        return self._ended


class _Run:
    """The bookkeeping of one generation inside generate_many."""

    __slots__ = ("index", "sequence", "tokens", "logits", "result")

    def __init__(self, index: int, sequence: Sequence, prompt: np.ndarray) -> None:
        self.index = index
        self.sequence = sequence
        self.tokens = [prompt]
        self.logits: list[np.ndarray] = []
        self.result: Future = Future()


def generate(pipeline: Pipeline, prompt_ids: object, max_new_tokens: int, *, max_seq_len: int | None = None,
             choose: Chooser = greedy) -> Generation:
    """``max_new_tokens`` tokens after ``prompt_ids`` [batch, prompt]: a prefill, then a step per further token.

    ``choose`` picks the next tokens from a step's logits (greedy by
    default). The same runs as :meth:`onnxsplit.decoding.OriginalDecoder.generate`,
    so a correct split gives the same tokens. Raises the first step's error
    (StageError, SequenceError); the sequence's state is freed either way.
    """
    [future] = generate_many(pipeline, [prompt_ids], max_new_tokens, max_seq_len=max_seq_len, concurrent=1,
                             choose=choose)
    return future.result()


def generate_many(pipeline: Pipeline, prompts: Seq[object], max_new_tokens: int, *,
                  max_seq_len: int | None = None, concurrent: int = 64,
                  choose: Chooser = greedy) -> list[Future]:
    """Generate after every prompt, with up to ``concurrent`` sequences in flight, interleaved across the stages.

    Returns one done Future per prompt, in order, whose result is its
    :class:`~onnxsplit.decoding.Generation`. A sequence that fails (a stage
    error, a cache that would pass ``max_seq_len``) fails alone: its Future
    holds the error, its state is freed, the others go on. Every sequence's
    state has been freed on every stage when this returns.
    """
    if max_new_tokens < 0:
        raise UsageError(f"max_new_tokens must be 0 or more, got {max_new_tokens}")
    if concurrent < 1:
        raise UsageError(f"concurrent must be at least 1, got {concurrent}")
    checked = [_prompt(p) for p in prompts]  # every prompt checked before any runs
    results: list[Future] = [Future() for _ in checked]
    if max_new_tokens == 0:
        for future, prompt in zip(results, checked):
            future.set_result(Generation(tokens=prompt, logits=()))
        return results
    waiting = deque(enumerate(checked))
    active: dict[Future, _Run] = {}
    releases: list[Future] = []
    try:
        while waiting or active:
            while waiting and len(active) < concurrent:
                index, prompt = waiting.popleft()
                try:
                    sequence = pipeline.start_sequence(prompt, max_seq_len=max_seq_len)
                except SequenceError as exc:  # its prompt alone passes max_seq_len: nothing was submitted
                    results[index].set_exception(exc)
                    continue
                run = _Run(index, sequence, prompt)
                active[sequence.logits] = run
            done, _ = wait(list(active), return_when=FIRST_COMPLETED)
            for future in done:
                run = active.pop(future)
                try:
                    logits = future.result()
                    run.logits.append(logits)
                    run.tokens.append(np.asarray(choose(logits), dtype=np.int64))
                    if len(run.logits) < max_new_tokens:
                        active[run.sequence.step(run.tokens[-1])] = run
                        continue
                    results[run.index].set_result(
                        Generation(tokens=np.concatenate(run.tokens, axis=1), logits=tuple(run.logits)))
                except Exception as exc:  # this sequence fails alone
                    results[run.index].set_exception(exc)
                releases.append(run.sequence.end(wait=False))
    finally:
        for run in active.values():  # only on the way out of an error: nothing else leaves runs behind
            releases.append(run.sequence.end(wait=False))
        for release in releases:
            release.result()
    return results
