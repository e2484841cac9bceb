"""The report's graphs, laid out by Graphviz ``dot``: the operator DAG and the stage graph, as inline SVG.

Graphviz is the layout engine every DAG viewer of this field falls back on
(Netron's predecessor views, TensorBoard's op graph, torch.fx's drawer):
layered layout of a directed acyclic graph is what ``dot`` exists for. A
graph of more than :data:`FULL_DAG_LIMIT` operators is drawn condensed: one
box per (stage, name scope), the scope depth the deepest that keeps the
boxes under :data:`GROUP_LIMIT`; the full node table stays on the page.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from onnxsplit.errors import UsageError
from onnxsplit.export.report_data import ReportData, format_bytes

FULL_DAG_LIMIT = 300  # operators drawn one by one up to this many
GROUP_LIMIT = 160  # boxes of the condensed view, at most (one per stage and scope at the coarsest depth if more)
# Colour-blind-safe qualitative palette (Okabe-Ito, then Tol's muted): stage K gets colour K modulo its length.
PALETTE = ("#56B4E9", "#E69F00", "#009E73", "#F0E442", "#CC79A7", "#0072B2", "#D55E00", "#999933",
           "#88CCEE", "#CC6677", "#AA4499", "#44AA99", "#DDCC77", "#117733")
HANDOFF_COLOUR = "#C0392B"


def stage_colour(stage: int) -> str:
    return PALETTE[stage % len(PALETTE)]


def render_svg(source: str) -> str:
    """``source`` (dot language) laid out by Graphviz's ``dot`` as an SVG element for inlining in HTML.

    Raises UsageError when the graphviz package or the ``dot`` program is missing.
    """
    try:
        import graphviz
    except ImportError:
        raise UsageError("the report needs the graphviz Python package (pip install 'onnxsplit[report]')") from None
    try:
        svg = graphviz.Source(source, engine="dot").pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound:
        raise UsageError("the report needs Graphviz's dot program; install Graphviz "
                         "(e.g. apt install graphviz) so that dot is on the PATH") from None
    return strip_prolog(svg)


_COMMENT = re.compile(r"<!--.*?-->\n?", re.S)


def strip_prolog(svg: str) -> str:
    """The ``<svg>`` element alone: no XML declaration, no DOCTYPE (it names a DTD URL), no comments (weight)."""
    start = svg.find("<svg")
    return _COMMENT.sub("", svg[start:] if start >= 0 else svg).strip()


def _quote(text: str) -> str:
    """A dot string literal (dot reads HTML entities in labels; quotes and backslashes are escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kw: object) -> str:
    return "[" + ", ".join(f"{k}={_quote(str(v))}" for k, v in kw.items() if v is not None) + "]"


def _ms(x: float) -> str:
    return f"{x:.3g} ms" if x >= 0.001 else f"{x * 1000:.3g} µs"


def _size(n: int | None) -> str:
    return "size unknown" if n is None else format_bytes(n)


def _header(name: str) -> list[str]:
    return [f"digraph {_quote(name)} {{",
            'graph [rankdir="TB", fontname="Helvetica", fontsize="10", nodesep="0.15", ranksep="0.3", '
            'bgcolor="transparent"];',
            'node [shape="box", style="rounded,filled", fontname="Helvetica", fontsize="9", height="0.25", '
            'margin="0.06,0.02"];',
            'edge [color="#999999", arrowsize="0.5", fontname="Helvetica", fontsize="8"];']


def _io_nodes(data: ReportData, lines: list[str]) -> None:
    for i, name in enumerate(data.graph_inputs):
        lines.append(f"in{i} " + _attrs(label=name, shape="ellipse", style="filled", fillcolor="#FFFFFF",
                                        tooltip=f"model input {name}", **{"class": "graph-input"}))
    for i, name in enumerate(data.graph_outputs):
        lines.append(f"out{i} " + _attrs(label=name, shape="ellipse", style="filled", fillcolor="#FFFFFF",
                                         tooltip=f"model output {name}", **{"class": "graph-output"}))


def full_dag_source(data: ReportData) -> str:
    """Every operator a box coloured by its stage; hand-offs red and labelled with tensor and bytes per sample."""
    lines = _header("operators")
    handoffs = data.handoff_bytes
    by_stage: dict[int, list[int]] = defaultdict(list)
    for row in data.nodes:
        by_stage[row.stage].append(row.index)
    for s in sorted(by_stage):
        st = data.manifest.stages[s]
        lines.append(f"subgraph cluster_stage{s} {{")
        lines.append(f'graph [label={_quote(f"stage {s} ({st.device_kind}:{st.device})")}, style="dashed", '
                     f'color={_quote(stage_colour(s))}];')
        for v in by_stage[s]:
            row = data.nodes[v]
            lines.append(f"n{v} " + _attrs(label=row.op_type, fillcolor=stage_colour(s), id=f"op{v}",
                                           tooltip=f"{row.name} ({row.op_type}, stage {s}, {_ms(row.time_ms)})",
                                           **{"class": f"op stage-{s}"}))
        lines.append("}")
    _io_nodes(data, lines)
    for e in data.edges:
        crossing = data.nodes[e.producer].stage != data.nodes[e.consumer].stage and e.tensor in handoffs
        if crossing:
            lines.append(f"n{e.producer} -> n{e.consumer} " + _attrs(
                color=HANDOFF_COLOUR, penwidth="2", fontcolor=HANDOFF_COLOUR,
                label=f"{e.tensor}\n{_size(handoffs[e.tensor])}", tooltip=f"hand-off {e.tensor}",
                **{"class": "handoff"}))
        else:
            lines.append(f"n{e.producer} -> n{e.consumer} " + _attrs(tooltip=e.tensor))
    _input_edges(data, lines, node_id=lambda v: f"n{v}")
    for i, (name, v) in enumerate(data.graph_outputs.items()):
        lines.append(f"n{v} -> out{i} " + _attrs(tooltip=name))
    lines.append("}")
    return "\n".join(lines)


def _input_edges(data: ReportData, lines: list[str], *, node_id: Callable[[int], str]) -> None:
    """Edges from the model's inputs to the boxes that read them, one per (input, box)."""
    index = {name: i for i, name in enumerate(data.graph_inputs)}
    drawn: set[tuple[int, str]] = set()
    for tensor, v in data.input_reads:
        key = (index[tensor], node_id(v))
        if key not in drawn:
            drawn.add(key)
            lines.append(f"in{key[0]} -> {key[1]} " + _attrs(tooltip=tensor))


# -- condensed view ----------------------------------------------------------------------------------------------


def scope_of(name: str, depth: int) -> str:
    """The first ``depth`` parts of a node name's ``/``-separated scope (``/encoder/layer.0/Add`` -> ``/encoder``)."""
    parts = [p for p in name.split("/")[:-1] if p]
    return "/" + "/".join(parts[:depth]) if parts[:depth] else "(top level)"


@dataclass(frozen=True)
class Grouping:
    depth: int
    group_of: tuple[int, ...]  # node -> group index
    keys: tuple[tuple[int, str], ...]  # group -> (stage, scope)


def group_nodes(data: ReportData, *, limit: int = GROUP_LIMIT) -> Grouping:
    """Nodes grouped by (stage, scope), at the deepest scope depth with at most ``limit`` groups (depth 1 at least)."""
    max_depth = max((len([p for p in r.name.split("/")[:-1] if p]) for r in data.nodes), default=0)
    best: Grouping | None = None
    for depth in range(1, max(max_depth, 1) + 1):
        index: dict[tuple[int, str], int] = {}
        group_of = tuple(index.setdefault((r.stage, scope_of(r.name, depth)), len(index)) for r in data.nodes)
        if best is not None and len(index) > limit:
            break
        best = Grouping(depth, group_of, tuple(index))
    assert best is not None
    return best


def condensed_dag_source(data: ReportData, *, limit: int = GROUP_LIMIT) -> str:
    """One box per (stage, name scope), labelled with its node count and time; hand-offs between boxes red."""
    g = group_nodes(data, limit=limit)
    handoffs = data.handoff_bytes
    count = [0] * len(g.keys)
    time = [0.0] * len(g.keys)
    for r in data.nodes:
        count[g.group_of[r.index]] += 1
        time[g.group_of[r.index]] += r.time_ms
    lines = _header("operators (condensed)")
    for s in sorted({k[0] for k in g.keys}):
        st = data.manifest.stages[s]
        lines.append(f"subgraph cluster_stage{s} {{")
        lines.append(f'graph [label={_quote(f"stage {s} ({st.device_kind}:{st.device})")}, style="dashed", '
                     f'color={_quote(stage_colour(s))}];')
        for gi, (stage, scope) in enumerate(g.keys):
            if stage == s:
                nodes = f"{count[gi]} node{'' if count[gi] == 1 else 's'}"
                lines.append(f"g{gi} " + _attrs(label=f"{scope}\n{nodes}, {_ms(time[gi])}",
                                                fillcolor=stage_colour(s), id=f"group{gi}",
                                                tooltip=f"stage {s}: {scope} ({count[gi]} nodes)",
                                                **{"class": f"group stage-{s}"}))
        lines.append("}")
    _io_nodes(data, lines)
    # A hand-off is sent once to each stage that reads it: one edge per (producing box, reading stage), drawn to
    # the box in that stage that reads it first, rather than a fan of edges to every reader.
    first_reader: dict[tuple[str, int], int] = {}
    for e in data.edges:
        s = data.nodes[e.consumer].stage
        if data.nodes[e.producer].stage != s and e.tensor in handoffs:
            key = (e.tensor, s)
            first_reader[key] = min(first_reader.get(key, e.consumer), e.consumer)
    carried: dict[tuple[int, int], list[str]] = defaultdict(list)
    plain: set[tuple[int, int]] = set()
    for e in data.edges:
        a, b = g.group_of[e.producer], g.group_of[e.consumer]
        if a == b:
            continue
        s = data.nodes[e.consumer].stage
        if data.nodes[e.producer].stage != s and e.tensor in handoffs:
            b = g.group_of[first_reader[(e.tensor, s)]]
            if e.tensor not in carried[(a, b)]:
                carried[(a, b)].append(e.tensor)
        else:
            plain.add((a, b))
    for (a, b), tensors in sorted(carried.items()):
        total = sum(handoffs[t] or 0 for t in tensors)
        shown = ", ".join(tensors[:2]) + (f" +{len(tensors) - 2} more" if len(tensors) > 2 else "")
        lines.append(f"g{a} -> g{b} " + _attrs(color=HANDOFF_COLOUR, penwidth="2", fontcolor=HANDOFF_COLOUR,
                                                label=f"{shown}\n{format_bytes(total)}",
                                                tooltip="hand-off " + ", ".join(tensors), **{"class": "handoff"}))
    for a, b in sorted(plain - set(carried)):
        lines.append(f"g{a} -> g{b};")
    _input_edges(data, lines, node_id=lambda v: f"g{g.group_of[v]}")
    for i, (name, v) in enumerate(data.graph_outputs.items()):
        lines.append(f"g{g.group_of[v]} -> out{i} " + _attrs(tooltip=name))
    lines.append("}")
    return "\n".join(lines)


def operator_svg(data: ReportData, *, full_limit: int = FULL_DAG_LIMIT) -> tuple[str, bool]:
    """The operator graph as inline SVG, and whether it is the condensed view."""
    if len(data.nodes) <= full_limit:
        return render_svg(full_dag_source(data)), False
    return render_svg(condensed_dag_source(data)), True


# -- stage graph -------------------------------------------------------------------------------------------------


def stage_graph_source(data: ReportData) -> str:
    """One box per stage (device, predicted load, memory), one edge per producer-consumer pair with its bytes."""
    lines = _header("stages")
    m = data.manifest
    bottleneck = data.bottleneck
    for st in m.stages:
        p = st.predicted
        label = (f"stage {st.index}\n{st.device_kind}:{st.device}, {st.nodes} nodes\n"
                 f"load {_ms(p.load_ms)}\n= compute {_ms(p.compute_ms)} + receive {_ms(p.receive_ms)} "
                 f"+ send {_ms(p.send_ms)}\nweights {format_bytes(st.weight_bytes)}, "
                 f"activations {format_bytes(st.activation_peak_bytes)}")
        extra = {"penwidth": "3", "color": HANDOFF_COLOUR} if st.index == bottleneck else {}
        if st.index == bottleneck:
            label += "\nBOTTLENECK"
        lines.append(f"s{st.index} " + _attrs(label=label, fillcolor=stage_colour(st.index), fontsize="10",
                                              id=f"stagebox{st.index}", **{"class": f"stage stage-{st.index}"},
                                              **extra))
    pairs: dict[tuple[int, int], list[tuple[str, int | None]]] = defaultdict(list)
    for h in m.handoffs:
        for c in h.consumers:
            pairs[(h.producer, c)].append((h.name, h.bytes_per_sample))
    for (a, b), tensors in sorted(pairs.items()):
        total = sum(n or 0 for _, n in tensors)
        label = f"{len(tensors)} tensor{'s' if len(tensors) != 1 else ''}\n{format_bytes(total)}"
        lines.append(f"s{a} -> s{b} " + _attrs(label=label, color=HANDOFF_COLOUR, fontcolor=HANDOFF_COLOUR,
                                               penwidth="1.5", tooltip=", ".join(t for t, _ in tensors)))
    lines.append("}")
    return "\n".join(lines)


def stage_svg(data: ReportData) -> str:
    return render_svg(stage_graph_source(data))


_ID = re.compile(r'\bid="([^"]*)"')


def prefix_ids(svg: str, prefix: str) -> str:
    """Give every id in a Graphviz SVG (and the references to it) a prefix, so several graphs share one page."""
    ids = set(_ID.findall(svg))
    if not ids:
        return svg
    svg = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg)
    for i in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'"#{i}"', f'"#{prefix}{i}"').replace(f"url(#{i})", f"url(#{prefix}{i})")
    return svg


def escape(text: str) -> str:
    return html.escape(text, quote=True)
