"""Generation on a split decoder: caches that stay on their stage, sequences interleaved across the stages.

The reference is :class:`onnxsplit.decoding.OriginalDecoder`, the unsplit
model stepped with its presents fed back as pasts.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import MODELS
from test_pipeline import timeout
from onnxsplit.decoding import OriginalDecoder
from onnxsplit.errors import UsageError
from onnxsplit.manifest import load_manifest
from onnxsplit.runtime import Pipeline, StageError
from onnxsplit.runtime import pipeline as pipeline_module
from onnxsplit.runtime.generation import SequenceError
from onnxsplit.runtime.sessions import BindingRunner
from onnxsplit.runtime.specs import CUDA, stage_specs
from onnxsplit.splitting import split

DECODER = MODELS / "decoder.onnx"
RTOL, ATOL = 1e-4, 1e-5


def layer_plan(model_path, stages: int, layers: int = 4) -> list[int]:
    """A stage per node in node order: the layers in ``stages`` contiguous groups, the embedding and mask first,
    the final norm and head last."""
    per_layer = [layer * stages // layers for layer in range(layers)]
    plan = []
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        m = re.search(r"/h\.(\d+)/", node.name)
        plan.append(per_layer[int(m.group(1))] if m else stages - 1 if "ln_f" in node.name or "lm_head" in node.name
                    else 0)
    return plan


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """The decoder split at 2, 3 and 4 stages by layers, each stage keeping its layers' caches."""
    out = {}
    for stages in (2, 3, 4):
        folder = tmp_path_factory.mktemp(f"decoder{stages}")
        plan = folder / "plan.json"
        plan.write_text(json.dumps(layer_plan(DECODER, stages)))
        split(DECODER, folder / "out", devices=stages, plan=plan, costs="estimate",
              input_shapes=decode_shapes(OriginalDecoder(DECODER).signature))
        out[stages] = folder / "out"
    return out


@pytest.fixture(scope="module")
def original():
    return OriginalDecoder(DECODER)


def _prompts(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 64, size=(1, 1 + 2 * i)) for i in range(count)]


def _same(got, want) -> None:
    np.testing.assert_array_equal(got.tokens, want.tokens)
    assert len(got.logits) == len(want.logits)
    for step, (g, w) in enumerate(zip(got.logits, want.logits)):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"step {step}")


def _held(pipe: Pipeline) -> list[int]:
    return [s.sequences for s in pipe.stats()]


@pytest.mark.parametrize("stages", [2, 3, 4])
@timeout(120)
def test_generate_equals_the_original(splits, original, stages):
    manifest = load_manifest(splits[stages])
    assert sorted({p.stage for p in manifest.state}) == list(range(stages))  # every stage keeps caches
    prompt = np.array([[5, 9, 1, 33, 2], [7, 7, 0, 12, 63]])  # a batch of 2
    with Pipeline(splits[stages], pin=False) as pipe:
        got = pipe.generate(prompt, 10)
        assert _held(pipe) == [0] * stages
    _same(got, original.generate(prompt, 10))
    assert got.tokens.shape == (2, 15)


def decode_shapes(sig, *, cache: int = 8) -> dict[str, tuple[int, ...]]:
    """Input shapes of one decode step of batch 1 after ``cache`` positions."""
    shapes = {sig.ids: (1, 1), sig.positions: (1, 1), sig.mask: (1, cache + 1),
              **{s.name: (1, *s.shape[1:sig.seq_axis], cache, *s.shape[sig.seq_axis + 1:]) for s in sig.state_specs}}
    return {name: shape for name, shape in shapes.items() if name is not None}


@timeout(120)
def test_a_real_exporters_gpt2(tmp_path):
    """GPT-2 as Optimum exports it (random weights), split in 2 by the solver."""
    path = MODELS / "gpt2_tiny.onnx"
    original = OriginalDecoder(path)
    split(path, tmp_path / "out", devices=2, costs="estimate", input_shapes=decode_shapes(original.signature))
    assert {p.stage for p in load_manifest(tmp_path / "out").state} == {0, 1}
    prompts = [np.array([[5, 6, 7, 8], [1, 2, 3, 4]]), np.array([[9]]), np.arange(10, 30)[None]]
    with Pipeline(tmp_path / "out", pin=False) as pipe:
        futures = pipe.generate_many(prompts, 8)
        assert _held(pipe) == [0, 0]
    for future, prompt in zip(futures, prompts):
        _same(future.result(), original.generate(prompt, 8))


@timeout(120)
def test_generate_many_equals_separate_generates(splits, original):
    prompts = _prompts(8)
    with Pipeline(splits[2], pin=False) as pipe:
        futures = pipe.generate_many(prompts, 7, concurrent=8)
        assert _held(pipe) == [0, 0]  # every cache freed when generate_many returns
        assert all(s.state_bytes == 0 for s in pipe.stats())
        alone = [pipe.generate(p, 7) for p in prompts]
    for future, prompt, single in zip(futures, prompts, alone):
        want = original.generate(prompt, 7)
        _same(future.result(), want)
        _same(single, want)


@timeout(120)
def test_sequences_interleave_across_the_stages(splits):
    from onnxsplit.decoding import greedy

    held = []

    def choose(logits):  # called as each step's logits come back
        held.append(pipe.stats()[0].sequences)
        return greedy(logits)

    with Pipeline(splits[2], pin=False) as pipe:
        pipe.generate_many(_prompts(8), 6, concurrent=8, choose=choose)
        spans = pipe.trace()
    # All 8 prefills go in before any step: by the 8th result every sequence has its caches on stage 0 at once.
    assert max(held) == 8 and held[7] == 8
    for k in (0, 1):  # FIFO: each stage ran the requests in the order they were submitted
        runs = [s.request for s in sorted(spans, key=lambda s: s.start_s) if s.stage == k]
        assert runs == sorted(runs) and len(runs) == 8 * 6


@timeout(120)
def test_a_step_sends_no_cache_between_stages(splits):
    """Stage 0 of the 2-stage split sends only the hand-offs; through plain ``submit`` the caches travel too."""
    with Pipeline(splits[2], pin=False) as pipe:
        sig = pipe.decoder
        pipe.count_bytes()
        seq = pipe.start_sequence(np.array([[1, 2, 3, 4, 5, 6]]))
        seq.logits.result()
        before = pipe.stats()[0].sent_bytes
        seq.step(np.array([[7]])).result()
        stateful = pipe.stats()[0].sent_bytes - before
        assert pipe.stats()[0].sequences == 1 and pipe.stats()[0].state_bytes == 4 * 2 * 7 * 16 * 4
        seq.end()
        assert _held(pipe) == [0, 0]

        # The same step with the caches as ordinary inputs and outputs.
        rng = np.random.default_rng(0)
        feeds = {"input_ids": np.array([[7]]), "position_ids": np.array([[6]]),
                 "attention_mask": np.ones((1, 7), dtype=np.int64),
                 **{p.input: rng.standard_normal((1, 2, 6, 16)).astype(np.float32) for p in sig.state}}
        before = pipe.stats()[0].sent_bytes
        pipe.run(feeds)
        plain = pipe.stats()[0].sent_bytes - before
    cache_6 = 2 * 6 * 16 * 4  # one layer's key (or value) for one sequence at 6 positions
    # Stage 0 holds layers 0-1: plain, it also sends layers 2-3's pasts (6 positions) and its own presents (7).
    assert plain - stateful == 4 * cache_6 + 4 * (cache_6 + 2 * 16 * 4)
    assert 0 < stateful < cache_6  # the hidden state and the attention bias of one token


@timeout(120)
def test_a_sequence_past_max_seq_len_fails_alone(splits, original):
    prompts = [np.array([[1, 2, 3]]), np.arange(1, 11)[None], np.array([[4, 5, 6, 7]]), np.arange(20)[None]]
    with Pipeline(splits[3], pin=False) as pipe:
        futures = pipe.generate_many(prompts, 6, max_seq_len=12)
        assert _held(pipe) == [0, 0, 0]
    for i in (0, 2):
        _same(futures[i].result(), original.generate(prompts[i], 6))
    with pytest.raises(SequenceError, match=r"sequence \d+: a cache of 13 positions would pass max_seq_len 12"):
        futures[1].result()  # 10 + 5 decode steps: the third one passes 12
    with pytest.raises(SequenceError, match="a cache of 20 positions would pass max_seq_len 12"):
        futures[3].result()  # its prompt alone passes


@timeout(120)
def test_a_failing_stage_fails_one_sequence_alone(splits, original, monkeypatch):
    prompts = _prompts(4)
    bad = np.array([[3, 1, 4], [1, 5, 9]])  # batch 2: stage 1 refuses it below
    with Pipeline(splits[2], pin=False) as pipe:
        runner = pipe._workers[1].runner

        def refuse_batch_2(feeds):
            if any(getattr(v, "shape", (0,))[0] == 2 for v in feeds.values()):
                raise RuntimeError("injected fault")
            return runner(feeds)

        monkeypatch.setattr(pipe._workers[1], "runner", refuse_batch_2)
        futures = pipe.generate_many([*prompts[:2], bad, *prompts[2:]], 5)
        assert _held(pipe) == [0, 0]
    with pytest.raises(StageError, match=r"stage 1 \(stage_1.onnx, CPUExecutionProvider\) failed: "
                                         r"RuntimeError: injected fault"):
        futures[2].result()
    for future, prompt in zip(futures[:2] + futures[3:], prompts):
        _same(future.result(), original.generate(prompt, 5))


@timeout(120)
def test_steps_after_end_or_failure_are_refused(splits):
    with Pipeline(splits[2], pin=False) as pipe:
        seq = pipe.start_sequence(np.array([[1, 2]]))
        seq.step(np.array([[3]])).result()
        assert _held(pipe) == [1, 1]
        seq.end()
        seq.end()  # again: nothing more to free
        assert seq.ended and _held(pipe) == [0, 0]
        with pytest.raises(SequenceError, match=r"sequence \d+ has ended"):
            seq.step(np.array([[4]]))
        other = pipe.start_sequence(np.array([[1]]))
        with pytest.raises(UsageError, match=r"tokens of shape \[1, 2, 1\], expected \[1, n >= 1\]"):
            other.step(np.zeros((1, 2, 1)))
        other.end()

        # A stage that loses a sequence's cache fails its next step with a line that says so.
        seq = pipe.start_sequence(np.array([[1, 2]]))
        seq.logits.result()
        pipe._workers[1].store.clear()
        with pytest.raises(StageError, match=r"stage 1 .* failed: SequenceStateError: sequence \d+ has no state on "
                                             r"this stage \(it ended, or an earlier step of it failed\)"):
            seq.step(np.array([[3]])).result()
        seq.end()
        assert _held(pipe) == [0, 0]


@timeout(120)
def test_caches_kept_as_ortvalues_with_io_binding(splits, original, monkeypatch):
    """What a CUDA stage does (IO binding, caches left where they were computed), on the CPU."""

    def binding(session, spec):
        kept = replace(spec, on_device=spec.on_device | {o for _, o in spec.state})
        return BindingRunner(session, kept, device_type="cpu")

    monkeypatch.setattr(pipeline_module, "make_runner", binding)
    prompt = np.array([[2, 4, 6, 8]])
    with Pipeline(splits[2], pin=False) as pipe:
        seq = pipe.start_sequence(prompt)
        seq.logits.result()
        held = pipe._workers[0].store[seq.id]
        assert held and all(isinstance(v, ort.OrtValue) for v in held.values())
        assert pipe.stats()[0].state_bytes == 4 * 2 * 4 * 16 * 4
        seq.end()
        got = pipe.generate(prompt, 6)
    _same(got, original.generate(prompt, 6))


@timeout(120)
def test_plain_requests_on_a_decoder_split_still_carry_their_caches(splits, original):
    sig = original.signature
    rng = np.random.default_rng(1)
    pasts = {p.input: rng.standard_normal((1, 2, 3, 16)).astype(np.float32) for p in sig.state}
    feeds = {"input_ids": np.array([[9, 8]]), "position_ids": np.array([[3, 4]]),
             "attention_mask": np.ones((1, 5), dtype=np.int64), **pasts}
    with Pipeline(splits[3], pin=False) as pipe:
        got = pipe.run(feeds)
    logits, presents = original.step(np.array([[9, 8]]), pasts, past_len=3)
    np.testing.assert_allclose(got["logits"], logits, rtol=RTOL, atol=ATOL)
    for pair in sig.state:
        np.testing.assert_allclose(got[pair.output], presents[pair.input], rtol=RTOL, atol=ATOL)


def test_specs_name_each_stages_state(splits):
    manifest = load_manifest(splits[2])
    specs = stage_specs(manifest)
    assert specs[0].state == tuple((f"past_key_values.{i}.{kv}", f"present.{i}.{kv}")
                                   for i in (0, 1) for kv in ("key", "value"))
    assert [p[0] for p in specs[1].state] == [f"past_key_values.{i}.{kv}" for i in (2, 3) for kv in ("key", "value")]
    # On a GPU the caches stay where the stage computed them.
    on_gpu = replace(manifest, stages=tuple(replace(s, provider=CUDA) for s in manifest.stages))
    assert {o for _, o in specs[0].state} <= stage_specs(on_gpu)[0].on_device
    assert not {o for _, o in specs[0].state} & specs[0].on_device


@timeout(60)
def test_generation_needs_a_split_with_state(tmp_path):
    out = tmp_path / "out"
    split(MODELS / "transformer.onnx", out, devices=2, costs="estimate")
    with Pipeline(out, pin=False) as pipe:
        with pytest.raises(UsageError, match="the split keeps no state"):
            pipe.generate(np.array([[1, 2]]), 3)


def test_bad_arguments_are_one_line(splits):
    with Pipeline(splits[2], pin=False) as pipe:
        with pytest.raises(UsageError, match=r"prompt ids of shape \[1, 0\]"):
            pipe.generate(np.zeros((1, 0), dtype=np.int64), 3)
        with pytest.raises(UsageError, match="max_new_tokens must be 0 or more, got -1"):
            pipe.generate(np.array([[1]]), -1)
        with pytest.raises(UsageError, match="max_seq_len must be at least 1, got 0"):
            pipe.start_sequence(np.array([[1]]), max_seq_len=0)
        assert pipe.generate(np.array([[1, 2]]), 0).logits == ()
        assert _held(pipe) == [0, 0]
