"""Link-aware contiguous placement: pricing, the bound, device maps, and brute force on small graphs."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.devices import DeviceKind, Devices, Link
from onnxsplit.errors import PlanError
from onnxsplit.solve.links import assign_devices, reprice, solve_links
from onnxsplit.solve.plan import check_plan, hand_off_ms, make_plan, stage_loads
from onnxsplit.solve.select import solve

from bruteforce import placement_load
from cases import draw_link, draw_pair_links, draw_priced_tensor, hsettings

SLOW = Link(1e9, 0.0)
FAST = Link(300e9, 0.0)
MODELS = Path(__file__).resolve().parents[2] / "models"


def chain_graph(sizes: list[float], *, compute: float = 1000.0) -> CostGraph:
    """A chain of len(sizes) + 1 nodes; tensor i (node i -> i + 1) has sizes[i] bytes, priced on SLOW."""
    n = len(sizes) + 1
    tensors = tuple(Tensor(f"t{i}", i, (i + 1,), nbytes=int(b), cost=SLOW.ms(b)) for i, b in enumerate(sizes))
    return CostGraph(names=tuple(f"n{i}" for i in range(n)), compute={"gpu": (compute,) * n}, memory=(0.0,) * n,
                     tensors=tensors)


def four_gpus(fast: tuple[int, int] = (2, 3)) -> Devices:
    return Devices((DeviceKind("gpu", 4),), link=SLOW, pairs=((fast, FAST),))


# ---------------------------------------------------------------- pricing


def test_a_tensor_is_priced_on_its_link_by_bytes_and_keeps_its_cost_on_the_default_link() -> None:
    t = Tensor("t", 0, (1,), nbytes=3_000_000_000, cost=SLOW.ms(3e9))
    assert hand_off_ms(t, None) == t.cost
    assert hand_off_ms(t, FAST) == pytest.approx(10.0)
    # Free tensors (constants the rewrite copies) and tensors of unknown size keep their cost everywhere.
    assert hand_off_ms(Tensor("c", 0, (1,), nbytes=100, cost=0.0), FAST) == 0.0
    assert hand_off_ms(Tensor("p", 0, (1,), nbytes=0, cost=7.0), FAST) == 7.0


def test_without_pairs_loads_are_the_tensor_costs_and_a_default_valued_pair_changes_nothing() -> None:
    g = chain_graph([1e8, 2e9, 5e8])
    plain = Devices((DeviceKind("gpu", 4),), link=SLOW)
    same = Devices((DeviceKind("gpu", 4),), link=SLOW, pairs=(((0, 1), SLOW),))
    stage_of, stage_device = (0, 1, 2, 3), (3, 0, 1, 2)
    assert stage_loads(g, plain, stage_of, stage_device) == pytest.approx(stage_loads(g, same, stage_of, stage_device))


def test_each_receiver_pays_its_link_and_the_sender_its_slowest() -> None:
    t = Tensor("t", 0, (1, 2), nbytes=3_000_000_000, cost=SLOW.ms(3e9))
    g = CostGraph(names=("a", "b", "c"), compute={"gpu": (0.0, 0.0, 0.0)}, memory=(0.0,) * 3, tensors=(t,))
    devices = Devices((DeviceKind("gpu", 3),), link=SLOW, pairs=(((0, 1), FAST),))
    loads = stage_loads(g, devices, (0, 1, 2), (0, 1, 2))
    assert [sl.receive for sl in loads] == pytest.approx([0.0, 10.0, 3000.0])
    assert loads[0].send == pytest.approx(3000.0)
    # Both receivers on the fast side: the sender pays the fast price once.
    devices = Devices((DeviceKind("gpu", 3),), link=SLOW, pairs=(((0, 1), FAST), ((0, 2), FAST)))
    assert stage_loads(g, devices, (0, 1, 2), (0, 1, 2))[0].send == pytest.approx(10.0)


def test_check_plan_scores_with_the_links() -> None:
    g = chain_graph([3e9])
    devices = four_gpus((0, 1))
    plan = make_plan(g, devices, (0, 1), (0, 2), solver="user")
    check_plan(g, devices, plan)
    assert plan.value == pytest.approx(4000.0)
    wrong = make_plan(g, devices, (0, 1), (0, 1), solver="user")
    from dataclasses import replace

    with pytest.raises(PlanError, match="recomputed"):
        check_plan(g, devices, replace(wrong, value=plan.value, loads=plan.loads))


def test_interchangeable_devices_have_the_same_kind_and_links() -> None:
    assert four_gpus().interchangeable() == ((0, 1), (2, 3))
    islands = Devices((DeviceKind("gpu", 8),), link=SLOW,
                      pairs=tuple(((a, b), FAST) for a, b in itertools.combinations(range(8), 2) if (a < 4) == (b < 4)))
    assert islands.interchangeable() == ((0, 1, 2, 3), (4, 5, 6, 7))
    mixed = Devices((DeviceKind("gpu", 2), DeviceKind("cpu", 2)), link=SLOW, pairs=(((0, 2), FAST),))
    assert mixed.interchangeable() == ((0,), (1,), (2,), (3,))


# ---------------------------------------------------------------- the heaviest hand-off on the fast pair


@pytest.mark.parametrize("fast", [(2, 3), (0, 3), (1, 2)])
@pytest.mark.parametrize("heavy", [1, 3, 5])
def test_the_heaviest_hand_off_sits_on_the_fast_pair(fast: tuple[int, int], heavy: int) -> None:
    sizes = [1e8] * 7
    sizes[heavy] = 4e9
    g = chain_graph(sizes)
    devices = four_gpus(fast)
    for solver in ("dp", "auto"):
        plan = solve(g, devices, solver=solver)
        check_plan(g, devices, plan)
        src, dst = plan.stage_of[heavy], plan.stage_of[heavy + 1]
        assert src != dst, "the heavy tensor must cross: otherwise a stage holds 3 nodes"
        assert {plan.stage_device[src], plan.stage_device[dst]} == set(fast)
        assert plan.lower_bound == pytest.approx(plan.value)  # proven: the per-order bound meets the plan
        assert any("per-order" in note for note in plan.notes)


def test_the_bound_from_cheap_links_alone_is_below_the_optimum_and_said() -> None:
    sizes = [1e8] * 7
    sizes[3] = 4e9
    g = chain_graph(sizes)
    devices = four_gpus()
    plan = solve_links(g, devices, max_orders=1)  # no per-order bound: the cheap-link DP bound stands
    assert plan.lower_bound < plan.value
    assert "cheapest link" in plan.notes[0]
    assert any("not computed" in note for note in plan.notes)


def test_link_blind_solvers_keep_a_bound_that_holds() -> None:
    g = chain_graph([4e9] * 3)
    devices = four_gpus()
    best = solve(g, devices, solver="dp")
    for solver in ("linear", "greedy", "ip"):
        plan = solve(g, devices, solver=solver, time_limit=10)
        check_plan(g, devices, plan)
        assert plan.lower_bound <= best.value * (1 + 1e-9)


# ---------------------------------------------------------------- brute force


def _contiguous_splits(g: CostGraph, stages: int):
    edges = g.edges()
    for stage_of in itertools.product(range(stages), repeat=g.n):
        if set(stage_of) != set(range(stages)):
            continue
        if any(stage_of[u] > stage_of[v] for u, v in edges):
            continue
        if any(len({stage_of[v] for v in group}) > 1 for group in g.groups):
            continue
        yield stage_of


def _best_device_map(g: CostGraph, devices: Devices, stage_of: tuple[int, ...], stages: int) -> float:
    """The least max load of one contiguous split over every injective map of its stages to devices."""
    maps = itertools.permutations(range(devices.count), stages)
    return min((placement_load(g, devices, stage_of, stage_device) for stage_device in maps), default=math.inf)


def brute_force(g: CostGraph, devices: Devices) -> float:
    """Every contiguous split times every injective map of its stages to devices, scored from scratch."""
    best = math.inf
    for m in range(1, min(g.n, devices.count) + 1):
        for stage_of in _contiguous_splits(g, m):
            best = min(best, _best_device_map(g, devices, stage_of, m))
    return best


@st.composite
def linked_problems(draw):
    ndev = draw(st.integers(2, 4))
    n = draw(st.integers(2, {2: 6, 3: 5, 4: 5}[ndev]))
    two_kinds = draw(st.booleans()) and ndev >= 3
    names = ("gpu", "cpu") if two_kinds else ("gpu",)
    edges = [(u, v) for u in range(n) for v in range(u + 1, n) if draw(st.booleans())]
    compute = {k: tuple(draw(st.sampled_from([0.0, 1.0, 3.0, 10.0])) for _ in range(n)) for k in names}
    if two_kinds and draw(st.booleans()):
        v = draw(st.integers(0, n - 1))
        compute["cpu"] = compute["cpu"][:v] + (math.inf,) + compute["cpu"][v + 1:]
    memory = tuple(draw(st.sampled_from([0.0, 1.0, 2.0])) for _ in range(n))
    default = draw_link(draw)
    tensors = []
    for u in range(n):
        readers = tuple(v for a, v in edges if a == u)
        if readers:
            tensors.append(draw_priced_tensor(draw, default, f"t{u}", u, readers))
    groups = ()
    if n >= 3 and draw(st.integers(0, 3)) == 0:
        a = draw(st.integers(0, n - 2))
        groups = ((a, draw(st.integers(a + 1, n - 1))),)
    g = CostGraph(names=tuple(f"n{i}" for i in range(n)), compute=compute, memory=memory, tensors=tuple(tensors),
                  groups=groups)
    pairs = draw_pair_links(draw, ndev)
    cap = math.inf if draw(st.booleans()) else draw(st.sampled_from([2.0, 3.0, 4.0]))
    if two_kinds:
        gpus = draw(st.integers(1, ndev - 1))
        kinds = (DeviceKind("gpu", gpus, memory=cap), DeviceKind("cpu", ndev - gpus, communicates=draw(st.booleans())))
    else:
        kinds = (DeviceKind("gpu", ndev, memory=cap),)
    return g, Devices(kinds, link=default, pairs=pairs)


@given(linked_problems())
@hsettings(120)
def test_link_aware_plans_against_brute_force(problem) -> None:
    g, devices = problem
    best = brute_force(g, devices)
    if math.isinf(best):
        with pytest.raises(Exception):
            solve_links(g, devices)
        return
    plan = solve_links(g, devices)
    check_plan(g, devices, plan, contiguous=True)
    tol = 1e-9 * max(1.0, best)
    assert plan.lower_bound <= best + tol
    assert plan.value >= best - tol
    if plan.gap == 0:
        assert plan.value == pytest.approx(best, rel=1e-9, abs=1e-12)


@given(linked_problems())
@hsettings(60)
def test_the_cheap_link_dp_is_a_lower_bound(problem) -> None:
    from dataclasses import replace

    from onnxsplit.solve.dp import solve_dp

    g, devices = problem
    best = brute_force(g, devices)
    if math.isinf(best):
        return
    cheap = solve_dp(reprice(g, devices), replace(devices, pairs=()))
    assert cheap.value <= best * (1 + 1e-9) + 1e-12


@given(linked_problems())
@hsettings(60)
def test_device_maps_of_a_fixed_chain_are_optimal(problem) -> None:
    g, devices = problem
    for m in range(1, min(g.n, devices.count) + 1):
        for stage_of in _contiguous_splits(g, m):
            best = _best_device_map(g, devices, stage_of, m)
            if math.isinf(best):
                continue
            found = assign_devices(g, devices, stage_of)
            assert found.exact
            assert found.value == pytest.approx(best, rel=1e-9, abs=1e-12)
            return


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_split_with_a_fast_pair_reports_devices_in_order_and_validates(tmp_path, capsys) -> None:
    import json

    from onnxsplit.cli.main import main

    toml = tmp_path / "devices.toml"
    toml.write_text('[link]\nbandwidth = "1GB/s"\n\n[[kind]]\nname = "cpu"\ncount = 4\n\n'
                    '[[pair]]\ndevices = [2, 3]\nbandwidth = "300GB/s"\n')
    out = tmp_path / "split"
    code = main(["split", str(MODELS / "transformer.onnx"), "-o", str(out), "--devices", str(toml),
                 "--costs", "estimate", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    devices = [st["device"] for st in doc["stages"]]
    assert len(set(devices)) == len(devices) and all(0 <= d < 4 for d in devices)
    assert all(st["device_kind"] == "cpu" for st in doc["stages"])
    assert doc["lower_bound"] <= doc["value"]
    assert main(["validate", str(out)]) == 0
