"""The HTML plan report: its figures are the manifest's, the plan's and the bench file's; it loads nothing."""

from __future__ import annotations

import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import MODELS, chain_in_three, copy_split, one_line
from onnxsplit.errors import ModelError, OnnxSplitError, UsageError
from onnxsplit.export import report_dag
from onnxsplit.export.report import write_report
from onnxsplit.manifest import load_manifest
from onnxsplit.planfile import load_plan
from onnxsplit.runtime.benchfile import load_bench
from onnxsplit.splitting import split

pytest.importorskip("graphviz")
pytest.importorskip("matplotlib")


class Page(HTMLParser):
    """The page's data fields (key -> every value shown), section ids, and every tag with its attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.fields: dict[str, list] = {}
        self.sections: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if "data-field" in a:
            self.fields.setdefault(a["data-field"], []).append(json.loads(a["data-value"]))
        if tag == "section":
            self.sections.append(a["id"])

    def value(self, key: str):
        values = self.fields[key]
        assert all(v == values[0] for v in values), (key, values)
        return values[0]


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    """The bundled transformer split on 4 devices (estimated costs), and a short bench of it as JSON."""
    from onnxsplit.runtime.bench import bench

    root = tmp_path_factory.mktemp("transformer")
    out = root / "split"
    split(MODELS / "transformer.onnx", out, devices=4, input_shapes={"input_ids": (4, 32)}, costs="estimate")
    result = bench(out, seconds=0.3, warmup=0.1, rounds=1, pin=False)
    bench_path = root / "bench.json"
    bench_path.write_text(json.dumps(result.as_dict()))
    return out, bench_path


@pytest.fixture(scope="module")
def chain_split(tmp_path_factory):
    """A small chain of 18 operators cut into 3 stages by a given plan, node times measured (cached)."""
    _, _, out = chain_in_three(tmp_path_factory.mktemp("chain"))
    assert len(load_manifest(out).stages) == 3
    return out


def expected_fields(outdir: Path, bench_path: Path | None) -> dict:
    m = load_manifest(outdir)
    plan = load_plan(m.plan_path())
    want = {
        "plan.value": plan.value, "plan.lower_bound": plan.lower_bound, "plan.solver": plan.solver.value,
        "plan.objective": plan.objective.value, "plan.gap": plan.gap if math.isfinite(plan.gap) else None,
        "bottleneck": max(m.stages, key=lambda s: s.predicted.load_ms).index,
        "manifest.predicted_bottleneck_ms": m.predicted_bottleneck_ms,
    }
    for s in m.stages:
        k = s.index
        want.update({f"stage.{k}.device": s.device, f"stage.{k}.device_kind": s.device_kind,
                     f"stage.{k}.nodes": s.nodes, f"stage.{k}.weight_bytes": s.weight_bytes,
                     f"stage.{k}.activation_peak_bytes": s.activation_peak_bytes})
        for part in ("compute_ms", "receive_ms", "send_ms", "load_ms"):
            want[f"stage.{k}.{part}"] = getattr(s.predicted, part)
    for h in m.handoffs:
        want[f"handoff.{h.name}.bytes_per_sample"] = h.bytes_per_sample
    if bench_path is not None:
        b = load_bench(bench_path)
        want["bench.pipeline.samples_per_s"] = b.pipeline.samples_per_s
        for s in b.stages:
            for key in ("measured_ms", "predicted_ms", "busy", "starved", "blocked"):
                want[f"bench.stage.{s.index}.{key}"] = getattr(s, key)
    return want


def test_figures_equal_the_manifest_plan_and_bench(transformer, tmp_path):
    out, bench_path = transformer
    path = write_report(out, tmp_path / "report.html", bench=bench_path, costs="estimate")
    page = Page(path.read_text())
    want = expected_fields(out, bench_path)
    assert want.keys() <= page.fields.keys(), sorted(want.keys() - page.fields.keys())
    for key, value in want.items():
        assert page.value(key) == value, key
    timeline = load_bench(bench_path).timeline
    assert page.sections == ["dag", "stages", "solver", "bench", *(["timeline"] if timeline else []), "slowest"]
    html_tag = next(a for t, a in page.tags if t == "html")
    assert html_tag["data-report"] == "onnxsplit"


def test_without_bench_there_is_no_bench_section(transformer, tmp_path):
    out, _ = transformer
    page = Page(write_report(out, tmp_path / "r.html", costs="estimate").read_text())
    assert page.sections == ["dag", "stages", "solver", "slowest"]
    assert not any(k.startswith("bench.") for k in page.fields)
    for key, value in expected_fields(out, None).items():
        assert page.value(key) == value, key


def test_loads_nothing_from_the_network(transformer, tmp_path):
    out, bench_path = transformer
    text = write_report(out, tmp_path / "r.html", bench=bench_path, costs="estimate").read_text()
    page = Page(text)
    tags = {t for t, _ in page.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}, tags
    for tag, attrs in page.tags:
        for name in ("src", "href", "xlink:href"):
            value = attrs.get(name)
            assert value is None or value.startswith(("#", "data:")), (tag, name, value)
    assert not re.search(r"url\((?!#)", text) and "@import" not in text and "<!DOCTYPE svg" not in text


def test_a_big_graph_is_condensed_with_every_node_in_the_table(transformer, tmp_path):
    out, _ = transformer
    text = html.unescape(write_report(out, tmp_path / "r.html", costs="estimate").read_text())
    nodes = len(load_plan(load_manifest(out).plan_path()).stage_of)
    assert nodes > report_dag.FULL_DAG_LIMIT
    assert 'data-view="condensed"' in text
    assert 'class="node op ' not in text
    groups = re.findall(r'<g id="group\d+" class="node group stage-(\d+)"', text)
    assert 0 < len(groups) <= report_dag.GROUP_LIMIT
    assert {int(s) for s in groups} == set(range(len(load_manifest(out).stages)))
    assert f"All {nodes} nodes" in text
    assert len(re.findall(r"<table class=\"nodes\">.*?</table>", text, re.S)[0].split("<tr>")) - 1 == nodes + 1


def test_a_small_graph_has_one_coloured_box_per_operator(chain_split, tmp_path):
    text = html.unescape(write_report(chain_split, tmp_path / "r.html").read_text())
    m = load_manifest(chain_split)
    plan = load_plan(m.plan_path())
    assert 'data-view="full"' in text
    boxes = re.findall(r'<g id="op(\d+)" class="node op stage-(\d+)">(.*?)</g>', text, re.S)
    assert sorted(int(v) for v, _, _ in boxes) == list(range(len(plan.stage_of)))
    for v, stage, body in boxes:
        assert int(stage) == plan.stage_of[int(v)]
        assert f'fill="{report_dag.stage_colour(int(stage)).lower()}"' in body.lower()
    handoff_labels = re.findall(r'class="edge handoff">(.*?)(?=class="(?:node|edge|cluster)|</svg>)', text, re.S)
    assert m.handoffs and len(handoff_labels) >= len(m.handoffs)
    for h in m.handoffs:
        assert any(f">{h.name}<" in e for e in handoff_labels), h.name


def test_the_slowest_nodes_come_with_their_times(chain_split, tmp_path):
    text = write_report(chain_split, tmp_path / "r.html").read_text()
    assert "measured with onnxruntime" in text
    slowest = text[text.index('<section id="slowest">'):]
    for s in load_manifest(chain_split).stages:
        assert f"Stage {s.index} (" in slowest


def test_the_same_inputs_give_the_same_page(transformer, tmp_path):
    out, bench_path = transformer
    a = write_report(out, tmp_path / "a.html", bench=bench_path, costs="estimate").read_bytes()
    b = write_report(out, tmp_path / "b.html", bench=bench_path, costs="estimate").read_bytes()
    assert a == b


def test_refine_rounds_are_shown(chain_split, tmp_path):
    from onnxsplit.refine import Round

    out, _ = copy_split(chain_split, tmp_path / "copy")
    doc = json.loads((out / "plan.json").read_text())
    doc["refine"] = [Round(0, 1.5, 2.25, 100.0, True).as_dict(), Round(1, 1.25, 2.5, 90.0, False).as_dict()]
    (out / "plan.json").write_text(json.dumps(doc))
    text = write_report(out, tmp_path / "r.html").read_text()
    assert "Refine rounds" in text and "2.25 ms" in text and "kept" in text


# -- errors ----------------------------------------------------------------------------------------------------


def no_page(folder: Path) -> None:
    assert [p.name for p in folder.iterdir()] == [], "a failed report left files behind"


def test_a_missing_split_folder(tmp_path):
    target = tmp_path / "pages"
    target.mkdir()
    with pytest.raises(UsageError) as exc:
        write_report(tmp_path / "nowhere", target / "r.html")
    assert "not a split folder" in one_line(exc)
    no_page(target)


def test_a_damaged_manifest(chain_split, tmp_path):
    out, _ = copy_split(chain_split, tmp_path / "copy")
    (out / "manifest.json").write_text('{"format": "onnxsplit.manifest", "version": 1, "stages": 3}')
    target = tmp_path / "pages"
    target.mkdir()
    with pytest.raises(OnnxSplitError) as exc:
        write_report(out, target / "r.html")
    assert "manifest.json" in one_line(exc)
    no_page(target)


def test_a_moved_model_is_refused_then_found(chain_split, tmp_path):
    out, doc = copy_split(chain_split, tmp_path / "copy")
    model = Path(doc["source"]["path"])
    doc["source"]["path"] = str(tmp_path / "gone.onnx")
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError) as exc:
        write_report(out, tmp_path / "r.html")
    assert "gone.onnx" in one_line(exc)
    assert write_report(out, tmp_path / "r.html", model_path=model).is_file()


def test_a_bench_file_of_another_split(transformer, chain_split, tmp_path):
    _, bench_path = transformer  # 4 stages; the chain has 3
    with pytest.raises(UsageError) as exc:
        write_report(chain_split, tmp_path / "r.html", bench=bench_path)
    assert "another split" in one_line(exc) and str(bench_path) in one_line(exc)
    assert not (tmp_path / "r.html").exists()


def test_a_damaged_bench_file(chain_split, tmp_path):
    bad = tmp_path / "bench.json"
    bad.write_text("[1, 2")
    with pytest.raises(UsageError) as exc:
        write_report(chain_split, tmp_path / "r.html", bench=bad)
    assert str(bad) in one_line(exc)


def test_an_unwritable_folder(chain_split, tmp_path):
    with pytest.raises(OnnxSplitError) as exc:
        write_report(chain_split, tmp_path / "no" / "such" / "r.html")
    assert "r.html" in one_line(exc)


def test_devices_give_the_memory_to_compare_with(chain_split, tmp_path):
    from onnxsplit.devices import identical_devices

    text = write_report(chain_split, tmp_path / "r.html", devices=identical_devices(3, memory=8e9)).read_text()
    assert text.count("<td>8 GB</td>") == 3
    text = write_report(chain_split, tmp_path / "r.html", devices=identical_devices(3)).read_text()
    assert text.count("<td>unlimited</td>") == 3
    with pytest.raises(UsageError) as exc:
        write_report(chain_split, tmp_path / "x.html", devices=identical_devices(2))
    assert "2 devices" in one_line(exc)


def test_without_dot_the_report_says_it_needs_graphviz(chain_split, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UsageError) as exc:
        write_report(chain_split, tmp_path / "r.html")
    assert "Graphviz's dot" in one_line(exc)
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_a_10000_node_model_gives_a_condensed_page_of_reasonable_weight(deep_transformer_split, tmp_path):
    nodes, out = deep_transformer_split
    text = html.unescape(write_report(out, tmp_path / "r.html", costs="estimate").read_text())
    assert 'data-view="condensed"' in text
    groups = re.findall(r'<g id="group\d+" class="node group stage-\d+"', text)
    assert 0 < len(groups) <= report_dag.GROUP_LIMIT
    assert f"All {nodes} nodes" in text
    # Every operator has a row, yet the page stays a few megabytes at most (1.5 MB when this was written).
    assert len(text.encode()) < 4_000_000
