"""Dynamic batching on its own: which requests join, how they are cut back, what is refused."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from onnxsplit.errors import UsageError
from onnxsplit.manifest import TensorSpec
from onnxsplit.serve.batching import Batcher, BatchError, check_batchable


class Model:
    """y = 2x, recording the batch of every run."""

    def __init__(self, delay: float = 0.0, rows=None) -> None:
        self.runs: list[int] = []
        self.delay = delay
        self.rows = rows

    async def __call__(self, feeds):
        self.runs.append(feeds["x"].shape[0])
        await asyncio.sleep(self.delay)
        y = feeds["x"] * 2
        return {"y": y if self.rows is None else y[: self.rows]}


def _x(n: int, start: float, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)}


def _gather(batcher, feeds_list, *, stagger: float = 0.0):
    async def main():
        async def one(i, feeds):
            await asyncio.sleep(stagger * i)
            return await batcher(feeds)
        return await asyncio.gather(*(one(i, f) for i, f in enumerate(feeds_list)), return_exceptions=True)
    return asyncio.run(main())


def test_requests_arriving_together_run_as_one_and_each_gets_its_own_rows():
    model = Model()
    batcher = Batcher(model, max_batch=16, timeout_s=0.05)
    feeds = [_x(n, 100 * i) for i, n in enumerate((1, 3, 2, 4))]
    results = _gather(batcher, feeds)
    assert model.runs == [10]
    for f, r in zip(feeds, results):
        np.testing.assert_array_equal(r["y"], f["x"] * 2)


def test_a_batch_never_exceeds_the_limit():
    model = Model()
    batcher = Batcher(model, max_batch=4, timeout_s=0.05)
    feeds = [_x(n, 100 * i) for i, n in enumerate((3, 2, 2, 1, 4, 5))]
    results = _gather(batcher, feeds)
    # 3 | 2+2 | 1 (alone when its timeout ends) | 4 and 5 reach the limit alone
    assert sorted(model.runs) == [1, 3, 4, 4, 5]
    for f, r in zip(feeds, results):
        np.testing.assert_array_equal(r["y"], f["x"] * 2)


def test_requests_of_other_shapes_do_not_join():
    model = Model()
    batcher = Batcher(model, max_batch=8, timeout_s=0.05)
    feeds = [_x(1, 0, width=3), _x(1, 10, width=5), _x(2, 20, width=3)]
    results = _gather(batcher, feeds)
    assert sorted(model.runs) == [1, 3]
    for f, r in zip(feeds, results):
        np.testing.assert_array_equal(r["y"], f["x"] * 2)


def test_a_request_waits_no_longer_than_the_timeout():
    model = Model()
    batcher = Batcher(model, max_batch=8, timeout_s=0.01)
    # The second arrives well after the first's timeout: two runs.
    results = _gather(batcher, [_x(1, 0), _x(1, 10)], stagger=0.2)
    assert model.runs == [1, 1]
    assert all(not isinstance(r, BaseException) for r in results)


def test_a_failed_run_fails_every_request_in_it():
    async def broken(feeds):
        raise RuntimeError("stage 1 failed")

    results = _gather(Batcher(broken, max_batch=8, timeout_s=0.02), [_x(1, 0), _x(2, 10)])
    assert all(isinstance(r, RuntimeError) for r in results)


def test_outputs_without_the_batch_rows_are_an_error_not_a_wrong_answer():
    results = _gather(Batcher(Model(rows=1), max_batch=8, timeout_s=0.02), [_x(1, 0), _x(2, 10)])
    assert all(isinstance(r, BatchError) and "cannot be cut back" in str(r) for r in results)


def test_batching_needs_one_symbolic_first_dim_everywhere():
    ok = (TensorSpec("a", "float32", ("N", 3)), TensorSpec("b", "int64", ("N",)))
    assert check_batchable(ok, (TensorSpec("y", "float32", ("N", 2)), TensorSpec("z", "float32", None)),
                           where="out") == "N"
    with pytest.raises(UsageError, match="input 'a' has first dim 2"):
        check_batchable((TensorSpec("a", "float32", (2, 3)),), (), where="out")
    with pytest.raises(UsageError, match="one batch dim"):
        check_batchable((TensorSpec("a", "float32", ("N", 3)), TensorSpec("b", "float32", ("M", 3))), (),
                        where="out")
    with pytest.raises(UsageError, match="output 'y'.*first dim 1"):
        check_batchable(ok, (TensorSpec("y", "float32", (1, 2)),), where="out")
    with pytest.raises(UsageError, match="input 'a' has a scalar"):
        check_batchable((TensorSpec("a", "float32", ()),), (), where="out")
