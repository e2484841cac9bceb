"""Training graphs with the paper's semantics: reference optima, expert splits, a brute force, the IP, the formats."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxsplit.costgraph import CostGraph, Tensor
from onnxsplit.costgraph_io import from_json, to_json
from onnxsplit.dag import UnionFind
from onnxsplit.devices import DeviceKind, Devices
from onnxsplit.errors import InfeasibleError, ModelError, PlanError
from onnxsplit.paperformat import load_paper, parse_paper, to_paper
from onnxsplit.solve.dp import solve_dp
from onnxsplit.solve.greedy import evaluate_expert
from onnxsplit.solve.plan import check_plan, is_ideal_chain, make_plan, stage_order_violations
from onnxsplit.solve.select import solve
from onnxsplit.solve.training import fold_units, training_units

from bruteforce import best_chain_load
from cases import (
    check_dp_finds, check_folding_keeps_the_optimum, draw_link, draw_pair_links, draw_priced_tensor, hsettings,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference-graphs"
INF = math.inf
EXPECTED = json.loads((REFERENCE / "expected.json").read_text())
TRAINING = sorted(name for name in EXPECTED["graphs"] if name.endswith("_training.json"))


# ---------------------------------------------------------------- the paper's training graphs


@pytest.mark.parametrize("name", TRAINING)
def test_reference_optimum(name: str) -> None:
    optimum = EXPECTED["graphs"][name]["dp_optimum"]
    graph, devices = load_paper(REFERENCE / name)
    assert graph.training
    plan = solve_dp(graph, devices)
    check_plan(graph, devices, plan)
    assert plan.value == pytest.approx(optimum, rel=1e-6)
    assert plan.solver == "dp" and plan.contiguous and plan.gap == 0
    # A bound is a proof: never above the reference's optimum.
    assert plan.lower_bound <= optimum * (1 + 1e-9)
    assert not stage_order_violations(graph, plan.stage_of)


@pytest.mark.parametrize("name", ["layer_bert24_training.json", "layer_resnet50_training.json", "op_resnet50_training.json"])
@pytest.mark.parametrize("solver, contiguous", [("auto", True), ("linear", True), ("greedy", True), ("local", False),
                                                ("ip", False)])
def test_every_solver_gives_a_valid_plan_and_a_true_bound(name: str, solver: str, contiguous: bool) -> None:
    optimum = EXPECTED["graphs"][name]["dp_optimum"]
    graph, devices = load_paper(REFERENCE / name)
    plan = solve(graph, devices, solver=solver, contiguous=contiguous, time_limit=5)
    check_plan(graph, devices, plan)
    assert plan.lower_bound <= optimum * (1 + 1e-9)
    if plan.contiguous:
        assert plan.value >= optimum * (1 - 1e-9)


@pytest.mark.slow
def test_inceptionv3_beats_the_expert() -> None:
    """The reference DP does not finish this one; onnxsplit's DP does, well below the expert split."""
    entry = EXPECTED["unsolved_by_reference"]["layer_inceptionv3_training.json"]
    graph, devices = load_paper(REFERENCE / "layer_inceptionv3_training.json")
    plan = solve_dp(graph, devices, time_limit=300)
    check_plan(graph, devices, plan)
    assert plan.value == pytest.approx(entry["onnxsplit_dp"], rel=1e-6)
    assert plan.value < entry["expert"]


@pytest.mark.parametrize("split, graph_file", [
    ("expert_layer_bert24_training.json", "layer_bert24_training.json"),
    ("expert_layer_gnmt_training.json", "layer_gnmt_training.json"),
])
def test_expert_training_splits(split: str, graph_file: str) -> None:
    graph, devices = load_paper(REFERENCE / graph_file)
    plan = evaluate_expert(graph, devices, REFERENCE / split)
    check_plan(graph, devices, plan)
    # expected.json has the reference's six significant digits.
    assert plan.value == pytest.approx(EXPECTED["graphs"][graph_file]["expert"], rel=1e-5)
    assert plan.lower_bound <= EXPECTED["graphs"][graph_file]["dp_optimum"]


def test_inference_expert_split_completed_by_colour_classes() -> None:
    """A split naming only forward nodes gets each backward node on its class's device (the reference's -expert)."""
    graph, devices = load_paper(REFERENCE / "layer_inceptionv3_training.json")
    plan = evaluate_expert(graph, devices, REFERENCE / "expert_layer_inceptionv3_inference.json")
    check_plan(graph, devices, plan)
    assert plan.value == pytest.approx(EXPECTED["unsolved_by_reference"]["layer_inceptionv3_training.json"]["expert"],
                                       rel=1e-5)


def test_expert_split_of_forward_nodes_only(tmp_path) -> None:
    graph, devices = load_paper(REFERENCE / "layer_bert24_training.json")
    doc = json.loads((REFERENCE / "expert_layer_bert24_training.json").read_text())
    backward = {int(graph.names[v]) for v in range(graph.n) if graph.backward[v]}
    for dev in doc["fpgas"]:
        dev["nodes"] = [v for v in dev["nodes"] if v not in backward]
    (tmp_path / "forward.json").write_text(json.dumps(doc))
    plan = evaluate_expert(graph, devices, tmp_path / "forward.json")
    assert plan.value == pytest.approx(EXPECTED["graphs"]["layer_bert24_training.json"]["expert"], rel=1e-5)
    # Node 1 and its backward twin 33 form colour class 1: with neither placed, 33 has nowhere to go.
    doc["fpgas"][0]["nodes"].remove(1)
    (tmp_path / "gap.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="backward node 33 is not placed and no node of its colour class is placed"):
        evaluate_expert(graph, devices, tmp_path / "gap.json")


def test_old_collapse_is_gone() -> None:
    """Contracting whole colour classes with their paths put all of op resnet50 on one device."""
    graph, devices = load_paper(REFERENCE / "op_resnet50_training.json")
    plan = solve(graph, devices, solver="auto")
    check_plan(graph, devices, plan)
    assert plan.num_stages > 1
    assert plan.value < EXPECTED["graphs"]["op_resnet50_training.json"]["one_device"] / 2


# ---------------------------------------------------------------- random training graphs


@st.composite
def training_problems(draw, *, max_forward: int = 5, max_assignments: int = 3000):
    """A forward DAG, its mirror image as the backward DAG, colour classes pairing them, orphans; devices.

    Node ids: forward nodes first, then backward twins in reverse forward
    order (so mirrored edges go up in id), with orphaned backward nodes
    among them. Forward nodes feed their own twin (stashed activations).
    """
    acc = draw(st.integers(1, 3))
    cpu = draw(st.integers(0, 1))
    slots = acc + cpu
    nf = draw(st.integers(1, max_forward))
    fwd_edges = [(u, v) for u in range(nf) for v in range(u + 1, nf) if draw(st.booleans()) and draw(st.booleans())]
    twin = [draw(st.booleans()) or draw(st.booleans()) for _ in range(nf)]  # most forward nodes have a twin
    orphans = draw(st.integers(0, 2))
    # The backward sequence: twins of nf-1 .. 0, orphans inserted at random places.
    seq: list[tuple[str, int]] = [("twin", f) for f in reversed(range(nf)) if twin[f]]
    for o in range(orphans):
        seq.insert(draw(st.integers(0, len(seq))), ("orphan", o))
    n = nf + len(seq)
    bid = {item: nf + i for i, item in enumerate(seq)}
    edges = set(fwd_edges)
    for u, v in fwd_edges:
        if twin[u] and twin[v]:
            edges.add((bid[("twin", v)], bid[("twin", u)]))
    for f in range(nf):
        if twin[f] and draw(st.booleans()):
            edges.add((f, bid[("twin", f)]))
    for o in range(orphans):
        me = bid[("orphan", o)]
        for other in range(nf, n):
            if other != me and draw(st.booleans()) and draw(st.booleans()):
                edges.add((min(me, other), max(me, other)))
        if draw(st.booleans()):
            edges.add((draw(st.integers(0, nf - 1)), me))
    acc_t, cpu_t, mem = [], [], []
    for _ in range(n):
        acc_t.append(draw(st.sampled_from([0.0, 0.0, 1.0, 2.0, 3.0, 5.0, INF])))
        cpu_t.append(draw(st.sampled_from([0.0, 2.0, 4.0, 10.0])) if cpu else draw(st.sampled_from([1.0, INF])))
        mem.append(draw(st.sampled_from([0.0, 0.0, 1.0, 2.0])))
    tensors = []
    for u in range(n):
        outs = sorted(v for a, v in edges if a == u)
        if outs:
            tensors.append(Tensor(f"t{u}", u, tuple(outs), cost=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]))))
    classes = [[f, bid[("twin", f)]] if twin[f] else [f] for f in range(nf)]
    if nf >= 2 and draw(st.booleans()):
        # Two forward nodes in one class: the forward nodes between them must come along.
        a, b = sorted(draw(st.sets(st.integers(0, nf - 1), min_size=2, max_size=2)))
        classes[a] += classes[b]
        classes[b] = []
    if orphans >= 2 and draw(st.booleans()):
        classes.append([bid[("orphan", 0)], bid[("orphan", 1)]])
    groups = tuple(tuple(sorted(c)) for c in classes if len(c) > 1)
    graph = CostGraph(
        names=tuple(f"f{v}" if v < nf else f"b{v}" for v in range(n)),
        compute={"acc": tuple(acc_t), "cpu": tuple(cpu_t)},
        memory=tuple(mem),
        tensors=tuple(tensors),
        groups=groups,
        backward=tuple(v >= nf for v in range(n)),
    )
    talks = draw(st.booleans())
    devices = Devices((DeviceKind("acc", acc, memory=draw(st.sampled_from([INF, 3.0, 5.0]))),
                       DeviceKind("cpu", cpu, communicates=talks)))
    if max_assignments and slots ** _class_count(graph) > max_assignments:
        # Keep the brute force small: two accelerators only.
        devices = Devices((DeviceKind("acc", 2, memory=devices.kinds[0].memory), DeviceKind("cpu", 0)))
    return graph, devices


def _classes(graph: CostGraph) -> list[int]:
    sets = UnionFind(graph.n)
    for group in graph.groups:
        for v in group[1:]:
            sets.union(group[0], v)
    return [sets.find(v) for v in range(graph.n)]


def _class_count(graph: CostGraph) -> int:
    return len(set(_classes(graph)))


def brute_force(graph: CostGraph, devices: Devices) -> float:
    """Best max load over every assignment of colour classes to device slots, by the paper's rules.

    Independent of the solvers: a class goes to one slot; the slots must form
    a chain along forward edges and along the mirror image of backward edges
    that touch a class with no forward node; every tensor is scored by the
    plan module.
    """
    label = _classes(graph)
    reps = sorted(set(label))
    orphaned = {r for r in reps if all(graph.is_backward(v) for v in range(graph.n) if label[v] == r)}
    arcs_of = []
    for t in graph.tensors:
        for c in t.consumers:
            if not graph.is_backward(c):
                arcs_of.append((t.producer, c))
            elif graph.is_backward(t.producer) and (label[t.producer] in orphaned or label[c] in orphaned):
                arcs_of.append((c, t.producer))
    at = {r: i for i, r in enumerate(reps)}
    picks = itertools.product(range(devices.count), repeat=len(reps))
    assignments = ([pick[at[label[v]]] for v in range(graph.n)] for pick in picks)
    return best_chain_load(graph, devices, assignments, arcs_of)


@hsettings(250)
@given(training_problems())
def test_dp_equals_brute_force(problem) -> None:
    graph, devices = problem
    expected = brute_force(graph, devices)
    plan = check_dp_finds(graph, devices, expected)
    if plan is not None:
        assert plan.lower_bound <= expected * (1 + 1e-9) + 1e-9


@hsettings(150)
@given(training_problems(max_forward=7, max_assignments=0))
def test_folding_keeps_the_optimum(problem) -> None:
    check_folding_keeps_the_optimum(*problem)


@hsettings(60)
@given(training_problems(max_forward=7, max_assignments=0))
def test_units_are_classes_in_a_topological_order(problem) -> None:
    graph, _ = problem
    for units in (training_units(graph), fold_units(training_units(graph), ignore_memory=True)):
        assert sorted(v for m in units.members for v in m) == list(range(graph.n))
        label = _classes(graph)
        for m in units.members:
            for v in m:
                # A class never straddles units.
                assert {units.unit_of[w] for w in range(graph.n) if label[w] == label[v]} == {units.unit_of[v]}
        assert all(a < b for a, b in units.edges)
        for u, v in graph.precedence_edges():
            assert units.unit_of[u] <= units.unit_of[v]


@hsettings(25)
@given(training_problems(max_forward=4, max_assignments=200))
def test_chain_ip_equals_the_dp(problem) -> None:
    from onnxsplit.solve.ip import solve_ip

    graph, devices = problem
    try:
        best = solve_dp(graph, devices).value
    except InfeasibleError:
        return
    plan = solve_ip(graph, devices, time_limit=30)
    check_plan(graph, devices, plan)
    assert plan.value == pytest.approx(best, rel=1e-6, abs=1e-6)
    assert plan.lower_bound <= best * (1 + 1e-6) + 1e-6


def test_ip_on_bert24_training_matches_the_reference() -> None:
    from onnxsplit.solve.ip import solve_ip

    graph, devices = load_paper(REFERENCE / "layer_bert24_training.json")
    optimum = EXPECTED["graphs"]["layer_bert24_training.json"]["dp_optimum"]
    plan = solve_ip(graph, devices, time_limit=120, warm_start=solve_dp(graph, devices))
    check_plan(graph, devices, plan)
    assert plan.value == pytest.approx(optimum, rel=1e-6)
    assert plan.lower_bound <= optimum * (1 + 1e-6)


# ---------------------------------------------------------------- the graph, its formats, the checker


def tiny() -> CostGraph:
    """f0 -> f1 forward, b1 -> b0 backward, each forward node feeding its twin; classes {f0, b0}, {f1, b1}."""
    return CostGraph(
        names=("f0", "f1", "b1", "b0"),
        compute={"acc": (1.0, 2.0, 4.0, 2.0), "cpu": (5.0, 5.0, 5.0, 5.0)},
        memory=(1.0, 1.0, 0.0, 0.0),
        tensors=(Tensor("x", 0, (1, 3), cost=0.5), Tensor("y", 1, (2,), cost=0.25), Tensor("g", 2, (3,), cost=1.0)),
        groups=((0, 3), (1, 2)),
        backward=(False, False, True, True),
    )


def test_backward_to_forward_is_refused() -> None:
    with pytest.raises(ModelError, match="tensor 'bad' runs from backward node 'b' to forward node 'f'"):
        CostGraph(names=("b", "f"), compute={"acc": (1.0, 1.0)}, memory=(0.0, 0.0),
                  tensors=(Tensor("bad", 0, (1,)),), backward=(True, False))
    with pytest.raises(ModelError, match="backward has 1 flags for 2 nodes"):
        CostGraph(names=("a", "b"), compute={"acc": (1.0, 1.0)}, memory=(0.0, 0.0), tensors=(), backward=(True,))


def test_flags_and_precedence() -> None:
    graph = tiny()
    assert graph.training and graph.is_backward(2) and not graph.is_backward(0)
    assert graph.precedence_edges() == [(0, 1)]
    plain = CostGraph(names=("a",), compute={"acc": (1.0,)}, memory=(0.0,), tensors=(), backward=(False,))
    assert not plain.training and plain.backward == ()


def test_checker_reads_only_forward_edges() -> None:
    graph = tiny()
    devices = Devices((DeviceKind("acc", 2),))
    plan = make_plan(graph, devices, [0, 1, 1, 0], [0, 1], solver="user")
    check_plan(graph, devices, plan)
    assert is_ideal_chain(graph, plan.stage_of)
    # Stage 0: f0 + b0 = 3 compute, sends x (0.5), receives g (1.0); stage 1: 6 compute, the same tensors.
    assert plan.loads == pytest.approx((4.5, 7.5))
    backwards = make_plan(graph, devices, [1, 0, 0, 1], [0, 1], solver="user")
    with pytest.raises(PlanError, match="not contiguous: 'f0' \\(stage 1\\) feeds 'f1' \\(stage 0\\)"):
        check_plan(graph, devices, backwards)


def test_onnxsplit_format_round_trip() -> None:
    graph = tiny()
    devices = Devices((DeviceKind("acc", 2),))
    doc = to_json(graph, devices)
    assert [n["backward"] for n in doc["nodes"]] == [False, False, True, True]
    again, _ = from_json(json.loads(json.dumps(doc)))
    assert again == graph
    for node in doc["nodes"]:
        del node["backward"]
    assert not from_json(doc)[0].training  # files from before the flag are inference graphs
    doc["nodes"][0]["backward"] = "yes"
    with pytest.raises(ModelError, match="\"backward\" must be true or false"):
        from_json(doc)


def test_paper_format_round_trip() -> None:
    graph = tiny()
    devices = Devices((DeviceKind("acc", 2, memory=10.0), DeviceKind("cpu", 1, communicates=False)))
    doc = to_paper(graph, devices)
    assert [n["isBackwardNode"] for n in doc["nodes"]] == [False, False, True, True]
    again, _ = parse_paper(json.loads(json.dumps(doc)))
    assert again.training
    assert [again.names[v] for v in range(again.n) if again.backward[v]] == ["2", "3"]
    assert sorted(sorted(again.names[v] for v in g) for g in again.groups) == [["0", "3"], ["1", "2"]]
    assert solve_dp(again, devices).value == pytest.approx(solve_dp(graph, devices).value)


def test_paper_backward_to_forward_edge_is_one_line(tmp_path) -> None:
    doc = {"maxFPGAs": 1, "maxCPUs": 0, "maxSizePerFPGA": 10, "nodes": [
        {"id": 1, "cpuLatency": 1, "fpgaLatency": 1, "isBackwardNode": 1},
        {"id": 2, "cpuLatency": 1, "fpgaLatency": 1, "isBackwardNode": 0}],
        "edges": [{"sourceId": 1, "destId": 2, "cost": 1}]}
    with pytest.raises(ModelError, match="^g.json: tensor '1' runs from backward node '1' to forward node '2'"):
        parse_paper(doc, where="g.json")


def test_cli_on_a_training_graph(capsys) -> None:
    from onnxsplit.cli.main import main

    name = "op_resnet50_training.json"
    assert main(["solve", str(REFERENCE / name), "--solver", "dp", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["value"] == pytest.approx(EXPECTED["graphs"][name]["dp_optimum"], rel=1e-6)
    assert doc["gap"] == 0 and doc["contiguous"]


# ---------------------------------------------------------------- the baselines and auto's fallback


def chain_kept(graph: CostGraph, plan) -> bool:
    """Every precedence edge between training units (forward tensors, mirrored orphan edges) runs forward in stages."""
    units = training_units(graph)
    stage = [plan.stage_of[m[0]] for m in units.members]
    return all(len({plan.stage_of[v] for v in m}) == 1 for m in units.members) and all(
        stage[a] <= stage[b] for a, b in units.edges)


@pytest.mark.parametrize("name", ["op_resnet50_training.json", "op_bert_l-3_training.json"])
def test_baselines_on_operator_training_graphs(name: str) -> None:
    """The contiguous baselines split the graph (no longer one device) and never beat the optimum."""
    from onnxsplit.solve.greedy import solve_greedy
    from onnxsplit.solve.linear import solve_linear
    from onnxsplit.solve.local import solve_local

    optimum = EXPECTED["graphs"][name]["dp_optimum"]
    graph, devices = load_paper(REFERENCE / name)
    plans = {}
    for label, run in (("linear", solve_linear), ("greedy", solve_greedy)):
        plan = run(graph, devices)
        check_plan(graph, devices, plan, contiguous=True)
        assert chain_kept(graph, plan), label
        assert optimum * (1 - 1e-9) <= plan.value <= 1.5 * optimum, label
        plans[label] = plan
    local = solve_local(graph, devices, restarts=2, time_limit=3.0, start=plans["greedy"])
    check_plan(graph, devices, local)
    # Non-contiguous, so it may go below the contiguous optimum; never above its start.
    assert local.value <= plans["greedy"].value * (1 + 1e-12)
    assert local.lower_bound <= optimum * (1 + 1e-9)


@pytest.mark.parametrize("name", ["op_resnet50_training.json", "op_bert_l-3_training.json"])
def test_auto_fallback_on_training_graphs(name: str, monkeypatch) -> None:
    """When the DP cannot run, auto's heuristic and the integer program it warm-starts give valid plans."""
    import onnxsplit.solve.dp as dp
    from onnxsplit.solve.select import _heuristic

    optimum = EXPECTED["graphs"][name]["dp_optimum"]
    graph, devices = load_paper(REFERENCE / name)
    heuristic = _heuristic(graph, devices)
    check_plan(graph, devices, heuristic, contiguous=True)
    assert chain_kept(graph, heuristic)
    assert optimum * (1 - 1e-9) <= heuristic.value <= 1.5 * optimum

    def too_large(*args, **kwargs):
        raise dp.DPTooLarge("forced by the test")

    monkeypatch.setattr(dp, "solve_dp", too_large)
    plan = solve(graph, devices, solver="auto", time_limit=3)
    check_plan(graph, devices, plan, contiguous=True)
    assert chain_kept(graph, plan)
    assert any("forced by the test" in note for note in plan.notes)
    assert optimum * (1 - 1e-9) <= plan.value <= heuristic.value * (1 + 1e-9)
    assert plan.lower_bound <= optimum * (1 + 1e-9)


@hsettings(120)
@given(training_problems())
def test_contiguous_baselines_against_brute_force(problem) -> None:
    from onnxsplit.solve.greedy import solve_greedy
    from onnxsplit.solve.linear import solve_linear

    graph, devices = problem
    best = brute_force(graph, devices)
    for run in (solve_linear, solve_greedy):
        try:
            plan = run(graph, devices)
        except InfeasibleError:
            continue
        check_plan(graph, devices, plan, contiguous=True)
        assert chain_kept(graph, plan)
        assert plan.value >= best * (1 - 1e-9) - 1e-9
        assert plan.lower_bound <= best * (1 + 1e-9) + 1e-9


@hsettings(60)
@given(training_problems())
def test_local_search_keeps_classes(problem) -> None:
    from onnxsplit.solve.local import solve_local

    graph, devices = problem
    try:
        plan = solve_local(graph, devices, restarts=2, time_limit=1.0)
    except InfeasibleError:
        return
    check_plan(graph, devices, plan)
    label = _classes(graph)
    assert all(plan.stage_of[v] == plan.stage_of[label[v]] for v in range(graph.n))


# ---------------------------------------------------------------- links priced per pair of devices


@st.composite
def linked_training_problems(draw):
    """A training problem whose tensors have sizes, on devices with a default link and random [[pair]] links."""
    graph, devices = draw(training_problems(max_forward=4, max_assignments=1500))
    default = draw_link(draw)
    tensors = tuple(draw_priced_tensor(draw, default, t.name, t.producer, t.consumers) for t in graph.tensors)
    graph = CostGraph(names=graph.names, compute=graph.compute, memory=graph.memory, tensors=tensors,
                      groups=graph.groups, backward=graph.backward)
    return graph, Devices(devices.kinds, link=default, pairs=draw_pair_links(draw, devices.count))


@hsettings(150)
@given(linked_training_problems())
def test_link_aware_placement_of_training_graphs_against_brute_force(problem) -> None:
    """Every class on every device, scored with the per-pair prices: the plan is no better, the bound no higher."""
    from onnxsplit.solve.links import solve_links

    graph, devices = problem
    best = brute_force(graph, devices)  # slots are devices, so this also searches every device map
    if math.isinf(best):
        with pytest.raises(InfeasibleError):
            solve_links(graph, devices)
        return
    plan = solve_links(graph, devices)
    check_plan(graph, devices, plan, contiguous=True)
    assert chain_kept(graph, plan)
    tol = 1e-9 * max(1.0, best)
    assert plan.value >= best - tol
    assert plan.lower_bound <= best + tol
    if plan.gap == 0:
        assert plan.value == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_per_order_link_bound_follows_forward_precedence() -> None:
    """A case where reading backward tensors as precedence put the per-order bound (8) above the optimum (7)."""
    from onnxsplit.devices import Link
    from onnxsplit.solve.links import order_bound, solve_links

    graph = CostGraph(
        names=("f0", "f1", "f2", "b3", "b4", "b5", "b6"),
        compute={"acc": (0.0, 2.0, 1.0, 2.0, 2.0, 1.0, 0.0), "cpu": (10.0, 10.0, 10.0, 10.0, 10.0, 0.0, 10.0)},
        memory=(0.0, 1.0, 0.0, 0.0, 2.0, 2.0, 0.0),
        tensors=(Tensor("t0", 0, (2, 5, 6)), Tensor("t1", 1, (2, 4), nbytes=20000, cost=2000.0),
                 Tensor("t2", 2, (3,)), Tensor("t3", 3, (4, 5, 6))),
        groups=((0, 2, 3, 6), (1, 4)),
        backward=(False, False, False, True, True, True, True),
    )
    devices = Devices((DeviceKind("acc", 3, memory=5.0), DeviceKind("cpu", 1)), link=Link(1e4, 0.0),
                      pairs=(((0, 1), Link(1e5, 2e-3)), ((0, 2), Link(1e5, 0.0)), ((0, 3), Link(1e5, 2e-3)),
                             ((1, 2), Link(5e3, 5e-4)), ((1, 3), Link(1e3, 2e-3))))
    assert brute_force(graph, devices) == pytest.approx(7.0)
    found = order_bound(graph, devices, upper_bound=math.inf)
    assert found is not None and found.bound <= 7.0 + 1e-9
    plan = solve_links(graph, devices)
    check_plan(graph, devices, plan, contiguous=True)
    assert plan.value == pytest.approx(7.0) and plan.lower_bound <= 7.0 + 1e-9


# ---------------------------------------------------------------- latency


def test_latency_on_a_training_graph() -> None:
    """Every tensor, forward or backward, is a data dependency of one training step: the latency model keeps them all."""
    from onnxsplit.solve.latency import latency_of

    graph, devices = load_paper(REFERENCE / "layer_bert24_training.json")
    plan = solve(graph, devices, objective="latency", time_limit=3)
    check_plan(graph, devices, plan)
    assert plan.objective == "latency"
    assert plan.value == pytest.approx(latency_of(graph, devices, plan), rel=1e-9)
    # The bound holds for any placement: below the latency of other valid plans too (one device; the
    # throughput optimum, whose backward tensors run from later stages to earlier ones).
    assert 0 < plan.lower_bound <= plan.value * (1 + 1e-9)
    one_device = make_plan(graph, devices, [0] * graph.n, [0], solver="user")
    for other in (one_device, solve_dp(graph, devices)):
        check_plan(graph, devices, other)
        assert plan.lower_bound <= latency_of(graph, devices, other) * (1 + 1e-9)
    assert plan.value <= latency_of(graph, devices, one_device) * (1 + 1e-9)



def test_plan_checker_binds_orphaned_backward_nodes():
    """check_plan's contiguity for a training graph is the solvers': an orphaned backward node sits
    between the forward nodes its backward edges mirror, even though no forward edge says so."""
    # f0 -> f1 forward; f1 -> g1 -> o -> g0 backward; g1, g0 ride with f1, f0; o has no forward twin.
    tensors = (Tensor("a", 0, (1,), cost=1.0), Tensor("b", 1, (2,), cost=1.0), Tensor("c", 2, (3,), cost=1.0),
               Tensor("d", 3, (4,), cost=1.0))
    graph = CostGraph(names=("f0", "f1", "g1", "o", "g0"), compute={"acc": (1.0,) * 5}, memory=(0.0,) * 5,
                      tensors=tensors, groups=((1, 2), (0, 4)), backward=(False, False, True, True, True))
    devices = Devices((DeviceKind("acc", 3),))
    inside = make_plan(graph, devices, (0, 1, 1, 0, 0), (0, 1), solver="user")
    check_plan(graph, devices, inside, contiguous=True)
    after = make_plan(graph, devices, (0, 1, 1, 2, 0), (0, 1, 2), solver="user")
    assert [(graph.names[u], graph.names[v]) for u, v in stage_order_violations(graph, after.stage_of)] == [("o", "f1")]
    with pytest.raises(PlanError, match="not contiguous"):
        check_plan(graph, devices, after, contiguous=True)
