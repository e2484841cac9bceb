"""Contiguous throughput placement when links differ between pairs of devices.

With ``[[pair]]`` links a hand-off's price depends on which two devices
exchange it (:func:`onnxsplit.solve.plan.hand_off_ms`), so the stages of a
chain and the devices that run them must be chosen together. The ideal DP
is exact only when every device of a kind is alike; here it is used three
ways, and never has to know about links:

1. Bound: the DP on the graph with every tensor priced at its cheapest link
   between any two devices (:func:`reprice`). For any plan, each receive
   and each send costs at least that much, so every load of every plan is
   at least its load under the cheap prices, and the cheap optimum is at
   most the link-aware optimum: a proof.
2. Plans: the stage chains the DP finds under the cheapest, the default and
   the dearest prices, each given its best devices by
   :func:`assign_devices` (every injective map of stages to devices that can
   hold them, one per class of interchangeable devices, scored with the
   real prices; a local search where there are too many maps).
3. Closing the gap (:func:`order_bound`): for a fixed order of all devices
   along the chain, a DP over ideals where the stage at position p receives
   each tensor at its cheapest link from any earlier position and sends it
   at its cheapest to any later one. A plan whose devices appear in that
   order (unused devices inserted anywhere) pays at least that at every
   stage, so the least of these values over all orders (one per class of
   interchangeable devices) is a bound too; when it meets the best plan,
   the plan is optimal. It runs only where the ideals, pairs and orders are
   few enough; otherwise the bound of step 1 stands and ``notes`` say so.
   On a training graph the ideals are those of the forward precedence and a
   backward tensor is priced at its cheapest link to a position holding
   another of its ends (see :mod:`.orders`).

Steps 1 and 2 read no direction into tensors: step 1's argument holds for
any tensor (each receiver and each sender pays at least the cheapest link),
and the DP it runs is the training-aware one; step 2 scores fixed chains
with the plan scorer's per-pair prices.

The modules: :mod:`.pricing` (LinkTable, reprice), :mod:`.assign` (step 2's
device maps), :mod:`.orders` (step 3's bound) and :mod:`.solver`
(solve_links, and link_safe for plans of link-blind solvers).
"""

from __future__ import annotations

from onnxsplit.solve.links.assign import Assignment, assign_devices
from onnxsplit.solve.links.orders import OrderBound, order_bound, order_count
from onnxsplit.solve.links.pricing import LinkTable, reprice
from onnxsplit.solve.links.solver import ChainSolver, link_safe, solve_links

__all__ = ["Assignment", "ChainSolver", "LinkTable", "OrderBound", "assign_devices", "link_safe", "order_bound",
           "order_count", "reprice", "solve_links"]
