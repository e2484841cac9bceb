"""Ideals that can lie on a chain within a bound, and the DP run that searches only those.

Every plan the DP returns is a chain ``{} = I_0 <= ... <= I_m = V``. Given a
limit U on every device's load, most ideals cannot be any I_p: the devices
before I would hold too much, or those after it too little capacity, or the
tensors crossing I's frontier would cost too much to send and receive. This
module enumerates only the ideals that pass that test (exactly: an ideal
that fails it lies on no chain whose every load is within U), and searches a
bound U downwards until the lattice within it is small enough.

The test, for an ideal I with cheapest compute c(I) and frontier cost x(I)
(the tensors produced in I and read outside it): suppose the devices before
I are s[k] devices of kind k (empty ones included). Each such device D of
kind k with load at most U satisfies

* ``cheapest(D) <= rho_k U`` (``cap_k``, as in :class:`pairs.Budget`), and
* ``cheapest(D) + comm(D) <= U`` when every kind communicates, since
  cheapest compute never exceeds the kind's own.

Every frontier tensor of I is sent by its producer's device, which is before
I, and received by a device after it. Summing over the devices on each side:

* ``c(I) <= cap(s)``, ``c(I) + r x(I) <= |s| U``,
* ``T - c(I) <= cap(n - s)``, ``T - c(I) + r x(I) <= (m - |s|) U``,

with T the total cheapest compute, m the number of devices, and r = 1 if
every kind communicates, else 0. An ideal passes when some s satisfies all
four.

While ideals are grown node by node in topological order, a row R (an ideal
of nodes 0..v) only ever grows by nodes after v, so the final ideal's c lies
in ``[c(R), c(R) + cheapest of nodes after v]``, and its frontier includes
every tensor produced in R that some node up to v outside R reads. A row
for which no value in that range passes cannot become a passing ideal and
is dropped at once: the test is a relaxation of the final one.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from onnxsplit.solve.chain import LatticeResult, solve_lattice
from onnxsplit.solve.cutbound import node_bound
from onnxsplit.solve.lattice import DPTimeout, DPTooLarge, Problem, Progress, check_time, pack_bits, report_progress

log = logging.getLogger(__name__)

# Relative slack on the limit: never stricter than the pair scoring's, so rounding drops no chain it keeps.
_SLACK = 1e-9


class IdealBudget:
    """Which (cheapest compute, frontier cost) an ideal may have to lie on a chain within ``limit``.

    ``limit`` is inf for no pruning. :meth:`admits` is vectorised over rows.
    """

    def __init__(self, prob: Problem, limit: float) -> None:
        self.limit = limit
        self.total = float(prob.cheapest.sum())
        if math.isinf(limit):
            self.before_cheap = self.before_all = self.after_cheap = self.after_all = None
            self.r = 0.0
            return
        limit = limit * (1 + _SLACK)
        tol = 1e-9 * max(1.0, self.total, limit)
        kinds = prob.kinds
        caps = []
        for kind in kinds:
            usable = (kind.banned == 0) & (kind.compute > 0)
            caps.append(float((prob.cheapest[usable] / kind.compute[usable]).max(initial=0.0)) * limit)
        counts = [k.count for k in kinds]
        devices = sum(counts)
        everything = sum(c * cap for c, cap in zip(counts, caps))
        self.r = 1.0 if all(k.communicates for k in kinds) else 0.0
        states = list(itertools.product(*(range(c + 1) for c in counts)))
        cheap = np.array([sum(x * cap for x, cap in zip(s, caps)) for s in states])
        used = np.array([sum(s) for s in states], dtype=np.float64)
        self.before_cheap = cheap + tol
        self.before_all = used * limit + tol
        self.after_cheap = everything - cheap + tol
        self.after_all = (devices - used) * limit + tol

    def admits(self, low: np.ndarray, high: np.ndarray, frontier: np.ndarray) -> np.ndarray:
        """Rows whose final ideal may pass: some c in [low, high] and some state s admit the frontier cost."""
        if self.before_cheap is None:
            return np.ones(len(low), dtype=bool)
        rx = self.r * frontier[:, None]
        top = np.minimum(np.minimum(self.before_cheap[None, :], self.before_all[None, :] - rx), high[:, None])
        bottom = np.maximum(
            np.maximum(self.total - self.after_cheap[None, :], self.total - self.after_all[None, :] + rx), low[:, None]
        )
        return (bottom <= top).any(axis=1)


@dataclass(frozen=True)
class _InTensor:
    """A tensor read by node v: counted on the frontier of a row that excludes v when the row holds
    its producer and every earlier reader (so each tensor is counted once, at its first excluded reader)."""

    cost: float
    mask: tuple[tuple[int, np.uint64], ...]


def _in_tensors(prob: Problem) -> list[list[_InTensor]]:
    """Per node, the positive-cost tensors it reads whose producer precedes every reader."""
    readers: list[list[int]] = [[] for _ in range(len(prob.cost))]
    for which, reader in prob.readers:
        for t, c in zip(which.tolist(), reader.tolist()):
            readers[t].append(c)
    out: list[list[_InTensor]] = [[] for _ in range(prob.n)]
    for t, cons in enumerate(readers):
        p = int(prob.prod[t])
        if any(c <= p for c in cons):
            continue  # not a forward tensor in this order: leaving it out only weakens the bound
        for c in sorted(set(cons)):
            words: dict[int, int] = {}
            for u in [p] + [e for e in cons if e < c]:
                words[u >> 6] = words.get(u >> 6, 0) | 1 << (u & 63)
            mask = tuple((w, np.uint64(m)) for w, m in sorted(words.items()))
            out[c].append(_InTensor(float(prob.cost[t]), mask))
    return out


def _holds(rows: np.ndarray, mask) -> np.ndarray:
    ok = np.ones(len(rows), dtype=bool)
    for w, m in mask:
        ok &= (rows[:, w] & m) == m
    return ok


def enumerate_bounded_ideals(
    prob: Problem,
    limit: float,
    *,
    max_ideals: int,
    deadline: float,
    time_limit: float,
    progress: Progress | None = None,
) -> np.ndarray:
    """The ideals that may lie on a chain whose every load is within ``limit``, as bitset rows.

    With ``limit`` inf this is every ideal (as :func:`lattice.enumerate_ideals`).
    The result may lack the empty or the full ideal: then no chain fits the
    limit. Raises :class:`DPTooLarge` when more than ``max_ideals`` rows are
    alive at once and :class:`DPTimeout` past ``deadline``.
    """
    budget = IdealBudget(prob, limit)
    prune = budget.before_cheap is not None
    masks = prob.pred_masks
    readers = _in_tensors(prob) if prune and budget.r > 0 else [[] for _ in range(prob.n)]
    # Cheapest compute of the nodes after v: the most a row may still gain.
    rest = np.concatenate([np.cumsum(prob.cheapest[::-1])[::-1][1:], [0.0]]) if prob.n else np.zeros(0)
    bits = np.zeros((1, prob.words), dtype="<u8")
    cheap = np.zeros(1)
    front = np.zeros(1)
    for v in range(prob.n):
        if masks[v]:
            ok = np.ones(len(bits), dtype=bool)
            for w, m in masks[v]:
                ok &= (bits[:, w] & m) == m
        else:
            ok = np.ones(len(bits), dtype=bool)
        grown_bits = bits[ok]
        grown_cheap = cheap[ok] + prob.cheapest[v]
        grown_front = front[ok]
        # Rows without v: v reads these tensors from inside the row, so they cross its frontier.
        for t in readers[v]:
            front = front + t.cost * _holds(bits, t.mask)
        grown_bits[:, v >> 6] |= np.uint64(1 << (v & 63))
        bits = np.concatenate([bits, grown_bits])
        cheap = np.concatenate([cheap, grown_cheap])
        front = np.concatenate([front, grown_front])
        if prune:
            keep = budget.admits(cheap, cheap + rest[v], front)
            if not keep.all():
                bits, cheap, front = bits[keep], cheap[keep], front[keep]
        if len(bits) > max_ideals:
            raise DPTooLarge(
                f"more than {max_ideals} ideals of the coarse graph fit the bound {limit:g} (passed it at node"
                f" {v + 1} of {prob.n}); use a solver that does not enumerate ideals"
            )
        if v % 32 == 31:
            check_time(deadline, time_limit, "enumerating ideals")
            report_progress(progress, "ideals", (v + 1) / prob.n)
    check_time(deadline, time_limit, "enumerating ideals")
    report_progress(progress, "ideals", 1.0)
    return np.ascontiguousarray(bits)


@dataclass(frozen=True)
class BoundedResult:
    """The outcome of :func:`search_below`.

    ``found`` is the best chain within the last bound tried (its ``value`` is
    the optimum when finite); ``lower_bound`` is proven: no chain has a max
    load below it. ``ideals`` counts the last lattice solved. ``settled`` is
    False when no bound tried settled the question (lattices too large, or
    time ran out): then ``found`` is empty and ``lower_bound`` is all that
    was proven.
    """

    found: LatticeResult
    lower_bound: float
    ideals: int
    bounds_tried: tuple[float, ...]
    settled: bool = True


# How far below a known plan's value the last proof looks: far above float noise, far below any printed gap.
JUST_BELOW = 1e-8


def _try(prob: Problem, limit: float, *, max_ideals: int, max_pairs: int, deadline: float, time_limit: float,
         progress: Progress | None) -> tuple[LatticeResult, int] | None:
    """The best chain within ``limit`` (value inf if none), and the ideals searched; None if too large.

    One try may take half the time left, so a hopeless bound leaves time for a smaller one.
    """
    now = time.monotonic()
    if now >= deadline:
        raise DPTimeout(f"the DP ran past its time limit of {time_limit:g} s while searching below a bound")
    share = (deadline - now) / 2
    deadline, time_limit = now + share, share
    try:
        bits = enumerate_bounded_ideals(prob, limit, max_ideals=max_ideals, deadline=deadline, time_limit=time_limit,
                                        progress=progress)
        full = pack_bits(np.ones((1, prob.words * 64), dtype=bool) & (np.arange(prob.words * 64) < prob.n))[0]
        if not ((bits == 0).all(axis=1).any() and (bits == full).all(axis=1).any()):
            return LatticeResult(math.inf, (), 0), len(bits)  # no chain: it needs both ends
        return solve_lattice(prob, bits, limit, max_pairs=max_pairs, deadline=deadline, time_limit=time_limit,
                             progress=progress), len(bits)
    except DPTooLarge as exc:  # DPTimeout included: the try's own share of the time ran out
        log.debug("bound %.10g: %s", limit, exc)
        return None


def search_below(
    prob: Problem,
    known: float,
    *,
    reached: bool = True,
    max_ideals: int,
    max_pairs: int,
    deadline: float,
    time_limit: float,
    progress: Progress | None = None,
    max_tries: int = 6,
) -> BoundedResult | None:
    """The optimum when some chain reaches ``known``, searching only ideals within a bound.

    Tries the bound ``known`` first: if that lattice is small enough its DP
    gives the optimum. Otherwise, when a chain is known to reach ``known``
    (``reached``), it tries just below it (a proof that that chain is optimal
    within :data:`JUST_BELOW`, relative); then it halves
    the interval between the proven lower bound and the smallest bound whose
    lattice was too large, until a bound's DP finds a chain (the optimum, as
    every chain within that bound was searched), ``max_tries`` bounds were
    tried or time runs out.

    A lower bound within :data:`JUST_BELOW` of a reached ``known`` settles
    it without any lattice. When nothing settles (every lattice too large,
    or ``deadline`` passed) the result has ``settled`` False and carries the
    best bound proven on the way. Before: ``known`` is finite.
    """
    opts = {"max_ideals": max_ideals, "max_pairs": max_pairs, "deadline": deadline, "time_limit": time_limit,
            "progress": progress}
    tried: list[float] = []
    lower, too_large = simple_bound(prob), known
    if reached and lower >= known * (1 - JUST_BELOW):
        return BoundedResult(LatticeResult(math.inf, (), 0), lower, 0, ())
    limit = known
    while len(tried) < max_tries:
        tried.append(limit)
        try:
            got = _try(prob, limit, **opts)
        except DPTimeout:
            break
        if got is not None:
            log.debug("bound %.10g: %d ideals, best chain %g", limit, got[1], got[0].value)
        if got is not None:
            found, ideals = got
            if math.isfinite(found.value):
                return BoundedResult(found, found.value, ideals, tuple(tried))
            lower = max(lower, limit)
            if limit >= known * (1 - 2 * JUST_BELOW):
                # Nothing within (just below) ``known``: a chain reaching it is optimal (within JUST_BELOW).
                return BoundedResult(found, lower, ideals, tuple(tried))
        else:
            too_large = limit
        if len(tried) == 1 and reached:
            limit = known * (1 - JUST_BELOW)
        else:
            limit = (lower + too_large) / 2
        if too_large - lower <= JUST_BELOW * known or time.monotonic() > deadline:
            break
    return BoundedResult(LatticeResult(math.inf, (), 0), lower, 0, tuple(tried), settled=False)


def simple_bound(prob: Problem) -> float:
    """A max load no chain can go below: the total over every device's capacity, and :func:`node_bound`."""
    caps = 0.0
    for kind in prob.kinds:
        usable = (kind.banned == 0) & (kind.compute > 0)
        caps += kind.count * float((prob.cheapest[usable] / kind.compute[usable]).max(initial=0.0))
    total = float(prob.cheapest.sum())
    spread = total / caps if caps > 0 else (math.inf if total > 0 else 0.0)
    return max(float(prob.cheapest.max(initial=0.0)), spread, node_bound(prob))
