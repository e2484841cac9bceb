"""Decoding conventions and the unsplit reference decoder, on the bundled decoder and a real exporter's GPT-2."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxsplit.decoding import (
    DecoderSignature,
    OriginalDecoder,
    decoder_signature,
    empty_state,
    greedy,
    model_specs,
    step_feeds,
)
from onnxsplit.errors import UsageError
from onnxsplit.manifest import TensorSpec
from onnxsplit.state import StatePair, find_state_pairs

MODELS = Path(__file__).resolve().parent.parent / "models"
DECODER = MODELS / "decoder.onnx"
GPT2 = MODELS / "gpt2_tiny.onnx"
LAYERS, HEADS, HEAD_DIM, VOCAB = 4, 2, 16, 64


# --------------------------------------------------------------------------
# A numpy reference of tools/make_models.py's make_decoder, reading the same weights


class Reference:
    def __init__(self, path: Path) -> None:
        self.w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(path)).graph.initializer}

    def _ln(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _lin(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"] + self.w[name + ".bias"]

    def run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
            past: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        w = self.w
        batch, seq = ids.shape
        total = mask.shape[1]
        x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][positions]
        query_pos = np.arange(total - seq, total)[:, None]
        keep = (np.arange(total)[None, :] <= query_pos)[None, None] & (mask[:, None, None, :] != 0)
        bias = np.where(keep, 0.0, -1e4)
        presents = []
        for i in range(LAYERS):
            p = f"transformer.h.{i}"
            h = self._ln(x, p + ".ln_1")

            def split(t: np.ndarray) -> np.ndarray:
                return t.reshape(batch, seq, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)

            q, k, v = (split(self._lin(h, f"{p}.attn.{n}_proj")) for n in "qkv")
            k = np.concatenate([past[i][0], k], axis=2)
            v = np.concatenate([past[i][1], v], axis=2)
            presents.append((k, v))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(HEAD_DIM) + bias
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, HEADS * HEAD_DIM)
            x = x + self._lin(ctx, p + ".attn.o_proj")
            h = self._lin(self._ln(x, p + ".ln_2"), p + ".mlp.fc_in")
            h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
            x = x + self._lin(h, p + ".mlp.fc_out")
        logits = self._ln(x, "transformer.ln_f") @ w["lm_head.weight"]
        return logits, presents


def _ort_step(session, ids, mask, positions, past):
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    for i, (k, v) in enumerate(past):
        feeds[f"past_key_values.{i}.key"] = k.astype(np.float32)
        feeds[f"past_key_values.{i}.value"] = v.astype(np.float32)
    logits, *flat = session.run(None, feeds)
    return logits, [(flat[2 * i], flat[2 * i + 1]) for i in range(LAYERS)]


@pytest.fixture(scope="module")
def session():
    from onnxsplit.ortutil import make_session

    return make_session(DECODER)


def test_decoder_matches_numpy_reference_and_its_cache_is_right(session) -> None:
    ref = Reference(DECODER)
    rng = np.random.default_rng(0)
    batch, prompt, steps = 2, 5, 3
    seq = rng.integers(0, VOCAB, size=(batch, prompt + steps), dtype=np.int64)
    empty = [(np.zeros((batch, HEADS, 0, HEAD_DIM)),) * 2 for _ in range(LAYERS)]

    def pos(start: int, n: int) -> np.ndarray:
        return np.tile(np.arange(start, start + n, dtype=np.int64), (batch, 1))

    def ones(n: int) -> np.ndarray:
        return np.ones((batch, n), dtype=np.int64)

    full_ref, _ = ref.run(seq, ones(prompt + steps), pos(0, prompt + steps), empty)
    full_ort, _ = _ort_step(session, seq, ones(prompt + steps), pos(0, prompt + steps), empty)
    np.testing.assert_allclose(full_ort, full_ref, rtol=1e-4, atol=1e-4)

    logits, past = _ort_step(session, seq[:, :prompt], ones(prompt), pos(0, prompt), empty)
    want, want_past = ref.run(seq[:, :prompt], ones(prompt), pos(0, prompt), empty)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
    for (k, v), (rk, rv) in zip(past, want_past):
        assert k.shape == (batch, HEADS, prompt, HEAD_DIM)
        np.testing.assert_allclose(k, rk, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v, rv, rtol=1e-4, atol=1e-5)
    for t in range(prompt, prompt + steps):
        logits, past = _ort_step(session, seq[:, t:t + 1], ones(t + 1), pos(t, 1), past)
        assert logits.shape == (batch, 1, VOCAB) and past[0][0].shape[2] == t + 1
        # a decode step over the cache sees what a prefill over the whole sequence sees at that position
        np.testing.assert_allclose(logits[:, 0], full_ref[:, t], rtol=1e-4, atol=1e-4)


def test_attention_mask_hides_keys(session) -> None:
    ref = Reference(DECODER)
    ids = np.array([[3, 9, 27, 1]], dtype=np.int64)
    mask = np.array([[1, 0, 1, 1]], dtype=np.int64)
    positions = np.arange(4, dtype=np.int64)[None]
    empty = [(np.zeros((1, HEADS, 0, HEAD_DIM)),) * 2 for _ in range(LAYERS)]
    got, _ = _ort_step(session, ids, mask, positions, empty)
    want, _ = ref.run(ids, mask, positions, empty)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    unmasked, _ = ref.run(ids, np.ones_like(mask), positions, empty)
    assert not np.allclose(want[:, 2:], unmasked[:, 2:], atol=1e-3)


# --------------------------------------------------------------------------
# The signature and the feeds of a step


def _decoder_sig() -> DecoderSignature:
    inputs, outputs = model_specs(DECODER)
    return decoder_signature(inputs, outputs, find_state_pairs([s.name for s in inputs], [s.name for s in outputs]))


def test_signature_of_the_bundled_decoder() -> None:
    sig = _decoder_sig()
    assert (sig.ids, sig.mask, sig.positions, sig.logits, sig.seq_axis) == (
        "input_ids", "attention_mask", "position_ids", "logits", 2)
    assert sig.state[0] == StatePair("past_key_values.0.key", "present.0.key")
    assert len(sig.state) == 2 * LAYERS
    assert [s.name for s in sig.state_specs] == [p.input for p in sig.state]
    assert sig.state_specs[0].shape == ("batch_size", HEADS, "past_sequence_length", HEAD_DIM)
    assert sig.state_specs[0].dtype == "float32"


def test_step_feeds_and_empty_state() -> None:
    sig = _decoder_sig()
    feeds = step_feeds(sig, np.array([[5], [6]]), past_len=3)
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].shape == (2, 1)
    np.testing.assert_array_equal(feeds["attention_mask"], np.ones((2, 4), dtype=np.int64))
    np.testing.assert_array_equal(feeds["position_ids"], [[3], [3]])
    assert set(feeds) == {"input_ids", "attention_mask", "position_ids"}
    feeds = step_feeds(sig, np.zeros((1, 4), dtype=np.int64), past_len=0)
    np.testing.assert_array_equal(feeds["position_ids"], [[0, 1, 2, 3]])
    state = empty_state(sig, batch=3)
    assert set(state) == {p.input for p in sig.state}
    assert all(a.shape == (3, HEADS, 0, HEAD_DIM) and a.dtype == np.float32 for a in state.values())
    with pytest.raises(UsageError):
        step_feeds(sig, np.zeros((2, 0), dtype=np.int64), past_len=0)


def test_greedy_takes_the_last_position() -> None:
    logits = np.zeros((2, 3, 5), dtype=np.float32)
    logits[0, -1, 4] = logits[1, -1, 1] = 1.0
    logits[0, 0, 2] = 9.0  # an earlier position does not count
    got = greedy(logits)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [[4], [1]])


def _spec(name: str, shape=("batch_size", 2, "past_sequence_length", 8), dtype="float32") -> TensorSpec:
    return TensorSpec(name, dtype, shape)


KEY = StatePair("past_key_values.0.key", "present.0.key")


@pytest.mark.parametrize("inputs, outputs, state, words", [
    (["attention_mask", KEY.input], ["logits", KEY.output], [KEY], "no input 'input_ids'"),
    (["input_ids", KEY.input], ["hidden", KEY.output], [KEY], "no output 'logits'"),
    (["input_ids"], ["logits"], [], "no state pairs"),
    (["input_ids"], ["logits", KEY.output], [KEY], f"no input {KEY.input!r}"),
    (["input_ids", KEY.input, "token_type_ids"], ["logits", KEY.output], [KEY], "'token_type_ids'"),
])
def test_signature_errors_are_one_line(inputs, outputs, state, words) -> None:
    with pytest.raises(UsageError) as info:
        decoder_signature([_spec(n) for n in inputs], [_spec(n) for n in outputs], state)
    message = str(info.value)
    assert "\n" not in message and words in message


def test_sequence_axis_from_names_and_unknown_ones() -> None:
    sig = decoder_signature([_spec("input_ids"), _spec("cache", ("batch", "past_len", 8))],
                            [_spec("logits"), _spec("cache_out")], [StatePair("cache", "cache_out")])
    assert sig.seq_axis == 1
    with pytest.raises(UsageError, match="cannot tell its sequence axis"):
        decoder_signature([_spec("input_ids"), _spec("cache", ("b", 8, "x"))],
                          [_spec("logits"), _spec("cache_out")], [StatePair("cache", "cache_out")])
    sig = decoder_signature([_spec("input_ids"), _spec("cache", ("b", "heads", "past", 8))],
                            [_spec("logits"), _spec("cache_out")], [StatePair("cache", "cache_out")])
    assert sig.seq_axis == 2
    with pytest.raises(UsageError, match="axis 1 is 'heads', not a fixed size"):
        empty_state(sig, batch=1)


# --------------------------------------------------------------------------
# The unsplit reference decoder


def _check_generation(path: Path, prompt: np.ndarray, new: int, *, atol: float = 1e-4) -> None:
    decoder = OriginalDecoder(path)
    gen = decoder.generate(prompt, new)
    again = OriginalDecoder(path, threads=2).generate(prompt, new)
    batch, plen = prompt.shape
    assert gen.tokens.shape == (batch, plen + new) and gen.tokens.dtype == np.int64
    np.testing.assert_array_equal(gen.tokens[:, :plen], prompt)
    np.testing.assert_array_equal(gen.tokens, again.tokens)
    assert len(gen.logits) == new
    assert gen.logits[0].shape[:2] == (batch, plen)
    assert all(lg.shape[:2] == (batch, 1) for lg in gen.logits[1:])
    for i, logits in enumerate(gen.logits):
        np.testing.assert_array_equal(greedy(logits)[:, 0], gen.tokens[:, plen + i])

    # One prefill over every token fed gives the same logits at every position: the cache carried them right.
    sig = decoder.signature
    full, _ = decoder.step(gen.tokens[:, :-1], empty_state(sig, batch=batch), past_len=0)
    np.testing.assert_allclose(gen.logits[0], full[:, :plen], rtol=1e-4, atol=atol)
    for i in range(1, new):
        np.testing.assert_allclose(gen.logits[i][:, 0], full[:, plen + i - 1], rtol=1e-4, atol=atol)


def test_original_decoder_generates_deterministically_and_its_steps_match_a_prefill() -> None:
    prompt = np.array([[1, 2, 3, 4, 5], [60, 7, 7, 0, 31]], dtype=np.int64)
    _check_generation(DECODER, prompt, 6)
    gen = OriginalDecoder(DECODER).generate(prompt[:1], 6)
    assert len(set(gen.tokens[0, 5:].tolist())) > 1  # it does not just repeat one token


def test_original_decoder_refuses_bad_input() -> None:
    decoder = OriginalDecoder(DECODER)
    gen = decoder.generate(np.array([[1, 2]]), 0)
    assert gen.tokens.tolist() == [[1, 2]] and gen.logits == ()
    with pytest.raises(UsageError):
        decoder.generate(np.array([1, 2, 3]), 2)
    with pytest.raises(UsageError):
        decoder.generate(np.array([[1, 2]]), -1)
    with pytest.raises(UsageError, match="no output 'logits'"):
        OriginalDecoder(MODELS / "transformer.onnx")


# --------------------------------------------------------------------------
# A real exporter's model: tools/export_gpt2.py


def test_exported_gpt2_has_state_pairs_and_a_consistent_cache() -> None:
    inputs, outputs = model_specs(GPT2)
    pairs = find_state_pairs([s.name for s in inputs], [s.name for s in outputs])
    assert pairs and all(p.input.startswith("past_key_values.") and p.output.startswith("present.") for p in pairs)
    assert len(pairs) % 2 == 0
    sig = decoder_signature(inputs, outputs, pairs)
    assert sig.seq_axis == 2
    _check_generation(GPT2, np.array([[5, 17, 2, 40], [9, 9, 1, 3]], dtype=np.int64), 5)


def test_export_tool_rewrites_the_committed_model(tmp_path: Path) -> None:
    pytest.importorskip("optimum.exporters.onnx", reason="the exporter (torch, transformers, optimum-onnx) is not installed")
    sys.path.insert(0, str(MODELS.parent / "tools"))
    import export_gpt2

    written = export_gpt2.export(tmp_path / "gpt2_tiny.onnx")
    assert written.read_bytes() == GPT2.read_bytes()
