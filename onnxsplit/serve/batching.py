"""Dynamic batching: requests that arrive close together run through the stages as one.

A request of n samples waits at most the batch timeout for others of the
same kind (the same inputs' dtypes and shapes past dim 0); together they are
concatenated along dim 0, up to the batch limit, run as one request, and every
output is cut back along dim 0 so each client gets exactly the rows of its own
samples, in its own order. A request that alone reaches the limit runs alone.

This is only right when dim 0 is the batch for every input and output, which
:func:`check_batchable` makes sure of before the server starts; each run also
checks that every output came back with as many rows as went in.

Everything here runs on the event loop's thread; only the model itself
(``run``) runs elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxsplit.errors import OnnxSplitError, UsageError
from onnxsplit.manifest import TensorSpec

Arrays = Mapping[str, np.ndarray]


def check_batchable(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, where: str) -> str:
    """The symbolic dim every input starts with; UsageError naming the tensor when batching along dim 0 is unsafe.

    Every input's first dim must be one and the same symbolic dim, and no
    output's first dim may be fixed (an output whose dims are unknown is
    checked on every run instead).
    """
    if not inputs:
        raise UsageError(f"{where}: dynamic batching needs a model with inputs")
    first = [t.shape[0] if t.shape else None for t in inputs]
    for t, d in zip(inputs, first):
        if not isinstance(d, str):
            shape = "a scalar" if t.shape == () else f"first dim {d}"
            raise UsageError(f"{where}: dynamic batching needs every input's first dim symbolic; input {t.name!r} "
                             f"has {shape}")
    if len(set(first)) > 1:
        raise UsageError(f"{where}: dynamic batching needs one batch dim; the inputs start with {sorted(set(first))}")
    for t in outputs:
        if t.shape is not None and (not t.shape or isinstance(t.shape[0], int)):
            what = "is a scalar" if not t.shape else f"has first dim {t.shape[0]}"
            raise UsageError(f"{where}: dynamic batching cannot cut output {t.name!r} by request: it {what}")
    return str(first[0])


class BatchError(OnnxSplitError):
    """A batched run's outputs cannot be cut back into the requests that made it."""


@dataclass
class _Batch:
    """Requests of one kind waiting to run together (mutable, owned by the event loop)."""

    key: tuple
    items: list[tuple[Arrays, int, asyncio.Future]] = field(default_factory=list)
    samples: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Joins requests into batches of at most ``max_batch`` samples, waiting at most ``timeout_s`` for company.

    ``run`` runs one (possibly joined) request and returns every output.
    Call the batcher from the event loop's thread only.
    """

    def __init__(self, run: Callable[[Arrays], Awaitable[dict[str, np.ndarray]]], *, max_batch: int,
                 timeout_s: float) -> None:
        if max_batch < 2:
            raise UsageError(f"a batch must hold at least 2 samples to batch anything, got {max_batch}")
        if timeout_s < 0:
            raise UsageError(f"the batch timeout must be zero or more, got {timeout_s}")
        self.run = run
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self._open: dict[tuple, _Batch] = {}
        self._running: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones
        self.batches = 0  # runs started, for tests and logs
        self.joined = 0  # requests that ran in a batch of more than one

    async def __call__(self, feeds: Arrays) -> dict[str, np.ndarray]:
        """The outputs of ``feeds`` alone (the first dim of every input is its number of samples)."""
        samples = next(iter(feeds.values())).shape[0] if feeds else 0
        if samples == 0 or samples >= self.max_batch:
            self.batches += 1
            return await self.run(feeds)
        key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items())
        batch = self._open.get(key)
        if batch is not None and batch.samples + samples > self.max_batch:
            self._flush(batch)
            batch = None
        loop = asyncio.get_running_loop()
        if batch is None:
            batch = self._open[key] = _Batch(key)
            batch.timer = loop.call_later(self.timeout_s, self._flush, batch)
        future: asyncio.Future = loop.create_future()
        batch.items.append((feeds, samples, future))
        batch.samples += samples
        if batch.samples >= self.max_batch:
            self._flush(batch)
        return await future

    def _flush(self, batch: _Batch) -> None:
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if not batch.items:
            return
        self.batches += 1
        task = asyncio.get_running_loop().create_task(self._run(batch.items))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, items: list[tuple[Arrays, int, asyncio.Future]]) -> None:
        live = [item for item in items if not item[2].done()]  # a client that went away needs no rows
        if not live:
            return
        if len(live) == 1:
            feeds = live[0][0]
        else:
            self.joined += len(live)
            feeds = {name: np.concatenate([f[name] for f, _, _ in live], axis=0) for name in live[0][0]}
        total = sum(n for _, n, _ in live)
        try:
            results = await self.run(feeds)
            parts = _cut(results, [n for _, n, _ in live], total)
        except Exception as exc:  # every request of the batch shares the failure
            for _, _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), part in zip(live, parts):
            if not future.done():
                future.set_result(part)


def _cut(results: Arrays, sizes: list[int], total: int) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output."""
    for name, array in results.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise BatchError(f"output {name!r} has shape {list(array.shape)} for a batch of {total} samples: its "
                             "first dim is not the batch, so it cannot be cut back into requests")
    parts: list[dict[str, np.ndarray]] = []
    start = 0
    for n in sizes:
        parts.append({name: array[start:start + n] for name, array in results.items()})
        start += n
    return parts
