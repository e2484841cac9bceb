"""The plan report as a reader sees it: opened in headless Chromium, every figure checked against the split's files.

The harness (browser.py) is checked first on tiny pages, so a report test that
passes means a clean page, not a blind browser.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from browser import colours, missing, open_page
from conftest import MODELS, ROOT
from onnxsplit.manifest import load_manifest
from onnxsplit.planfile import load_plan
from onnxsplit.runtime.benchfile import load_bench

needs_browser = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def _page(tmp_path, body: str, name: str = "page.html"):
    path = tmp_path / name
    path.write_text(f"<!doctype html><html data-report='test'><head><meta charset='utf-8'></head><body>{body}"
                    "</body></html>")
    return path


@needs_browser
def test_a_clean_page_is_clean_and_its_fields_are_read(tmp_path):
    path = _page(tmp_path, "<h1 style='color:#c33'>Plan</h1><p id='x' data-field='plan.value' data-value='1.23456'>"
                           "1.23 ms <span style='display:none'>hidden</span></p>"
                           "<svg width='60' height='20'>"
                           "<text data-field='bottleneck' data-value='2' y='15'>2</text></svg>"
                           "<img alt='dot' src='data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22/%3E'>")
    visit = open_page(path, screenshot=tmp_path / "shot.png")
    assert visit.problems == ()
    assert visit.root == {"data-report": "test"}
    assert visit.ids == ("x",)
    [value] = visit.values("plan.value")
    assert (value.value, value.text) == ("1.23456", "1.23 ms")  # hidden text is not visible text
    [drawn] = visit.values("bottleneck")
    assert (drawn.value, drawn.text) == ("2", "2")
    assert visit.screenshot.read_bytes().startswith(b"\x89PNG")
    assert colours(visit.screenshot) > 2


@needs_browser
def test_a_console_error_and_a_script_error_are_caught(tmp_path):
    script = "<script>console.error('drawn wrong'); console.log('fine'); notDefined();</script>"
    visit = open_page(_page(tmp_path, script))
    assert visit.console_errors == ("drawn wrong",)
    assert len(visit.page_errors) == 1 and "notDefined" in visit.page_errors[0]
    assert len(visit.problems) == 2


@needs_browser
def test_every_resource_the_page_loads_is_caught_and_never_fetched(tmp_path):
    (tmp_path / "local.js").write_text("console.log('loaded')")
    visit = open_page(_page(tmp_path, "<img src='http://example.com/logo.png'>"
                                      "<link rel='stylesheet' href='https://fonts.example.com/font.css'>"
                                      "<script src='local.js'></script>"))
    assert set(visit.requests) == {"http://example.com/logo.png", "https://fonts.example.com/font.css",
                                   (tmp_path / "local.js").as_uri()}
    assert set(visit.failed_requests) == set(visit.requests)  # blocked, so the test never reaches the network
    assert visit.problems


@needs_browser
def test_a_blank_page_has_a_blank_screenshot(tmp_path):
    visit = open_page(_page(tmp_path, ""), screenshot=tmp_path / "blank.png", full_page=False)
    assert visit.problems == () and visit.fields == ()
    assert colours(visit.screenshot) == 1


def test_the_system_setup_is_quiet_when_everything_is_there():
    done = subprocess.run([str(ROOT / "tools" / "setup_test_system.sh"), "--check"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip())
    assert (done.stdout, done.stderr) == ("", "")


# ---------------------------------------------------------------------------
# The real report: the bundled transformer split in four, benchmarked, opened.

STAGE_KEYS = ("device", "device_kind", "nodes", "compute_ms", "receive_ms", "send_ms", "load_ms", "weight_bytes",
              "activation_peak_bytes")
BENCH_KEYS = ("measured_ms", "predicted_ms", "busy", "starved", "blocked")

# What one displayed unit is worth in the field's own unit; KB/MB/GB are read both ways (1000 and 1024).
TIME_UNITS = {"": (1.0,), "ms": (1.0,), "s": (1e3,), "µs": (1e-3,), "us": (1e-3,), "ns": (1e-6,)}
BYTE_UNITS = {"": (1.0,), "b": (1.0,), "byte": (1.0,), "bytes": (1.0,), "kb": (1e3, 2**10), "kib": (2**10,),
              "mb": (1e6, 2**20), "mib": (2**20,), "gb": (1e9, 2**30), "gib": (2**30,), "tb": (1e12, 2**40),
              "tib": (2**40,)}
FRACTION_UNITS = {"": (1.0,), "%": (0.01,)}
RATE_UNITS = {"": (1.0,), "k": (1e3,), "m": (1e6,)}

_NUMBER = re.compile(r"(?<![\w.])([-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(%|[A-Za-zµ]*)")


def _units(key: str) -> dict[str, tuple[float, ...]] | None:
    """How the field's value may be written for people; None for a value shown as it is (names, indices)."""
    if key.endswith("_ms") or key in ("plan.value", "plan.lower_bound"):
        return TIME_UNITS
    if key.endswith(("_bytes", ".bytes_per_sample")):
        return BYTE_UNITS
    if key.endswith((".busy", ".starved", ".blocked")) or key == "plan.gap":
        return FRACTION_UNITS
    if key.endswith("samples_per_s"):
        return RATE_UNITS
    return None


def shows(text: str, key: str, value) -> bool:
    """Whether ``text`` shows ``value`` as people read it: some number in it, in some unit the field may use,
    equals the value to within the last digit shown."""
    if isinstance(value, str):
        return value in text
    if value is None:
        return bool(text)
    if isinstance(value, float) and math.isinf(value):
        return "∞" in text or "inf" in text.lower()
    units = _units(key)
    if units is None:  # an index or a count, shown as it is
        return str(value) in re.findall(r"\d+", text)
    for number, unit in _NUMBER.findall(text):
        digits = number.replace(",", "")
        mantissa = digits.lower().split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        exponent = int(digits.lower().split("e")[1]) if "e" in digits.lower() else 0
        half_step = 0.5 * 10.0 ** (exponent - decimals)
        # A word the field's units do not know ("samples", "stage") is not a unit: the number stands alone.
        scales = units.get(unit) or units.get(unit.lower()) or units[""]
        for scale in scales:
            if abs(float(digits) * scale - value) <= half_step * scale * (1 + 1e-9) + 1e-12 * abs(value):
                return True
    return False


def expected_fields(manifest, plan, bench) -> dict[str, object]:
    """Every contract key the page must carry, with the value read from the split's files and the bench file."""
    fields: dict[str, object] = {}
    for stage in manifest.stages:
        k = stage.index
        fields.update({
            f"stage.{k}.device": stage.device, f"stage.{k}.device_kind": stage.device_kind,
            f"stage.{k}.nodes": stage.nodes, f"stage.{k}.compute_ms": stage.predicted.compute_ms,
            f"stage.{k}.receive_ms": stage.predicted.receive_ms, f"stage.{k}.send_ms": stage.predicted.send_ms,
            f"stage.{k}.load_ms": stage.predicted.load_ms, f"stage.{k}.weight_bytes": stage.weight_bytes,
            f"stage.{k}.activation_peak_bytes": stage.activation_peak_bytes,
        })
    for handoff in manifest.handoffs:
        fields[f"handoff.{handoff.name}.bytes_per_sample"] = handoff.bytes_per_sample
    fields.update({
        "plan.value": plan.value, "plan.lower_bound": plan.lower_bound, "plan.gap": plan.gap,
        "plan.solver": plan.solver.value, "plan.objective": plan.objective.value,
        "manifest.predicted_bottleneck_ms": manifest.predicted_bottleneck_ms,
    })
    for stage in bench.stages:
        for name in BENCH_KEYS:
            fields[f"bench.stage.{stage.index}.{name}"] = getattr(stage, name)
    fields["bench.pipeline.samples_per_s"] = bench.pipeline.samples_per_s
    return fields


def _cli(*argv) -> str:
    done = subprocess.run([sys.executable, "-m", "onnxsplit", *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The transformer split in four, benchmarked for real, reported, and opened once for every test below."""
    work = tmp_path_factory.mktemp("report")
    out = work / "split"
    _cli("split", MODELS / "transformer.onnx", "--devices", 4, "--input-shape", "input_ids:4x32", "-o", out)
    bench_file = work / "bench.json"
    bench_file.write_text(_cli("bench", out, "--seconds", 1, "--rounds", 1, "--json"))
    html = work / "report.html"
    _cli("report", out, "-o", html, "--bench", bench_file)
    visit = open_page(html, screenshot=work / "report.png")
    return out, bench_file, html, visit


@needs_browser
def test_the_report_renders_without_errors_or_requests(report):
    _, _, html, visit = report
    assert visit.problems == ()
    assert visit.root.get("data-report") == "onnxsplit"
    assert re.search(r"<script[^>]*\bsrc=|<link[^>]*\bhref=|\bsrc=[\"']https?:", html.read_text()) is None


@needs_browser
def test_the_report_has_every_section(report):
    _, bench_file, _, visit = report
    for section in ("dag", "stages", "solver", "bench", "slowest"):
        assert section in visit.ids, section
    assert ("timeline" in visit.ids) == bool(load_bench(bench_file).timeline)


@needs_browser
def test_the_screenshot_is_a_picture(report):
    visit = report[3]
    from PIL import Image

    with Image.open(visit.screenshot) as image:
        assert image.format == "PNG" and image.width == 1200 and image.height > 900
    assert colours(visit.screenshot) > 32


@needs_browser
def test_every_figure_equals_the_split_and_bench_files(report):
    out, bench_file, _, visit = report
    manifest = load_manifest(out)
    expected = expected_fields(manifest, load_plan(manifest.plan_path()), load_bench(bench_file))
    expected["bottleneck"] = None  # checked below: any stage whose predicted load is the largest
    assert len(manifest.stages) == 4 and manifest.handoffs

    missing_keys = sorted(set(expected) - {f.key for f in visit.fields})
    assert missing_keys == [], missing_keys
    wrong = []
    for key, value in expected.items():
        found = visit.values(key)
        raw = {f.value for f in found}
        assert len(raw) == 1, f"{key} carries different values: {sorted(map(str, raw))}"
        got = json.loads(raw.pop())
        if key == "bottleneck":
            loads = [s.predicted.load_ms for s in manifest.stages]
            assert isinstance(got, int) and loads[got] == max(loads), (got, loads)
            value = got
        elif isinstance(value, float) and not math.isfinite(value) and got is None:
            pass  # JSON has no infinity: null stands for it
        elif got != value or type(got) is not type(value):
            wrong.append(f"{key}: page {got!r}, files {value!r}")
            continue
        texts = [f.text for f in found if f.text]
        if not texts or not all(shows(t, key, value) for t in texts):
            wrong.append(f"{key}: {value!r} shown as {texts!r}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("text, key, value, ok", [
    ("1.23 ms", "stage.0.compute_ms", 1.2345, True),
    ("1.24 ms", "stage.0.compute_ms", 1.2345, False),
    ("1,234.6 µs", "stage.0.compute_ms", 1.23456, True),
    ("0.0012 s", "plan.value", 1.23456, True),
    ("12.1 KiB", "stage.1.weight_bytes", 12390, True),
    ("12.4 kB", "stage.1.weight_bytes", 12390, True),
    ("12,390 B", "stage.1.weight_bytes", 12390, True),
    ("13 MB", "stage.1.weight_bytes", 12390, False),
    ("73.4%", "bench.stage.2.busy", 0.7342, True),
    ("0.73", "bench.stage.2.busy", 0.7342, True),
    ("74%", "bench.stage.2.busy", 0.7342, False),
    ("1.8k samples/s", "bench.pipeline.samples_per_s", 1812.7, True),
    ("stage 2", "bottleneck", 2, True),
    ("stage 12", "bottleneck", 2, False),
    ("dp (exact)", "plan.solver", "dp", True),
    ("0%", "plan.gap", 0.0, True),
    ("1,813 samples/s", "bench.pipeline.samples_per_s", 1812.7, True),
    ("1,812 samples/s", "bench.pipeline.samples_per_s", 1812.7, False),
])
def test_shown_values_are_read_with_their_units(text, key, value, ok):
    assert shows(text, key, value) is ok


@needs_browser
@pytest.mark.slow
def test_a_10000_node_report_renders_cleanly(deep_transformer_split, tmp_path):
    """The condensed view of a deep transformer: a page of megabytes still renders, clean, with every figure."""
    _, out = deep_transformer_split
    html = tmp_path / "report.html"
    _cli("report", out, "-o", html, "--costs", "estimate")
    visit = open_page(html)
    assert visit.problems == ()
    manifest = load_manifest(out)
    keys = {f.key for f in visit.fields}
    for stage in manifest.stages:
        for name in STAGE_KEYS:
            assert f"stage.{stage.index}.{name}" in keys
    assert "bench" not in visit.ids and "timeline" not in visit.ids
