"""The chain DP over scored pairs of ideals: DP layers over device counts, with backtracking."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from onnxsplit.solve.lattice import MAX_ROW_BYTES, DPTooLarge, Problem, Progress, check_time, report_progress
from onnxsplit.solve.pairs import Pairs, Table, score_pairs


def best_chain(
    prob: Problem, tab: Table, pairs: Pairs, *, deadline: float, time_limit: float, progress: Progress | None
) -> tuple[float, list[tuple[int, int, int]]]:
    """The DP layers over device counts, then the chain (inner, outer, kind) from first to last device.

    ``best[s][I]`` is the least max-load covering I with at most s[k]
    devices of kind k. A layer takes, for each pair, the previous layer of
    the pair's kind at J, so all kinds are one gather and one segmented min.
    """
    nkinds = len(prob.kinds)
    counts = [k.count for k in prob.kinds]
    states = list(itertools.product(*(range(c + 1) for c in counts)))
    index = {state: i for i, state in enumerate(states)}
    size = len(tab.bits)
    if (len(states) + 1) * size * 8 > MAX_ROW_BYTES:
        raise DPTooLarge(f"{len(states)} device-count states over {size} ideals need too much memory")
    # Row len(states) stays infinite: the "previous layer" of a kind with no device left.
    best = np.full((len(states) + 1, size), np.inf)
    best[0, tab.empty] = 0.0
    flat = pairs.kind * size + pairs.inner
    last = len(states) - 1
    full = pairs.segment(tab.full)

    def previous(state: tuple[int, ...]) -> np.ndarray:
        rows = [index[state[:k] + (state[k] - 1,) + state[k + 1 :]] if state[k] else len(states) for k in range(nkinds)]
        return best[rows].ravel()

    for i, state in enumerate(states[1:], 1):
        prev = previous(state)
        if i == last:
            # Only the whole graph matters on the last layer.
            if full.start < full.stop:
                best[i, tab.full] = np.maximum(prev[flat[full]], pairs.load[full]).min()
            break
        vals = np.maximum(prev[flat], pairs.load)
        best[i, pairs.heads] = np.minimum.reduceat(vals, pairs.starts)
        check_time(deadline, time_limit, "running the DP layers")
        report_progress(progress, "layers", i / last)
    report_progress(progress, "layers", 1.0)
    value = float(best[last, tab.full])
    if math.isinf(value):
        return value, []
    chain: list[tuple[int, int, int]] = []
    state, outer = states[last], tab.full
    while outer != tab.empty:
        seg = pairs.segment(outer)
        vals = np.maximum(previous(state)[flat[seg]], pairs.load[seg])
        hits = np.flatnonzero(vals == best[index[state], outer])
        inner, kind = pairs.inner[seg][hits], pairs.kind[seg][hits]
        if not len(hits):  # pragma: no cover - the value came from one of these pairs
            raise AssertionError("DP backtracking lost its way")
        # Prefer leaving a device empty when that ties: fewer stages, same max load.
        pick = int(np.argmax(inner == outer)) if (inner == outer).any() else 0
        j, k = int(inner[pick]), int(kind[pick])
        if j != outer:
            chain.append((j, outer, k))
        state, outer = state[:k] + (state[k] - 1,) + state[k + 1 :], j
    chain.reverse()
    return value, chain


@dataclass(frozen=True)
class LatticeResult:
    """The best chain found: its max load, its devices in order, and how many pairs were scored.

    ``chain[i]`` is ``(inner, outer, kind)`` for the i-th non-empty device:
    it holds ``outer & ~inner`` (bitset rows) and is of kind
    ``Problem.kinds[kind]``. ``value`` is ``inf`` and ``chain`` empty when no
    chain stays within the bound.
    """

    value: float
    chain: tuple[tuple[np.ndarray, np.ndarray, int], ...]
    pairs: int


def solve_lattice(
    prob: Problem,
    bits: np.ndarray,
    bound: float,
    *,
    max_pairs: int,
    deadline: float,
    time_limit: float,
    progress: Progress | None,
) -> LatticeResult:
    """The best chain through the given ideals whose every device's load is within ``bound``.

    Before: ``bits`` holds ideals of ``prob`` (rows from :func:`enumerate_ideals`
    or any subset containing the empty and the full set). Raises
    :class:`DPTooLarge` past ``max_pairs`` pairs or the memory limits, and
    :class:`DPTimeout` after ``deadline`` (a ``time.monotonic()`` value).
    """
    tab = Table(prob, bits)
    pairs = score_pairs(prob, tab, bound, max_pairs=max_pairs, deadline=deadline, time_limit=time_limit, progress=progress)
    value, chain = best_chain(prob, tab, pairs, deadline=deadline, time_limit=time_limit, progress=progress)
    return LatticeResult(value, tuple((tab.bits[j], tab.bits[i], k) for j, i, k in chain), len(pairs.outer))
