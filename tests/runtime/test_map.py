"""Pipeline.map on a failing request: results in order up to it, its StageError at its turn, no hang, and a
pipeline that keeps working afterwards."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS
from test_pipeline import timeout

from onnxsplit.ortutil import make_session
from onnxsplit.runtime import Pipeline, StageError
from onnxsplit.splitting import split

VOCAB_OVERFLOW = 10**6  # far beyond the transformer's vocabulary: its embedding Gather (stage 0) fails


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    out = tmp_path_factory.mktemp("map") / "transformer2"
    split(MODELS / "transformer.onnx", out, devices=2, input_shapes={"input_ids": (2, 8)}, costs="estimate")
    return out


def _ids(seed: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, 4, size=(2, 8)).astype(np.int64)}


def _bad() -> dict[str, np.ndarray]:
    return {"input_ids": np.full((2, 8), VOCAB_OVERFLOW, np.int64)}


def _same(got, want):
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def original():
    session = make_session(MODELS / "transformer.onnx")
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


@timeout(60)
def test_map_raises_the_first_failure_at_its_turn_and_stays_usable(transformer, original):
    feeds = [_ids(0), _ids(1), _bad(), _ids(2), _bad(), _ids(3)]
    pulled = []

    def source():
        for i, f in enumerate(feeds):
            pulled.append(i)
            yield f

    with Pipeline(transformer, queue_size=1) as pipe:
        results = pipe.map(source())
        _same(next(results), original(feeds[0]))
        _same(next(results), original(feeds[1]))
        with pytest.raises(StageError) as info:
            next(results)
        assert info.value.stage == 0 and "\n" not in str(info.value)
        assert "stage 0 (stage_0.onnx, CPUExecutionProvider) failed" in str(info.value)
        # The failure ends the iteration: the requests it had read ahead are dropped, never yielded.
        with pytest.raises(StopIteration):
            next(results)
        assert len(pulled) <= 2 + pipe.capacity  # it never read the whole source
        # The pipeline itself is unharmed: new requests, and a fresh map, run as before.
        _same(pipe.run(_ids(7)), original(_ids(7)))
        again = list(pipe.map([_ids(8), _ids(9)]))
        _same(again[0], original(_ids(8)))
        _same(again[1], original(_ids(9)))


@timeout(60)
def test_map_whose_first_request_fails(transformer, original):
    with Pipeline(transformer) as pipe:
        results = pipe.map([_bad(), _ids(0), _ids(1)])
        with pytest.raises(StageError):
            next(results)
        assert list(results) == []
    # close() on leaving the block returned: nothing read ahead was left hanging


@timeout(60)
def test_every_result_despite_failures_through_submit(transformer, original):
    """The documented way to keep going past a failure: one Future per request."""
    feeds = [_ids(0), _bad(), _ids(1)]
    with Pipeline(transformer) as pipe:
        futures = [pipe.submit(f) for f in feeds]
        _same(futures[0].result(timeout=30), original(feeds[0]))
        with pytest.raises(StageError):
            futures[1].result(timeout=30)
        _same(futures[2].result(timeout=30), original(feeds[2]))


@timeout(60)
def test_closing_map_early_cancels_what_it_read_ahead(transformer, original):
    with Pipeline(transformer, queue_size=1) as pipe:
        results = pipe.map(_ids(s) for s in range(50))
        _same(next(results), original(_ids(0)))
        results.close()
        _same(pipe.run(_ids(3)), original(_ids(3)))
