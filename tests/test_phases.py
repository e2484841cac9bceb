"""Decoder phases: the shapes of prefill and decode, costs per phase, both weighted, and the flags' errors."""

from __future__ import annotations

import math

import onnx
import pytest

from conftest import MODELS, one_error_line, one_line, run_cli, split_and_check
from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import identical_devices
from onnxsplit.errors import UsageError
from onnxsplit.phases import (DEFAULT_CACHE_LENGTH, DEFAULT_PROMPT_LENGTH, combine_costgraphs, io_specs,
                              plan_model_phases, plan_phases)
from onnxsplit.splitting import prepare, split

DECODER = MODELS / "decoder.onnx"
PLAIN = MODELS / "transformer.onnx"
PASTS = [f"past_key_values.{i}.{kv}" for i in range(4) for kv in ("key", "value")]


def _specs(path=DECODER):
    return io_specs(onnx.load(str(path), load_external_data=False).graph)


# -- the shapes of each phase ------------------------------------------------------------------------------------------


def test_decode_is_the_default_phase_of_a_decoder_with_one_token_and_a_cache():
    plan = plan_phases(*_specs(), given={})
    assert plan.phase == "decode" and plan.prefill_shapes is None
    s = plan.shapes
    L = DEFAULT_CACHE_LENGTH
    assert s["input_ids"] == s["position_ids"] == (1, 1) and s["attention_mask"] == (1, L + 1)
    assert all(s[p] == (1, 2, L, 16) for p in PASTS)


def test_prefill_has_the_prompt_and_empty_caches():
    plan = plan_phases(*_specs(), given={}, phase="prefill", prompt_length=7)
    s = plan.shapes
    assert s["input_ids"] == s["position_ids"] == s["attention_mask"] == (1, 7)
    assert all(s[p] == (1, 2, 0, 16) for p in PASTS)
    assert plan_phases(*_specs(), given={}, phase="prefill").shapes["input_ids"] == (1, DEFAULT_PROMPT_LENGTH)


def test_input_shapes_give_the_batch_the_prompt_length_and_the_cache_length():
    given = {"input_ids": (3, 12), "past_key_values.0.key": (3, 2, 40, 16)}
    plan = plan_phases(*_specs(), given=given, phase="both")
    assert plan.phase == "both"
    assert plan.shapes["input_ids"] == (3, 1) and plan.shapes["attention_mask"] == (3, 41)
    assert all(plan.shapes[p] == (3, 2, 40, 16) for p in PASTS)
    assert plan.prefill_shapes["input_ids"] == (3, 12) and plan.prefill_shapes["attention_mask"] == (3, 12)
    assert all(plan.prefill_shapes[p] == (3, 2, 0, 16) for p in PASTS)


@pytest.mark.parametrize("given, options, needle", [
    ({"input_ids": (1, 12)}, dict(phase="prefill", prompt_length=8), "disagrees with the prompt length 8"),
    ({"past_key_values.0.key": (1, 2, 9, 16)}, dict(cache_length=8), "disagrees with the cache length 8"),
    ({"input_ids": (1, 4), "attention_mask": (2, 4)}, {}, "two batch sizes"),
    ({"past_key_values.0.key": (1, 2, 9, 16), "past_key_values.1.key": (1, 2, 5, 16)}, {}, "two past lengths"),
    ({}, dict(decode_weight=1.5), "decode weight 1.5"),
    ({}, dict(phase="middle"), "phase 'middle'"),
])
def test_shapes_that_disagree_are_one_line(given, options, needle):
    with pytest.raises(UsageError) as exc:
        plan_phases(*_specs(), given=given, **options)
    assert needle in one_line(exc)


def test_a_model_without_state_keeps_the_users_shapes():
    plan = plan_model_phases(PLAIN, given={"x": (2, 4)})
    assert plan.phase == "prefill" and dict(plan.shapes) == {"x": (2, 4)} and plan.prefill_shapes is None


@pytest.mark.parametrize("options, needle", [
    (dict(phase="decode"), "the decode phase needs a decoder"),
    (dict(phase="both"), "the decode phase needs a decoder"),
    (dict(cache_length=16), "a cache length applies to a decoder"),
    (dict(prompt_length=16), "a prompt length applies to a decoder"),
])
def test_decoder_options_on_a_model_without_state_pairs_are_one_line(options, needle):
    with pytest.raises(UsageError) as exc:
        plan_model_phases(PLAIN, given={}, **options)
    text = one_line(exc)
    assert needle in text and str(PLAIN) in text and "no state pairs" in text


# -- costs per phase ----------------------------------------------------------------------------------------------------


def _graph(phase: str, *, costs: str, **options) -> CostGraph:
    plan = plan_model_phases(DECODER, given={}, phase=phase, **options)
    return prepare(DECODER, identical_devices(2), input_shapes=dict(plan.shapes), costs=costs).graph


def test_a_prefill_matmul_costs_more_than_a_decode_one():
    prefill = _graph("prefill", costs="estimate", prompt_length=32)
    decode = _graph("decode", costs="estimate")
    kind = prefill.kinds[0]
    matmuls = [v for v in range(prefill.n) if prefill.ops[v] == "MatMul"]
    assert matmuls
    for v in matmuls:
        assert prefill.compute[kind][v] > decode.compute[kind][v], prefill.names[v]
    # A prefill hands on 32 tokens' hidden states, a decode step one.
    by_name = {t.name: t for t in decode.tensors}
    assert sum(t.nbytes for t in prefill.tensors) > sum(by_name[t.name].nbytes for t in prefill.tensors)


def test_each_phase_is_measured_once_and_cached(tmp_path, monkeypatch):
    from onnxsplit.profile import measure

    monkeypatch.setenv("ONNXSPLIT_CACHE", str(tmp_path / "cache"))
    measured = []
    real = measure.profile_model

    def spy(model, **kwargs):
        measured.append(kwargs["input_shapes"])
        return real(model, **kwargs)

    monkeypatch.setattr(measure, "profile_model", spy)
    first = split(DECODER, tmp_path / "a", devices=2, phase="both", prompt_length=32, costs="measure")
    assert len(measured) == 2 and {s["input_ids"] for s in measured} == {(1, 1), (1, 32)}
    assert len(list((tmp_path / "cache" / "profiles").iterdir())) == 2
    again = split(DECODER, tmp_path / "b", devices=2, phase="both", prompt_length=32, costs="measure")
    split(DECODER, tmp_path / "c", devices=2, phase="decode", costs="measure")
    split(DECODER, tmp_path / "d", devices=2, phase="prefill", prompt_length=32, costs="measure")
    assert len(measured) == 2  # the later splits measured nothing
    assert again.graph == first.graph
    # Measured, the prefill's MatMuls take longer than one decode step's, summed over the model.
    prefill, decode = (_graph(p, costs="measure", prompt_length=32) if p == "prefill" else _graph(p, costs="measure")
                       for p in ("prefill", "decode"))
    assert len(measured) == 2
    kind = prefill.kinds[0]
    matmul = [v for v in range(prefill.n) if prefill.ops[v] == "MatMul"]
    assert sum(prefill.compute[kind][v] for v in matmul) > sum(decode.compute[kind][v] for v in matmul)


@pytest.fixture(scope="module")
def phase_splits(tmp_path_factory):
    """Estimated splits of the decoder: each phase alone and both at three weights (by name)."""
    root = tmp_path_factory.mktemp("phases")
    done = {}
    for name, options in [("prefill", dict(phase="prefill")), ("decode", dict(phase="decode")),
                          ("w1", dict(phase="both", decode_weight=1.0)), ("w0", dict(phase="both", decode_weight=0.0)),
                          ("w25", dict(phase="both", decode_weight=0.25))]:
        done[name] = split(DECODER, root / name, devices=2, costs="estimate", **options)
    return done


def test_both_at_weight_one_is_decode_and_at_zero_is_prefill(phase_splits):
    decode, prefill = phase_splits["decode"].graph, phase_splits["prefill"].graph
    w1, w0 = phase_splits["w1"].graph, phase_splits["w0"].graph
    assert dict(w1.compute) == dict(decode.compute) and w1.tensors == decode.tensors
    assert dict(w0.compute) == dict(prefill.compute) and w0.tensors == prefill.tensors
    # The stages run both phases: each node's memory is the larger of the two.
    assert w1.memory == w0.memory == tuple(max(a, b) for a, b in zip(decode.memory, prefill.memory))
    assert phase_splits["w1"].plan.value == pytest.approx(phase_splits["decode"].plan.value)


def test_both_in_between_is_the_weighted_sum_of_times_and_bytes(phase_splits):
    decode, prefill, mixed = (phase_splits[k].graph for k in ("decode", "prefill", "w25"))
    for kind in mixed.kinds:
        for d, p, m in zip(decode.compute[kind], prefill.compute[kind], mixed.compute[kind]):
            assert m == pytest.approx(0.25 * d + 0.75 * p)
    for d, p, m in zip(decode.tensors, prefill.tensors, mixed.tensors):
        assert m.name == d.name == p.name
        assert abs(m.nbytes - (0.25 * d.nbytes + 0.75 * p.nbytes)) <= 0.5
        assert m.cost == pytest.approx(0.25 * d.cost + 0.75 * p.cost)
    assert any(d.nbytes != p.nbytes for d, p in zip(decode.tensors, prefill.tensors))


def test_the_manifest_has_the_optimised_phases_shapes(phase_splits):
    L, P = DEFAULT_CACHE_LENGTH, DEFAULT_PROMPT_LENGTH
    for name in ("decode", "w1", "w0", "w25"):
        shapes = phase_splits[name].manifest.input_shapes
        assert shapes["input_ids"] == (1, 1) and shapes["attention_mask"] == (1, L + 1), name
        assert shapes["past_key_values.0.key"] == (1, 2, L, 16), name
    shapes = phase_splits["prefill"].manifest.input_shapes
    assert shapes["input_ids"] == (1, P) and shapes["past_key_values.0.key"] == (1, 2, 0, 16)


def test_a_decode_phase_split_validates(tmp_path):
    result, report = split_and_check(DECODER, tmp_path / "out", 2, costs="estimate", phase="decode", cache_length=20)
    assert result.manifest.input_shapes["attention_mask"] == (1, 21)
    assert report.passed


def test_both_with_a_profile_file_is_one_line(tmp_path):
    from onnxsplit.model import load_model
    from onnxsplit.profile.cache import cached_profile
    from onnxsplit.profile.store import ProfileError, save_profile

    model = load_model(DECODER)
    plan = plan_model_phases(DECODER, given={}, phase="decode")
    profile = cached_profile(model, input_shapes=dict(plan.shapes), runs=2, warmup=1, cache_dir=tmp_path / "cache")
    save_profile(profile, tmp_path / "profile.json")
    split(DECODER, tmp_path / "one", devices=2, phase="decode", profile_path=tmp_path / "profile.json")
    with pytest.raises(ProfileError) as exc:
        split(DECODER, tmp_path / "two", devices=2, phase="both", profile_path=tmp_path / "profile.json")
    assert "both phases are costed" in one_line(exc) and "input_ids:1x1" in one_line(exc)


# -- combining two graphs ------------------------------------------------------------------------------------------------


def _tiny(times, nbytes, memory=(1.0, 1.0)) -> CostGraph:
    return CostGraph(names=("a", "b"), compute={"cpu": tuple(times)}, memory=tuple(memory),
                     tensors=(Tensor("t", 0, (1,), nbytes, nbytes / 1e6),))


def test_combining_keeps_inf_and_refuses_graphs_of_other_models():
    mixed = combine_costgraphs(_tiny((1.0, math.inf), 100), _tiny((3.0, 2.0), 300, (0.0, 5.0)), decode_weight=0.5)
    assert mixed.compute["cpu"] == (2.0, math.inf) and mixed.tensors[0].nbytes == 200 and mixed.memory == (1.0, 5.0)
    assert combine_costgraphs(_tiny((1.0, math.inf), 100), _tiny((3.0, 2.0), 300), decode_weight=1.0).compute["cpu"] \
        == (3.0, 2.0)
    other = CostGraph(names=("a", "c"), compute={"cpu": (1.0, 1.0)}, memory=(1.0, 1.0), tensors=())
    with pytest.raises(ValueError):
        combine_costgraphs(_tiny((1.0, 1.0), 1), other, decode_weight=0.5)


# -- the command line ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, flags, needles", [
    (PLAIN, ["--cache-length", "8"], ["cache length", "no state pairs"]),
    (PLAIN, ["--phase", "decode"], ["decode phase", "no state pairs"]),
    (DECODER, ["--phase", "both", "--decode-weight", "1.5"], ["--decode-weight 1.5", "[0, 1]"]),
    (DECODER, ["--phase", "both", "--decode-weight", "-0.5"], ["--decode-weight"]),
    (DECODER, ["--decode-weight", "0.5"], ["--decode-weight", "--phase both"]),
    (DECODER, ["--phase", "prefill", "--cache-length", "8"], ["--cache-length", "--phase prefill"]),
    (DECODER, ["--phase", "decode", "--prompt-length", "8"], ["--prompt-length"]),
])
def test_bad_phase_flags_are_one_line(tmp_path, capsys, model, flags, needles):
    code, err = run_cli(["split", model, "-o", tmp_path / "out", "--costs", "estimate", *flags], capsys)
    one_error_line(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_split_both_from_the_command_line(tmp_path, capsys):
    import json

    code, _ = run_cli(["split", DECODER, "-o", tmp_path / "out", "--costs", "estimate", "--phase", "both",
                       "--prompt-length", "16", "--cache-length", "24", "--decode-weight", "0.5", "--json"], capsys)
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["input_shapes"]["attention_mask"] == [1, 25]
    assert manifest["input_shapes"]["past_key_values.3.value"] == [1, 2, 24, 16]


def test_profile_measures_the_phase_split_costs(tmp_path, capsys):
    """`profile` of a decoder defaults to the decode phase, so `split --profile` finds its shapes."""
    from onnxsplit.profile.store import load_profile

    code, err = run_cli(["profile", DECODER, "-o", tmp_path / "decode.json", "--runs", "2", "--warmup", "0",
                         "--cache-length", "20"], capsys)
    assert code == 0, err
    assert load_profile(tmp_path / "decode.json").input_shapes["attention_mask"] == (1, 21)
    code, err = run_cli(["split", DECODER, "-o", tmp_path / "out", "--profile", tmp_path / "decode.json",
                         "--cache-length", "20"], capsys)
    assert code == 0, err
    code, err = run_cli(["profile", DECODER, "-o", tmp_path / "prefill.json", "--runs", "2", "--warmup", "0",
                         "--phase", "prefill", "--prompt-length", "5"], capsys)
    assert code == 0, err
    assert load_profile(tmp_path / "prefill.json").input_shapes["past_key_values.0.key"] == (1, 2, 0, 16)
    code, err = run_cli(["profile", DECODER, "-o", tmp_path / "x.json", "--phase", "both"], capsys)
    one_error_line(code, err, "one phase")


def test_costgraph_weighs_both_phases_as_split_does(tmp_path, capsys, phase_splits):
    from onnxsplit.costgraph_io import load_costgraph

    code, err = run_cli(["costgraph", DECODER, "--costs", "estimate", "--phase", "both", "--decode-weight", "0.25",
                         "-o", tmp_path / "g.json"], capsys)
    assert code == 0, err
    graph, _ = load_costgraph(tmp_path / "g.json")
    assert graph.compute["cpu"] == pytest.approx(phase_splits["w25"].graph.compute["cpu"])
    code, err = run_cli(["costgraph", PLAIN, "--costs", "estimate", "--cache-length", "3"], capsys)
    one_error_line(code, err, "cache length", "no state pairs")


def test_a_real_exporters_decoder_splits_and_validates_for_both_phases(tmp_path):
    """GPT-2 as Optimum exports it: symbolic dims named by the exporter, positions up to 64."""
    result, report = split_and_check(MODELS / "gpt2_tiny.onnx", tmp_path / "out", 2, costs="estimate",
                                     phase="both", prompt_length=8, cache_length=20)
    shapes = result.manifest.input_shapes
    assert shapes["input_ids"] == (1, 1) and shapes["attention_mask"] == (1, 21)
    assert shapes["past_key_values.0.key"] == (1, 4, 20, 8)
    assert report.passed


def test_state_pairs_without_the_decoders_inputs_are_costed_as_given_unless_a_phase_is_asked():
    inputs, outputs = _specs()
    extra = (*inputs, type(inputs[0])("use_cache_branch", "bool", (1,)))
    assert plan_phases(extra, outputs, given={}).phase == "prefill"
    with pytest.raises(UsageError) as exc:
        plan_phases(extra, outputs, given={}, cache_length=4)
    assert "a cache length applies to a decoder" in one_line(exc) and "use_cache_branch" in one_line(exc)
