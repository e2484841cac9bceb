"""Pair scoring from both ends keeps every pair that lies on a chain within the bound."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.solve import pairs as pairsmod
from onnxsplit.solve.chain import best_chain
from onnxsplit.solve.coarsen import coarsen
from onnxsplit.solve.lattice import Problem, enumerate_ideals
from test_dp import hsettings, problems, small_blocks
from test_training import training_problems

FAR = {"max_pairs": 10**8, "deadline": math.inf, "time_limit": 60.0, "progress": None}


def _triples(pairs: pairsmod.Pairs) -> list[tuple[int, int, int]]:
    return list(zip(pairs.outer.tolist(), pairs.inner.tolist(), pairs.kind.tolist()))


def _on_some_chain(prob: Problem, tab: pairsmod.Table, pairs: pairsmod.Pairs) -> set[tuple[int, int, int]]:
    """The pairs that are the device after counts s and before counts u = all - s - e_k of some chain."""
    counts = tuple(k.count for k in prob.kinds)
    states = sorted(itertools.product(*(range(c + 1) for c in counts)), key=sum)
    triples = _triples(pairs)
    reach = {s: set() for s in states}
    back = {s: set() for s in states}
    reach[states[0]].add(tab.empty)
    back[states[0]].add(tab.full)
    for s in states[1:]:
        for i, j, k in triples:
            if s[k]:
                less = s[:k] + (s[k] - 1,) + s[k + 1 :]
                if j in reach[less]:
                    reach[s].add(i)
                if i in back[less]:
                    back[s].add(j)
    out = set()
    for i, j, k in triples:
        for s in states:
            u = tuple(c - x - (n == k) for n, (c, x) in enumerate(zip(counts, s)))
            if min(u) >= 0 and j in reach[s] and i in back[u]:
                out.add((i, j, k))
    return out


def _check(graph, devices, factor: float) -> None:
    coarse = coarsen(graph, devices)
    prob = Problem(coarse.graph, devices, precedence=coarse.precedence)
    bits = enumerate_ideals(prob, max_ideals=10**6, deadline=math.inf, time_limit=60.0, progress=None)
    tab = pairsmod.Table(prob, bits)
    every = pairsmod.score_pairs(prob, tab, math.inf, **FAR)
    optimum, _ = best_chain(prob, tab, every, deadline=math.inf, time_limit=60.0, progress=None)
    if math.isinf(optimum):
        return
    bound = optimum * factor
    limit = bound * (1 + pairsmod._SLACK)
    views = [pairsmod.View(prob, tab, k) for k in range(len(prob.kinds))]
    within = pairsmod._score_all(views, pairsmod.Budget(prob, limit), tab, max_pairs=10**8, deadline=math.inf,
                                 time_limit=60.0, progress=None)
    got = pairsmod.score_pairs(prob, tab, bound, **FAR)
    kept = _triples(got)
    assert len(kept) == len(set(kept)), "a pair was scored twice"
    assert set(kept) <= set(_triples(within))
    assert _on_some_chain(prob, tab, within) <= set(kept)
    assert (np.diff(got.outer) >= 0).all()
    value, _ = best_chain(prob, tab, got, deadline=math.inf, time_limit=60.0, progress=None)
    assert value == optimum


@st.composite
def more_devices(draw, source=problems(max_nodes=9)):
    """A random problem with more devices than a brute force allows (the pairs need no brute force)."""
    graph, devices = draw(source)
    acc, cpu = devices.kinds
    kinds = (DeviceKind("acc", draw(st.integers(1, 5)), memory=acc.memory),
             DeviceKind("cpu", draw(st.integers(0, 2)), memory=cpu.memory, communicates=cpu.communicates))
    return graph, Devices(kinds)


@hsettings(120)
@given(more_devices(), st.sampled_from([1.0, 1.001, 1.5]))
def test_both_ends_keep_every_pair_on_a_chain(problem, factor: float) -> None:
    _check(*problem, factor)


@hsettings(40)
@given(more_devices(), st.sampled_from([1.0, 1.5]))
def test_both_ends_in_small_blocks(problem, factor: float) -> None:
    with small_blocks():
        _check(*problem, factor)


@hsettings(60)
@given(training_problems(), st.sampled_from([1.0, 1.2]))
def test_both_ends_on_training_graphs(problem, factor: float) -> None:
    _check(*problem, factor)
