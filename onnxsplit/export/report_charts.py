"""The report's charts, drawn by matplotlib as inline SVG.

matplotlib writes standalone SVG with no scripts and no fonts to fetch
(``svg.fonttype = "none"`` keeps text as text, so the page stays small and
searchable), and it runs without a display. Every chart is a function of
typed values returning one ``<svg>`` element; ids are prefixed so that
several charts share a page.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from onnxsplit.errors import UsageError
from onnxsplit.export.report_dag import HANDOFF_COLOUR, prefix_ids, stage_colour, strip_prolog

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from onnxsplit.manifest import Stage

COMPUTE, RECEIVE, SEND = "#4C72B0", "#DD8452", "#55A868"
BUSY, STARVED, BLOCKED, OTHER = "#4C72B0", "#C44E52", "#DD8452", "#BBBBBB"


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("the report needs the matplotlib Python package (pip install 'onnxsplit[report]')") from None
    fig = Figure(figsize=(width, height), dpi=96, layout="constrained")
    return fig


_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def to_svg(fig: Figure, prefix: str) -> str:
    """The figure as one ``<svg>`` element: deterministic ids, no metadata (its RDF names web URLs), ids prefixed."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "onnxsplit-report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return prefix_ids(_METADATA.sub("", strip_prolog(buf.getvalue())), prefix)


def _labels(n: int, bottleneck: int | None) -> list[str]:
    return [f"stage {k}" + (" ★" if k == bottleneck else "") for k in range(n)]


def stage_load_chart(stages: Sequence[Stage], *, bottleneck: int) -> str:
    """Predicted compute, receive and send per stage, stacked; the bottleneck's bar outlined in red."""
    n = len(stages)
    fig = _figure(7.0, 0.9 + 0.42 * n)
    ax = fig.add_subplot()
    y = list(range(n))
    left = [0.0] * n
    for part, colour, key in (("compute", COMPUTE, "compute_ms"), ("receive", RECEIVE, "receive_ms"),
                              ("send", SEND, "send_ms")):
        widths = [getattr(s.predicted, key) for s in stages]
        ax.barh(y, widths, left=left, color=colour, label=part, height=0.6)
        left = [a + b for a, b in zip(left, widths)]
    b = stages[bottleneck].predicted
    ax.barh([bottleneck], [b.load_ms], fill=False, edgecolor=HANDOFF_COLOUR, linewidth=2, height=0.7)
    ax.set_yticks(y, _labels(n, bottleneck))
    ax.invert_yaxis()
    ax.set_xlabel("predicted ms per request (★ bottleneck)")
    ax.legend(loc="lower right", fontsize=8, ncols=3)
    return to_svg(fig, "chart-load-")


def memory_chart(stages: Sequence[Stage], memory: Sequence[float] | None) -> str:
    """Weights and activation peak per stage, against each device's memory where it is known and finite."""
    n = len(stages)
    fig = _figure(7.0, 0.9 + 0.42 * n)
    ax = fig.add_subplot()
    y = list(range(n))
    weights = [s.weight_bytes / 1e6 for s in stages]
    acts = [s.activation_peak_bytes / 1e6 for s in stages]
    ax.barh(y, weights, color="#8172B3", label="weights", height=0.6)
    ax.barh(y, acts, left=weights, color="#CCB974", label="activation peak", height=0.6)
    if memory is not None:
        for k, cap in enumerate(memory):
            if math.isfinite(cap):
                ax.plot([cap / 1e6, cap / 1e6], [k - 0.4, k + 0.4], color=HANDOFF_COLOUR, linewidth=2,
                        label="device memory" if k == 0 or not any(math.isfinite(c) for c in memory[:k]) else None)
    ax.set_yticks(y, _labels(n, None))
    ax.invert_yaxis()
    ax.set_xlabel("MB")
    ax.legend(loc="lower right", fontsize=8)
    return to_svg(fig, "chart-memory-")


def bench_chart(measured: Sequence[float], predicted: Sequence[float], *, bottleneck: int) -> str:
    """Measured vs predicted ms per stage, side by side."""
    n = len(measured)
    fig = _figure(7.0, 0.9 + 0.5 * n)
    ax = fig.add_subplot()
    y = list(range(n))
    ax.barh([k - 0.18 for k in y], predicted, height=0.34, color="#BBBBBB", label="predicted")
    ax.barh([k + 0.18 for k in y], measured, height=0.34, color=[stage_colour(k) for k in y], label="measured")
    ax.set_yticks(y, _labels(n, bottleneck))
    ax.invert_yaxis()
    ax.set_xlabel("ms per request (★ measured bottleneck)")
    ax.legend(loc="lower right", fontsize=8)
    return to_svg(fig, "chart-bench-")


def fractions_chart(rows: Sequence[tuple[float, float, float, float]]) -> str:
    """Busy / starved / blocked / other fraction of each stage worker's time, stacked to 100%."""
    n = len(rows)
    fig = _figure(7.0, 0.9 + 0.42 * n)
    ax = fig.add_subplot()
    y = list(range(n))
    left = [0.0] * n
    for i, (label, colour) in enumerate((("busy", BUSY), ("starved", STARVED), ("blocked", BLOCKED),
                                         ("other", OTHER))):
        widths = [100 * r[i] for r in rows]
        ax.barh(y, widths, left=left, color=colour, label=label, height=0.6)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlim(0, 100)
    ax.set_yticks(y, _labels(n, None))
    ax.invert_yaxis()
    ax.set_xlabel("% of the measured window")
    ax.legend(loc="lower right", fontsize=8, ncols=4)
    return to_svg(fig, "chart-fractions-")


def gantt_chart(spans: Sequence[tuple[int, int, float, float]], *, stages: int, bottleneck: int) -> str:
    """One row per stage, one bar per (request, stage) run; gaps are bubbles; the bottleneck row shaded.

    ``spans``: (request, stage, start_ms, end_ms).
    """
    fig = _figure(9.0, 1.0 + 0.45 * stages)
    ax = fig.add_subplot()
    end = max((e for _, _, _, e in spans), default=1.0)
    ax.axhspan(bottleneck - 0.45, bottleneck + 0.45, color="#F6D7D3", zorder=0)
    for request, stage, start, stop in spans:
        ax.broken_barh([(start, max(stop - start, end * 1e-4))], (stage - 0.35, 0.7),
                       facecolors=stage_colour(request), edgecolor="#333333", linewidth=0.3, zorder=2)
    ax.set_yticks(list(range(stages)), _labels(stages, bottleneck))
    ax.set_ylim(stages - 0.5, -0.5)
    ax.set_xlim(0, end * 1.01)
    ax.set_xlabel("ms (one bar per request run; gaps are bubbles; colour cycles by request; ★ bottleneck)")
    return to_svg(fig, "chart-gantt-")
