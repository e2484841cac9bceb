"""Scoring pairs of ideals: per-ideal sums and communication rows, pruning, and the surviving pairs.

Inside, per-ideal sums and communication rows (``Table``), the pruning
staircase (``Budget``), the per-kind sorted views that score blocks of pairs
(``View``), the surviving pairs (``_pairs``/``Pairs``) and the DP layers over
device counts with backtracking (``best_chain``) do the work.

Load of a difference D = I \\ J (J <= I, both ideals) on a communicating kind
is compute(D) + receive(D) + send(D), each tensor paid once. For a tensor t
with producer p, m_t consumers C, and k_t(X) = |C & X|:

* receive: t is produced outside D and read in D. A reader in D is in I, so
  p is in I (I is down-closed) and, not being in D, in J. So t is received
  iff p in J and some reader is in I but not in J, which for J <= I is
  k_t(I) > k_t(J), and ``[k_t(I) > k_t(J)] = sum_a [k_t(J) = a][k_t(I) > a]``
  (exactly one a matches k_t(J)): each term a J-only times an I-only factor.
* send: t is produced in D and read outside D. A reader cannot be in J (J is
  down-closed and p is not in J), so "outside D" is "outside I":
  ``[p in I][k_t(I) < m_t] - [p in J] + [p in J][k_t(I) > m_t - 1]``.

So ``comm(I \\ J) = send(I) + gift(J) + right(I) . left(J)`` with per-ideal
rows, and a block of pairs is scored by one matrix product. Compute and
memory of D are differences of per-ideal sums. (tests/solve/test_dp.py
checks this against the plan module's scoring on every pair of ideals.)

A tensor whose readers need not follow its producer (a training graph's
backward tensor, whose endpoints are placed by their forward nodes) is
priced by membership alone: with E its endpoints (producer and readers),
e = |E| and k(X) = |E & X|, a device pays it exactly when it holds some but
not all of E, ``[0 < k(D) < e]``, and with k(D) = k(I) - k(J) that is
``[k(J) = 0][0 < k(I) < e] + sum_{a >= 1} [k(J) = a][k(I) > a]``: again one
J-only times one I-only factor per term, so these tensors only add rows to
right and left.

Only pairs that can be a device of a chain within the bound are scored
(:func:`score_pairs`, from both ends of the chain). Per device kind, ideals
are sorted by that kind's compute, so a block of ideals only meets a window
of candidates (compute alone must fit),
subset-tested as uint64 bitsets, with the matrix product only over tensors
that vary in the block; the DP layers are one gather and one segmented
minimum over the pairs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from onnxsplit.solve.lattice import (CHUNK, MAX_ROW_BYTES, DPTooLarge, Problem, Progress, check_time, report_progress,
                                     unpack_bits)

# Entries per dense block of (ideal, candidate sub-ideal) pairs: bounds temporary memory.
BLOCK_ELEMS = 1_000_000
BLOCK_ROWS = 512
# Rough cost of scoring one (ideal, candidate) entry, for refusing hopeless runs early.
_SECONDS_PER_ENTRY = 4e-8
# Pruning keeps pairs within this relative slack of the bound, so rounding never drops the optimum.
_SLACK = 1e-9


class Table:
    """Per-ideal sums, sorted by cheapest compute; the communication rows are built on demand."""

    def __init__(self, prob: Problem, bits: np.ndarray) -> None:
        self.prob = prob
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(bits), CHUNK):
            for key, value in self._sums(prob, unpack_bits(bits[start : start + CHUNK], prob.n)).items():
                parts.setdefault(key, []).append(value)
        cols = {key: np.concatenate(value) for key, value in parts.items()}
        order = np.lexsort((cols["size"], cols["cheapest"]))
        self.bits = bits[order]
        self.cheapest = cols["cheapest"][order]
        self.memory = cols["memory"][order]
        self.compute = [cols[f"compute{k}"][order] for k in range(len(prob.kinds))]
        self.banned = [cols[f"banned{k}"][order] for k in range(len(prob.kinds))]
        self.size = cols["size"][order]
        self.empty = int(np.flatnonzero(self.size == 0)[0])
        self.full = int(np.flatnonzero(self.size == prob.n)[0])
        self.columns = prob.columns
        self._comm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._ready = np.zeros(len(bits), dtype=bool)

    @staticmethod
    def _sums(prob: Problem, member: np.ndarray) -> dict[str, np.ndarray]:
        out = {
            "size": member.sum(axis=1),
            "cheapest": member @ prob.cheapest,
            "memory": member @ prob.memory,
        }
        for k, kind in enumerate(prob.kinds):
            out[f"compute{k}"] = member @ kind.compute
            out[f"banned{k}"] = member @ kind.banned
        return out

    def comm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(send, gift, right, left): comm(I \\ J) = send[I] + gift[J] + right[:, I] . left[:, J].

        Row block a of right/left holds the forward tensors with more than a
        readers: left is ``w [p in J]([k_t(J) = a] + [a = m_t - 1])``, right is
        ``[k_t(I) > a]``. Then block a of the other tensors, those with more
        than a endpoints: left ``w [k_t(J) = a]``, right ``[k_t(I) > a]``
        (for a = 0, ``[0 < k_t(I) < e_t]``). Tensors are rows so that gathers
        copy whole rows.
        """
        return self.comm_at(slice(0, len(self.bits)))

    def comm_at(self, ideals: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The whole (send, gift, right, left) of :meth:`comm`, with at least the columns of ``ideals``
        (table indices) filled: they are computed the first time they are asked for, as the pair
        scoring often reads only a few of them."""
        if self._comm is None:
            size = len(self.bits)
            need = size * (2 * self.columns + 2) * 8
            if need > MAX_ROW_BYTES:
                raise DPTooLarge(f"{size} ideals need {need / 2**30:.1f} GiB of communication rows")
            # Allocated, not written: pages are only touched where columns are filled.
            self._comm = (np.empty(size), np.empty(size), np.empty((self.columns, size)),
                          np.empty((self.columns, size)))
            self._ready = np.zeros(size, dtype=bool)
        if isinstance(ideals, slice):
            ideals = np.arange(len(self.bits))[ideals]
        missing = ideals[~self._ready[ideals]]
        if len(missing):
            # Sorted and each once (np.unique would import numpy.ma, which the command line avoids).
            once = np.zeros(len(self.bits), dtype=bool)
            once[missing] = True
            missing = np.flatnonzero(once)
            for start in range(0, len(missing), CHUNK):
                self._fill(missing[start : start + CHUNK])
            self._ready[missing] = True
        return self._comm

    def _fill(self, ideals: np.ndarray) -> None:
        prob = self.prob
        send, gift, right, left = self._comm
        cost = prob.cost[:, None]
        member = np.ascontiguousarray(unpack_bits(self.bits[ideals], prob.n).T)
        inside = np.zeros((len(prob.cost), member.shape[1]))  # k_t(X): readers of t inside X
        for which, reader in prob.readers:
            inside[which] += member[reader]
        paid = member[prob.prod] * cost  # w_t [p_t in X]
        send[ideals] = (paid * (inside < prob.fanout[:, None])).sum(axis=0)
        # send(I \\ J) = send(I) - sum_t w[p in J] + sum_t w[p in J][k_t(I) > m_t - 1]: the middle
        # term depends on J alone, the last shares its I-factor with the receive term a = m_t - 1.
        gift[ideals] = -paid.sum(axis=0)
        row = 0
        for a, (which, _) in enumerate(prob.readers):
            rows = slice(row, row + len(which))
            row += len(which)
            # Two 0/1 terms that may both hold: add them as numbers, not booleans.
            recv = (inside[which] == a).astype(np.float64)
            left[rows, ideals] = paid[which] * (recv + (prob.fanout[which] == a + 1)[:, None])
            right[rows, ideals] = inside[which] > a
        if len(prob.gcost):
            held = np.zeros((len(prob.gcost), member.shape[1]))  # k_t(X): endpoints of t inside X
            for which, end in prob.gends:
                held[which] += member[end]
            for a, (which, _) in enumerate(prob.gends):
                rows = slice(row, row + len(which))
                row += len(which)
                left[rows, ideals] = prob.gcost[which, None] * (held[which] == a)
                if a == 0:
                    right[rows, ideals] = (held[which] > 0) & (held[which] < prob.gsize[which, None])
                else:
                    right[rows, ideals] = held[which] > a


@dataclass(frozen=True)
class Pairs:
    """Usable (I, J, kind) triples sorted by I, with the load of I \\ J on that kind.

    ``starts`` are the first index of each I's run and ``heads`` that I.
    """

    outer: np.ndarray
    inner: np.ndarray
    kind: np.ndarray
    load: np.ndarray
    starts: np.ndarray
    heads: np.ndarray

    @classmethod
    def build(cls, outer: np.ndarray, inner: np.ndarray, kind: np.ndarray, load: np.ndarray) -> Pairs:
        starts = np.flatnonzero(np.r_[True, outer[1:] != outer[:-1]]) if len(outer) else outer
        return cls(outer, inner, kind, load, starts, outer[starts])

    def segment(self, outer: int) -> slice:
        a, b = np.searchsorted(self.outer, [outer, outer + 1])
        return slice(int(a), int(b))


def score_pairs(
    prob: Problem, tab: Table, bound: float, *, max_pairs: int, deadline: float, time_limit: float, progress: Progress | None
) -> Pairs:
    """Every (ideal, sub-ideal, kind) within the bound that can be a device of a chain within it.

    After: a chain whose every load is within ``bound`` uses only pairs
    returned (so the DP over them finds the best such chain); with ``bound``
    inf that is every pair. Which pairs can be on such a chain is decided
    from both ends. Say the devices before a device of kind k are s (a count
    per kind, empty devices included) and those after it u = counts - s - e_k:
    its inner ideal is reachable from {} by s within the bound (``R[s]``) and
    its outer ideal reaches V by u (``B[u]``). Pairs of kind k are scored
    column set by column set (inner ideals newly in some R[s] with s + e_k
    within the counts) or row set by row set (outer ideals newly in some
    such B[u]), a step from {} (all s with |s| = a) or from V (all u with
    |u| = b) at a time, towards whichever end is cheaper next, until
    a + b = m - 1 for m devices. Then the p-th device of every chain has
    p <= a (its inner ideal's pairs were all scored), or m - p <= b - 1
    (its outer ideal's were), or p = a + 1: the last step scores only the
    pairs whose inner ideal is in some R[s] with |s| = a and whose outer
    ideal is in some B[u] with |u| = b. Each pair is scored once.
    """
    limit = bound * (1 + _SLACK)
    views = [View(prob, tab, k) for k in range(len(prob.kinds))]
    budget = Budget(prob, limit)
    if math.isinf(limit):
        # Without a bound every ideal is reachable by one device: score everything.
        return _score_all(views, budget, tab, max_pairs=max_pairs, deadline=deadline, time_limit=time_limit,
                          progress=progress)
    size, nkinds = len(tab.bits), len(prob.kinds)
    counts = tuple(k.count for k in prob.kinds)
    devices = sum(counts)
    states = list(itertools.product(*(range(c + 1) for c in counts)))
    unit = [tuple(int(i == k) for i in range(nkinds)) for k in range(nkinds)]

    def plus(s: tuple[int, ...], k: int, sign: int = 1) -> tuple[int, ...] | None:
        t = tuple(x + sign * e for x, e in zip(s, unit[k]))
        return t if all(0 <= x <= c for x, c in zip(t, counts)) else None

    none = np.zeros(size, dtype=bool)
    reach = {state: none for state in states}  # R[s]
    back = {state: none for state in states}  # B[u]
    reach[states[0]] = none.copy()
    reach[states[0]][tab.empty] = True
    back[states[0]] = none.copy()
    back[states[0]][tab.full] = True
    cols_done = [none.copy() for _ in views]  # per kind, inner ideals whose pairs are all scored
    rows_done = [none.copy() for _ in views]  # per kind, outer ideals whose pairs are all scored
    parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in views]
    total, guess, ahead, behind = 0, 0.0, 0, 0

    def frontier(sets: dict, level: int, k: int, done: np.ndarray) -> np.ndarray:
        out = none.copy()
        for state in states:
            if sum(state) == level and plus(state, k) is not None:
                out |= sets[state]
        return out & ~done

    while True:
        forward = [(views[k].positions(~rows_done[k]), views[k].positions(frontier(reach, ahead, k, cols_done[k])))
                   for k in range(nkinds)]
        backward = [(views[k].positions(frontier(back, behind, k, rows_done[k])), views[k].positions(~cols_done[k]))
                    for k in range(nkinds)]
        if ahead + behind == devices - 1:
            # The device between: inner ideal from the last R[s], outer from the last B[u].
            join = [(views[k].positions(frontier(back, behind, k, rows_done[k])),
                     views[k].positions(frontier(reach, ahead, k, cols_done[k]))) for k in range(nkinds)]
            guess += sum(v.entries(budget, rows=r, cols=c) for v, (r, c) in zip(views, join)) * _SECONDS_PER_ENTRY
            if guess * (1 + tab.columns / 128) > time_limit:
                raise DPTooLarge(f"scoring pairs among {size} ideals would take about {guess:.0f} s"
                                 f" (limit {time_limit:g} s)")
            for k, (rows, cols) in enumerate(join):
                if len(rows) and len(cols):
                    got = views[k].pairs(budget, rows=rows, cols=cols, max_pairs=max_pairs - total, deadline=deadline,
                                         time_limit=time_limit)
                    total += len(got[0])
                    parts[k].append(got)
            report_progress(progress, "pairs", 1.0)
            break
        cost = [sum(v.entries(budget, rows=r, cols=c) for v, (r, c) in zip(views, side))
                for side in (forward, backward)]
        is_forward = cost[0] <= cost[1]
        # Refuse rather than time out: entries scored ~ sum of window widths.
        guess += min(cost) * _SECONDS_PER_ENTRY
        if guess * (1 + tab.columns / 128) > time_limit:
            raise DPTooLarge(f"scoring pairs among {size} ideals would take about {guess:.0f} s (limit {time_limit:g} s)")
        for k, (rows, cols) in enumerate(forward if is_forward else backward):
            if len(rows) and len(cols):
                got = views[k].pairs(budget, rows=rows, cols=cols, max_pairs=max_pairs - total, deadline=deadline,
                                     time_limit=time_limit)
                total += len(got[0])
                parts[k].append(got)
            if is_forward:
                cols_done[k] |= frontier(reach, ahead, k, cols_done[k])
            else:
                rows_done[k] |= frontier(back, behind, k, rows_done[k])
        # One device more from the side just scored: every pair from R[s] (or into B[u]) of kind k is scored now.
        kind_pairs = [(np.concatenate([o for o, _, _ in ps]), np.concatenate([i for _, i, _ in ps])) if ps else None
                      for ps in parts]
        level = ahead + 1 if is_forward else behind + 1
        sets = reach if is_forward else back
        for state in states:
            if sum(state) != level:
                continue
            got = none.copy()
            for k in range(nkinds):
                prev = plus(state, k, -1)
                if prev is None or kind_pairs[k] is None:
                    continue
                outer, inner = kind_pairs[k]
                if is_forward:
                    got[outer[reach[prev][inner]]] = True
                else:
                    got[inner[back[prev][outer]]] = True
            sets[state] = got
        if is_forward:
            ahead += 1
        else:
            behind += 1
        report_progress(progress, "pairs", (ahead + behind) / devices)
    return _collect([(o, i, np.full(len(o), k, dtype=np.int64), load) for k, ps in enumerate(parts)
                     for o, i, load in ps], several=True)


def _score_all(views: list[View], budget: Budget, tab: Table, *, max_pairs: int, deadline: float, time_limit: float,
               progress: Progress | None) -> Pairs:
    # Refuse up front rather than time out: entries scored ~ sum of window widths.
    guess = sum(v.entries(budget) for v in views) * _SECONDS_PER_ENTRY * (1 + tab.columns / 128)
    if guess > time_limit:
        raise DPTooLarge(f"scoring pairs among {len(tab.bits)} ideals would take about {guess:.0f} s (limit {time_limit:g} s)")
    parts = []
    total = 0
    for k, view in enumerate(views):
        outer, inner, load = view.pairs(budget, max_pairs=max_pairs - total, deadline=deadline, time_limit=time_limit)
        total += len(outer)
        parts.append((outer, inner, np.full(len(outer), k, dtype=np.int64), load))
        report_progress(progress, "pairs", (k + 1) / len(views))
    return _collect(parts, several=len(views) > 1)


def _collect(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], *, several: bool) -> Pairs:
    """Pairs from parts each sorted by outer: merged, sorted by outer (stably, so each part keeps its order)."""
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs.build(empty, empty, empty, np.zeros(0))
    outer, inner, kind, load = (np.concatenate(x) for x in zip(*parts))
    if several:
        order = np.argsort(outer, kind="stable")
        outer, inner, kind, load = outer[order], inner[order], kind[order], load[order]
    return Pairs.build(outer, inner, kind, load)


class Budget:
    """Which pairs can lie on a chain whose every load is within the limit.

    A device of kind k with compute_k(D) <= limit holds at most
    cap_k = rho_k * limit of cheapest compute, rho_k = max over its nodes of
    cheapest / compute_k. If the device holding I \\ J is the s-th in the
    chain (s counting devices per kind, s[k] >= 1), the devices before it
    cover J and those after it cover V \\ I, so
    ``cheapest(J) <= cap(s - e_k)`` and ``total - cheapest(I) <= cap(all - s)``.
    Over all s this is a staircase: for each J a least cheapest(I). Summed,
    it also bounds the pair's own compute from below (``low``), which
    narrows each block's window when the bound is near a perfect balance.
    """

    def __init__(self, prob: Problem, limit: float) -> None:
        kinds = prob.kinds
        self.limit = limit
        if math.isinf(limit):
            self.low = [-math.inf] * len(kinds)
            self.stairs: list[tuple[np.ndarray, np.ndarray]] | None = None
            return
        total = float(prob.cheapest.sum())
        tol = 1e-9 * max(1.0, total)
        caps = []
        for kind in kinds:
            usable = (kind.banned == 0) & (kind.compute > 0)
            caps.append(float((prob.cheapest[usable] / kind.compute[usable]).max(initial=0.0)) * limit)
        counts = [k.count for k in kinds]
        everything = sum(c * cap for c, cap in zip(counts, caps))
        self.low = [total - everything + cap - tol for cap in caps]
        self.stairs = []
        for k in range(len(kinds)):
            before, after = [], []
            for s in itertools.product(*(range(c + 1) for c in counts)):
                if s[k] == 0:
                    continue
                used = sum(x * cap for x, cap in zip(s, caps))
                before.append(used - caps[k] + tol)
                after.append(total - (everything - used) - tol)
            order = np.argsort(before)
            # Least cheapest(I) over the states whose "before" capacity admits J: a suffix minimum.
            least = np.minimum.accumulate(np.asarray(after)[order][::-1])[::-1]
            self.stairs.append((np.asarray(before)[order], least))

    def least_outer(self, k: int, cheapest_inner: np.ndarray) -> np.ndarray:
        """Per sub-ideal J, the least cheapest(I) of an ideal I that may pair with it on kind k."""
        if self.stairs is None:
            return np.full(len(cheapest_inner), -np.inf)
        before, least = self.stairs[k]
        at = np.searchsorted(before, cheapest_inner, "left")
        return np.where(at < len(before), least[np.minimum(at, len(before) - 1)], np.inf)


class View:
    """The table seen by one kind: ideals sorted by that kind's compute.

    A pair's load on the kind is at least the difference of the kind's
    compute sums, so in this order each block of ideals only meets a window
    of candidates; a slow kind (the paper's CPU) gets a narrow window of its
    own instead of sharing the fast kind's wide one.
    """

    def __init__(self, prob: Problem, tab: Table, k: int) -> None:
        self.prob, self.kind, self.k = prob, prob.kinds[k], k
        if np.array_equal(self.kind.compute, prob.cheapest):
            self.perm = None
            self.key = tab.cheapest
        else:
            self.perm = np.lexsort((tab.size, tab.compute[k]))
            self.key = tab.compute[k][self.perm]
        take = (lambda a: a) if self.perm is None else (lambda a: a[self.perm])
        self.bits = take(tab.bits)
        self.compute = take(tab.compute[k])
        self.banned = take(tab.banned[k])
        self.any_banned = bool(self.kind.banned.any())
        self.memory = take(tab.memory)
        self.cheapest = take(tab.cheapest)
        self.communicates = self.kind.communicates and tab.columns > 0
        self._tab = tab
        self.eps = 1e-9 * max(1.0, float(self.key[-1]))

    def _block_comm(self, rows: slice | np.ndarray, cols: slice | np.ndarray) -> np.ndarray:
        """comm of every (row ideal \\ column ideal) in a block (view positions, as a slice or an array).

        Columns whose product is zero across the block are dropped, and those
        whose row factor is 1 across it fold into a per-column vector, so the
        matrix product only spans tensors near the block's frontier.
        """
        if self.perm is not None:
            rows, cols = self.perm[rows], self.perm[cols]
        send, gift, right, left = self._tab.comm_at(rows)
        self._tab.comm_at(cols)
        r, l = right[:, rows], left[:, cols]
        r_any, r_all = r.any(axis=1), r.all(axis=1)
        live = r_any & (l != 0).any(axis=1)
        ones = live & r_all
        vary = live & ~r_all
        inner = gift[cols] + l[ones].sum(axis=0)
        if vary.any():
            comm = r[vary].T @ l[vary]
            comm += send[rows, None]
        else:
            comm = np.repeat(send[rows, None], l.shape[1], axis=1)
        comm += inner[None, :]
        return comm

    def positions(self, mask: np.ndarray | None) -> np.ndarray | None:
        """The view positions (ascending) of the table indices where ``mask`` holds; None for all."""
        if mask is None:
            return None
        return np.flatnonzero(mask if self.perm is None else mask[self.perm])

    def _window(self, budget: Budget, least_outer: np.ndarray, first, last, cols: np.ndarray | None = None):
        """Candidates [lo, hi) for rows first..last (view positions, ints or arrays): compute within the limit,
        at least ``low``. With ``cols`` (ascending view positions) the window indexes into ``cols``.

        In cheapest order the staircase is monotone, so it also cuts the window's end.
        """
        key, eps = self.key, self.eps
        ckey = key if cols is None else key[cols]
        lo = np.searchsorted(ckey, key[first] - budget.limit - eps, "left")
        hi = np.searchsorted(ckey, key[last] - max(budget.low[self.k], 0.0) + eps, "right")
        if self.perm is None and budget.stairs is not None:
            least = least_outer if cols is None else least_outer[cols]
            hi = np.minimum(hi, np.searchsorted(least, self.cheapest[last], "right"))
        return lo, hi

    def entries(self, budget: Budget, *, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> float:
        """How many (row, candidate) entries scoring would visit (rows and cols as in :meth:`pairs`)."""
        every = np.arange(len(self.key)) if rows is None else rows
        lo, hi = self._window(budget, budget.least_outer(self.k, self.cheapest), every, every, cols)
        return float(np.maximum(hi - lo, 0).sum())

    def pairs(
        self, budget: Budget, *, rows: np.ndarray | None = None, cols: np.ndarray | None = None, max_pairs: int,
        deadline: float, time_limit: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(outer, inner, load) in table indices, sorted by outer, for pairs the budget allows.

        ``rows`` (outer ideals) and ``cols`` (inner ideals) are ascending view
        positions (:meth:`positions`) to score among; None means every ideal.
        """
        size = len(self.key)
        rpos = np.arange(size) if rows is None else rows
        cpos = None if cols is None else cols
        limit, low = budget.limit, budget.low[self.k]
        least_outer = budget.least_outer(self.k, self.cheapest)
        mem_cap = self.kind.memory * (1 + 1e-12)
        # With low > 0 no device of this kind may stay empty, so the diagonal is never needed.
        empty_ok = low <= 0
        chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        total = 0
        b0, nrows = 0, len(rpos)
        while b0 < nrows:
            lo, hi = self._window(budget, least_outer, rpos[b0], rpos[b0], cpos)
            b1 = min(nrows, b0 + int(np.clip(BLOCK_ELEMS // max(int(hi - lo), 1), 8, BLOCK_ROWS)))
            lo, hi = (int(x) for x in self._window(budget, least_outer, rpos[b0], rpos[b1 - 1], cpos))
            if hi <= lo:
                b0 = b1
                continue
            # Slices (views, no copies) where the positions are contiguous.
            row_at = slice(int(rpos[b0]), int(rpos[b1 - 1]) + 1) if rows is None else rpos[b0:b1]
            col_at = slice(lo, hi) if cpos is None else cpos[lo:hi]
            row_ids = np.arange(row_at.start, row_at.stop) if rows is None else row_at
            col_ids = np.arange(lo, hi) if cpos is None else col_at
            load = self.compute[row_at, None] - self.compute[None, col_at]
            # Where a row's own ideal is among the candidates: the empty-device pair.
            at = np.minimum(np.searchsorted(col_ids, row_ids), len(col_ids) - 1)
            hit = col_ids[at] == row_ids
            diag = (np.flatnonzero(hit), at[hit])
            if empty_ok:
                load[diag] = 0.0
                keep = load <= limit
            else:
                keep = (load <= limit) & (load >= low)
            if budget.stairs is not None:
                keep &= self.cheapest[row_at, None] >= least_outer[None, col_at]
            inner_bits, outer_bits = self.bits[col_at], self.bits[row_at]
            # A word matters only where some candidate has a bit that some row lacks.
            union = np.bitwise_or.reduce(inner_bits, axis=0)
            common = np.bitwise_and.reduce(outer_bits, axis=0)
            for w in np.flatnonzero(union & ~common):
                keep &= (inner_bits[None, :, w] & ~outer_bits[:, None, w]) == 0
            if self.any_banned:
                keep &= self.banned[row_at, None] == self.banned[None, col_at]
            if not math.isinf(mem_cap):
                keep &= (self.memory[row_at, None] - self.memory[None, col_at]) <= mem_cap
            if self.communicates and keep.any():
                comm = self._block_comm(row_at, col_at)
                if empty_ok:
                    # An empty device: rounding must not make it cost anything.
                    comm[diag] = 0.0
                load += comm
                keep &= load <= limit
            ii, jj = np.nonzero(keep)
            if len(ii):
                chunks.append((row_ids[ii], col_ids[jj], np.maximum(load[ii, jj], 0.0)))
                total += len(ii)
            if total > max_pairs:
                raise DPTooLarge(f"too many (ideal, sub-ideal) pairs survive pruning among {size} ideals")
            check_time(deadline, time_limit, "scoring pairs of ideals")
            b0 = b1
        if not chunks:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
        outer, inner, load = (np.concatenate(x) for x in zip(*chunks))
        if self.perm is not None:
            outer, inner = self.perm[outer], self.perm[inner]
            order = np.argsort(outer, kind="stable")
            outer, inner, load = outer[order], inner[order], load[order]
        return outer, inner, load
