"""The plan report: one self-contained HTML page showing what the partitioner decided and why a stage is slow.

:func:`write_report` gathers the split folder's typed values
(:mod:`report_data`), lays the graphs out with Graphviz (:mod:`report_dag`),
draws the charts with matplotlib (:mod:`report_charts`) and writes the page
atomically. The page loads nothing: every figure is inline SVG, the style
sheet is inline, and there is no script.

Page markers other tools rely on: ``<html data-report="onnxsplit">``;
sections ``dag``, ``stages``, ``solver``, ``bench`` and ``timeline`` (only
with a bench file, the latter only when it holds a timeline) and
``slowest``; every figure read from the manifest, the plan or the bench
file is an element with ``data-field`` (its key) and ``data-value`` (the
exact value as JSON) whose text is the value formatted for people.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsplit.errors import OutputError
from onnxsplit.export.report_dag import escape, operator_svg, stage_colour, stage_svg
from onnxsplit.export.report_data import ReportData, finite_or_none, format_bytes, gather_report

if TYPE_CHECKING:
    from onnxsplit.devices import Devices

SLOWEST = 10  # nodes listed per stage

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td { white-space: nowrap; } td.l, th.l { text-align: left; white-space: normal; }
tr.bottleneck td { background: #fbe9e7; font-weight: 600; }
.figure { overflow: auto; max-height: 80vh; border: 1px solid #eee; margin: .6em 0; }
.figure svg { display: block; max-width: 100%; height: auto; }
.chart svg { max-width: 100%; height: auto; }
.swatch { display: inline-block; width: .9em; height: .9em; border: 1px solid #555; vertical-align: middle; }
.note { color: #555; font-size: .9em; }
code { font-size: .95em; }
table.nodes td:nth-child(2), table.nodes td:nth-child(3), table.nodes td:nth-child(6) { text-align: left; }
"""


# -- formatting ----------------------------------------------------------------------------------------------------


def _json(value: Any) -> str:
    """The exact value as JSON; a non-finite float (JSON has none) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    return json.dumps(value)


def field(key: str, value: Any, text: str | None = None) -> str:
    """An element carrying one figure: its key, its exact value, and ``text`` (or the value) for people."""
    shown = text if text is not None else ("—" if value is None else str(value))
    return f'<span data-field="{escape(key)}" data-value="{escape(_json(value))}">{escape(shown)}</span>'


def ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.4g} ms"


def pct(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.1%}"


def _row(cells: Iterable[str], *, cls: str = "", left: Iterable[int] = ()) -> str:
    lefts = set(left)
    tds = "".join(f'<td class="l">{c}</td>' if i in lefts else f"<td>{c}</td>" for i, c in enumerate(cells))
    return f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>"


def _table(headers: Iterable[str], rows: Iterable[str], *, left: Iterable[int] = (), cls: str = "") -> str:
    lefts = set(left)
    ths = "".join(f'<th class="l">{escape(h)}</th>' if i in lefts else f"<th>{escape(h)}</th>"
                  for i, h in enumerate(headers))
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _swatch(stage: int) -> str:
    return f'<span class="swatch" style="background:{stage_colour(stage)}"></span>'


# -- sections ------------------------------------------------------------------------------------------------------


def _dag_section(data: ReportData) -> str:
    svg, condensed = operator_svg(data)
    n = len(data.nodes)
    if condensed:
        from onnxsplit.export.report_dag import group_nodes

        g = group_nodes(data)
        note = (f"{n} operators: too many to draw one by one, so each box is one stage's operators under one name "
                f"scope (depth {g.depth}, {len(g.keys)} boxes); every operator is in the node table below.")
    else:
        note = f"{n} operators, one box each, coloured by stage; hover a box for its name and time."
    legend = " ".join(f"{_swatch(s.index)} stage {s.index}" for s in data.manifest.stages)
    rows = []
    for h in data.manifest.handoffs:
        shape = "?" if h.shape is None else "×".join("?" if d is None else str(d) for d in h.shape)
        size = "unknown" if h.bytes_per_sample is None else format_bytes(h.bytes_per_sample)
        rows.append(_row([escape(h.name), str(h.producer), ", ".join(map(str, h.consumers)), escape(str(h.dtype)),
                          escape(shape), field(f"handoff.{h.name}.bytes_per_sample", h.bytes_per_sample, size)],
                         left=(0,)))
    table = (_table(["hand-off tensor", "from stage", "to stages", "dtype", "shape", "bytes per sample"], rows,
                    left=(0,)) if rows else '<p class="note">No tensor passes between stages.</p>')
    return (f'<section id="dag"><h2>Operator graph</h2><p class="note">{escape(note)} Hand-offs are red, labelled '
            f'with the tensor and its bytes per sample.</p><p>{legend}</p>'
            f'<div class="figure" data-view="{"condensed" if condensed else "full"}">{svg}</div>'
            f"<h3>Hand-offs</h3>{table}</section>")


def _memory_cell(data: ReportData, k: int) -> str:
    if data.device_memory is None:
        return "not recorded"
    cap = data.device_memory[k]
    return "unlimited" if not math.isfinite(cap) else format_bytes(cap)


def _stages_section(data: ReportData) -> str:
    from onnxsplit.export.report_charts import memory_chart, stage_load_chart

    m = data.manifest
    b = data.bottleneck
    rows = []
    for s in m.stages:
        k, p = s.index, s.predicted
        cells = [
            f"{_swatch(k)} {k}",
            field(f"stage.{k}.device", s.device),
            field(f"stage.{k}.device_kind", s.device_kind),
            escape(s.provider.removesuffix("ExecutionProvider")),
            field(f"stage.{k}.nodes", s.nodes),
            field(f"stage.{k}.compute_ms", p.compute_ms, ms(p.compute_ms)),
            field(f"stage.{k}.receive_ms", p.receive_ms, ms(p.receive_ms)),
            field(f"stage.{k}.send_ms", p.send_ms, ms(p.send_ms)),
            field(f"stage.{k}.load_ms", p.load_ms, ms(p.load_ms)),
            field(f"stage.{k}.weight_bytes", s.weight_bytes, format_bytes(s.weight_bytes)),
            field(f"stage.{k}.activation_peak_bytes", s.activation_peak_bytes, format_bytes(s.activation_peak_bytes)),
            _memory_cell(data, k),
            "bottleneck" if k == b else "",
        ]
        rows.append(_row(cells, cls="bottleneck" if k == b else "", left=(1, 2, 3)))
    table = _table(["stage", "device", "kind", "provider", "nodes", "compute", "receive", "send", "load", "weights",
                    "activation peak", "device memory", ""], rows, left=(1, 2, 3))
    memory_note = ("Device memory is not recorded in a split folder; give the devices to compare against it."
                   if data.device_memory is None else "")
    summary = (f"<p>Bottleneck: stage {field('bottleneck', b)}, predicted "
               f"{field('manifest.predicted_bottleneck_ms', m.predicted_bottleneck_ms, ms(m.predicted_bottleneck_ms))}"
               f" per request.</p>")
    return (f'<section id="stages"><h2>Stages</h2>{summary}<div class="figure">{stage_svg(data)}</div>{table}'
            f'<p class="note">{escape(memory_note)}</p>'
            f'<div class="chart">{stage_load_chart(m.stages, bottleneck=b)}</div>'
            f'<div class="chart">{memory_chart(m.stages, data.device_memory)}</div></section>')


def _solver_section(data: ReportData) -> str:
    plan = data.plan
    gap = finite_or_none(plan.gap)
    rows = [
        _row(["objective", field("plan.objective", plan.objective.value)], left=(0, 1)),
        _row(["value", field("plan.value", plan.value, ms(plan.value))], left=(0, 1)),
        _row(["lower bound", field("plan.lower_bound", plan.lower_bound, ms(plan.lower_bound))], left=(0, 1)),
        _row(["gap", field("plan.gap", gap, pct(gap))], left=(0, 1)),
        _row(["solver", field("plan.solver", plan.solver.value)], left=(0, 1)),
        _row(["contiguous", "yes" if plan.contiguous else "no"], left=(0, 1)),
        _row(["notes", "<br>".join(escape(n) for n in plan.notes) or "—"], left=(0, 1)),
    ]
    out = f'<section id="solver"><h2>Solver</h2>{_table(["", ""], rows, left=(0, 1))}'
    if data.rounds:
        rrows = [_row([str(r.index), ms(r.predicted_bottleneck_ms), ms(r.measured_bottleneck_ms),
                       f"{r.samples_per_s:.1f}", "kept" if r.kept else ""]) for r in data.rounds]
        out += "<h3>Refine rounds</h3>" + _table(["round", "predicted bottleneck", "measured bottleneck",
                                                   "samples/s", ""], rrows)
    else:
        out += '<p class="note">No refine rounds (the split was not refined).</p>'
    return out + "</section>"


def _bench_section(data: ReportData) -> str:
    from onnxsplit.export.report_charts import bench_chart, fractions_chart

    bench = data.bench
    assert bench is not None
    measured = [s.measured_ms for s in bench.stages]
    slowest = max(range(len(measured)), key=lambda k: (measured[k], -k))
    rows = []
    for s in bench.stages:
        k = s.index
        ratio = s.measured_ms / s.predicted_ms if s.predicted_ms > 0 else float("nan")
        rows.append(_row([
            str(k), field(f"bench.stage.{k}.measured_ms", s.measured_ms, ms(s.measured_ms)),
            field(f"bench.stage.{k}.predicted_ms", s.predicted_ms, ms(s.predicted_ms)),
            "—" if not math.isfinite(ratio) else f"{ratio:.2f}",
            field(f"bench.stage.{k}.busy", s.busy, pct(s.busy)),
            field(f"bench.stage.{k}.starved", s.starved, pct(s.starved)),
            field(f"bench.stage.{k}.blocked", s.blocked, pct(s.blocked)),
            pct(s.other), "slowest" if k == slowest else ""], cls="bottleneck" if k == slowest else ""))
    table = _table(["stage", "measured", "predicted", "measured/predicted", "busy", "starved", "blocked", "other",
                    ""], rows)
    sps = bench.pipeline.samples_per_s
    head = (f"<p>Pipeline: {field('bench.pipeline.samples_per_s', sps, f'{sps:.1f} samples/s')} "
            f"({escape(bench.original_1.label)}: {bench.original_1.samples_per_s:.1f} samples/s); "
            f"{bench.in_flight} requests in flight, {bench.samples_per_request} samples per request"
            + (f"; predicted times scaled by {bench.predicted_scale:g}" if bench.predicted_scale != 1.0 else "")
            + ".</p>")
    warnings = "".join(f'<p class="note">{escape(w)}</p>' for w in bench.warnings)
    fr = [(s.busy, s.starved, s.blocked, s.other) for s in bench.stages]
    return (f'<section id="bench"><h2>Measured</h2><p class="note">From {escape(str(data.bench_path))}.</p>{head}'
            f"{warnings}{table}"
            f'<div class="chart">{bench_chart(measured, [s.predicted_ms for s in bench.stages], bottleneck=slowest)}'
            f'</div><div class="chart">{fractions_chart(fr)}</div></section>')


def _timeline_section(data: ReportData) -> str:
    from onnxsplit.export.report_charts import gantt_chart

    bench = data.bench
    assert bench is not None
    timeline = bench.timeline
    measured = [s.measured_ms for s in bench.stages]
    slowest = max(range(len(measured)), key=lambda k: (measured[k], -k))
    spans = [(t.request, t.stage, t.start_ms, t.end_ms) for t in timeline]
    requests = len({t.request for t in timeline})
    chart = gantt_chart(spans, stages=len(bench.stages), bottleneck=slowest)
    return (f'<section id="timeline"><h2>Pipeline timeline</h2><p class="note">{requests} consecutive requests '
            f"through the stages, as the runtime recorded them. Gaps in a row are bubbles: the stage waited. The "
            f"shaded row is the measured bottleneck (stage {slowest}).</p>"
            f'<div class="chart">{chart}</div></section>')


def _slowest_section(data: ReportData) -> str:
    parts = [f'<section id="slowest"><h2>Slowest nodes per stage</h2><p class="note">Node times: '
             f"{escape(data.times_from)}. A fused node's time is its share of the kernel it was fused into.</p>"]
    by_stage: dict[int, list] = {s.index: [] for s in data.manifest.stages}
    for r in data.nodes:
        by_stage.setdefault(r.stage, []).append(r)
    for s, rows in by_stage.items():
        top = sorted(rows, key=lambda r: (-r.time_ms, r.index))[:SLOWEST]
        total = math.fsum(r.time_ms for r in rows)
        trs = [_row([escape(r.name), escape(r.op_type), ms(r.time_ms), pct(r.time_ms / total if total else None),
                     escape(r.source), escape(", ".join(r.fused_with)) or "—"], left=(0, 1, 4, 5)) for r in top]
        parts.append(f"<h3>{_swatch(s)} Stage {s} ({len(rows)} operators with the constants it copies, "
                     f"{ms(total)} in all)</h3>"
                     + _table(["node", "op", "time", "of stage", "source", "fused with"], trs, left=(0, 1, 4, 5)))
    # Thousands of rows: alignment comes from the style sheet, not from an attribute on every cell.
    all_rows = [_row([str(r.index), escape(r.name), escape(r.op_type), str(r.stage), ms(r.time_ms),
                      escape(r.source)]) for r in data.nodes]
    parts.append(f"<details><summary>All {len(data.nodes)} nodes</summary>"
                 + _table(["#", "node", "op", "stage", "time", "source"], all_rows, left=(1, 2, 5), cls="nodes")
                 + "</details></section>")
    return "".join(parts)


def render_report(data: ReportData) -> str:
    """The whole page for ``data`` (deterministic for the same values)."""
    m = data.manifest
    sections = [_dag_section(data), _stages_section(data), _solver_section(data)]
    if data.bench is not None:
        sections.append(_bench_section(data))
        if getattr(data.bench, "timeline", ()):
            sections.append(_timeline_section(data))
    sections.append(_slowest_section(data))
    title = f"onnxsplit plan: {Path(m.source.path).name} on {len(m.stages)} stages"
    shapes = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in m.input_shapes.items())
    return ("<!DOCTYPE html>\n"
            f'<html lang="en" data-report="onnxsplit"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>"
            f'<p class="note">Split folder {escape(str(data.outdir))}; model {escape(m.source.path)} '
            f"(sha256 {escape(m.source.sha256[:12])}…); input shapes {escape(shapes)}.</p>"
            + "".join(sections) + "</body></html>\n")


def write_report(outdir: str | os.PathLike, path: str | os.PathLike, *, bench: str | os.PathLike | None = None,
                 model_path: str | os.PathLike | None = None, profile_path: str | os.PathLike | None = None,
                 costs: str = "measure", devices: Devices | None = None) -> Path:
    """Write the HTML report of the split in ``outdir`` to ``path``, atomically; return ``path``.

    ``bench``: a ``bench --json`` file of this split. ``model_path``: the
    original model if it moved since the split. Node times come from
    ``profile_path``, else as ``split`` got them with ``costs`` (a cache hit
    right after a split). ``devices``: the devices of the split, to show
    each stage's memory against its device's (a split folder does not
    record them). Before: ``path``'s folder exists. After: ``path`` holds
    the whole page, or (on any error) is as it was.
    """
    from onnxsplit.fileio import write_text_atomic

    data = gather_report(outdir, bench=bench, model_path=model_path, profile_path=profile_path, costs=costs,
                         devices=devices)
    page = render_report(data)
    path = Path(path)
    try:
        return write_text_atomic(path, page)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the report ({exc.strerror or exc})") from None
