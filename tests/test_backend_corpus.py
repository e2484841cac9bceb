"""The onnx package's backend test suite as a corpus: a fixed sample splits and validates, or is refused cleanly.

tools/backend_corpus.py runs the whole suite; this runs a seeded sample of it
spread over every corpus, in two worker processes.
"""

from __future__ import annotations

import re

import onnx
import pytest

import backend_corpus as bc

SAMPLE = 400
SEED = 0
# Models the full run found hard, checked on top of the sample: a lone Constant, values that steer an If,
# sequence and optional hand-offs, a stage nothing later needs, shapes that depend on input values.
HARD = ("node/test_constant", "node/test_if_seq", "node/test_identity_opt", "node/test_loop13_seq",
        "node/test_affine_grid_2d_expanded", "node/test_attention_4d_softcap_neginf_mask_expanded",
        "node/test_reduce_l2_keep_dims_example_expanded", "simple/test_sequence_model1")


@pytest.fixture(scope="module")
def node_cases():
    return bc._node_cases()


@pytest.fixture(scope="module")
def corpus(node_cases):
    return bc.list_corpus(node_cases=node_cases)


def test_the_corpus_lists_every_source(corpus):
    counts = {c: sum(1 for e in corpus if e.corpus == c) for c in bc.CORPORA}
    assert all(counts[c] > 0 for c in bc.CORPORA), counts
    assert counts["node"] > 1000
    assert len({e.key for e in corpus}) == len(corpus)
    for e in corpus:
        assert (e.model != "") == (e.corpus != "node")
        assert (e.inputs is None) == (e.corpus in ("light", "node"))


def test_the_sample_is_fixed_and_spread_over_every_corpus(corpus):
    first = bc.select(corpus, sample=SAMPLE, seed=SEED)
    assert first == bc.select(list(corpus), sample=SAMPLE, seed=SEED)
    assert first != bc.select(corpus, sample=SAMPLE, seed=SEED + 1)
    assert len(first) == SAMPLE
    assert {e.corpus for e in first} == set(bc.CORPORA)
    assert [e for e in corpus if e in first] == first  # the corpus order is kept


def test_only_filters_by_name_or_corpus():
    corpus = bc.list_corpus(node_cases=[])
    assert {e.corpus for e in bc.select(corpus, only="light/*")} == {"light"}
    assert [e.name for e in bc.select(corpus, only="light_squeezenet")] == ["light_squeezenet"]
    assert bc.select(corpus, only="nothing-like-this") == []


def test_equal_runs_cut_the_order_into_at_most_four_stages():
    assert bc.equal_runs(["a"]) == {"a": 0}
    assert bc.equal_runs(["a", "b", "c"]) == {"a": 0, "b": 1, "c": 2}
    plan = bc.equal_runs([f"n{i}" for i in range(10)])
    sizes = [list(plan.values()).count(s) for s in range(4)]
    assert list(plan.values()) == sorted(plan.values()) and sizes == [3, 2, 3, 2]


def test_options_follow_the_parameter_names_split_and_validate_take():
    def today(model, *, plan_path=None, inputs_path=None):
        pass

    def renamed(model, *, plan=None, inputs=None):
        pass

    options = {"plan": ("plan", "plan_path", "p.json"), "inputs": ("inputs", "inputs_path", "x.npz"),
               "other": ("other", "other", 1)}
    assert bc._adapt(today, **options) == {"plan_path": "p.json", "inputs_path": "x.npz"}
    assert bc._adapt(renamed, **options) == {"plan": "p.json", "inputs": "x.npz"}


def test_messages_group_by_their_shape():
    a = bc.message_group("node 'Add_3' reads 'x' with 4 dims (onnxsplit/split.py:65 in f)")
    b = bc.message_group("node 'Mul_1' reads 'y' with 2 dims (onnxsplit/split.py:65 in f)")
    assert a == b


def test_node_cases_are_written_as_backend_test_folders(node_cases, tmp_path):
    case = next(c for c in node_cases if c.name == "test_sequence_insert_at_back")
    entry = bc._write_node_case(case, tmp_path / case.name)
    model = onnx.load(entry.model)
    feeds = bc.load_inputs(entry, model)
    assert list(feeds) == [vi.name for vi in bc._graph_inputs(model)]
    assert isinstance(feeds[model.graph.input[0].name], list)


def test_a_model_over_the_time_limit_is_killed_and_counted():
    entry = next(e for e in bc.list_corpus(node_cases=[]) if e.name == "light_densenet121")
    records = bc.run_corpus([entry], timeout=0.05)
    assert [(r.case, r.outcome) for r in records] == [("solver", "timeout"), ("plan", "timeout")]


@pytest.mark.slow
def test_a_fixed_sample_splits_and_validates_or_is_refused_in_one_line(corpus, node_cases):
    sample = {e.key for e in bc.select(corpus, sample=SAMPLE, seed=SEED)}
    entries = [e for e in corpus if e.key in sample or e.key in HARD]
    assert len(entries) - len(sample) == sum(1 for key in HARD if key not in sample)
    records = bc.run_corpus(entries, jobs=2, timeout=60.0, node_cases=node_cases)

    def listing(outcome: str) -> str:
        return "\n".join(f"{r.corpus}/{r.name} [{r.case}] {r.message}" for r in records if r.outcome == outcome)

    ran = [r for r in records if r.outcome != bc.ORT_CANNOT_RUN]
    assert len({(r.corpus, r.name) for r in ran}) > SAMPLE // 2  # most of the sample is split, not skipped
    assert not listing("traceback"), "tracebacks:\n" + listing("traceback")
    assert not listing("FAILED"), "validation failed:\n" + listing("FAILED")
    assert not listing("timeout"), "timeouts:\n" + listing("timeout")
    for r in records:
        if r.outcome == "refused":
            assert r.message and "\n" not in r.message, f"{r.corpus}/{r.name}: refusal not in one line: {r.message!r}"
            # The construct is named as the package names things: quoted.
            assert re.search(r"'[^']+'|\"[^\"]+\"", r.message), \
                f"{r.corpus}/{r.name}: refusal names nothing: {r.message}"
