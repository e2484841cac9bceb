"""The plan report as a reader sees it: opened in headless Chromium, every figure checked against the split's files.

The harness (browser.py) is checked first on tiny pages, so a report test that
passes means a clean page, not a blind browser.
"""

from __future__ import annotations

import subprocess

import pytest

from browser import colours, missing, open_page
from conftest import ROOT

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def _page(tmp_path, body: str, name: str = "page.html"):
    path = tmp_path / name
    path.write_text(f"<!doctype html><html data-report='test'><head><meta charset='utf-8'></head><body>{body}"
                    "</body></html>")
    return path


def test_a_clean_page_is_clean_and_its_fields_are_read(tmp_path):
    path = _page(tmp_path, "<h1 style='color:#c33'>Plan</h1><p id='x' data-field='plan.value' data-value='1.23456'>"
                           "1.23 ms <span style='display:none'>hidden</span></p>"
                           "<svg width='60' height='20'><text data-field='bottleneck' data-value='2' y='15'>2</text></svg>"
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


def test_a_console_error_and_a_script_error_are_caught(tmp_path):
    visit = open_page(_page(tmp_path, "<script>console.error('drawn wrong'); console.log('fine'); notDefined();</script>"))
    assert visit.console_errors == ("drawn wrong",)
    assert len(visit.page_errors) == 1 and "notDefined" in visit.page_errors[0]
    assert len(visit.problems) == 2


def test_every_resource_the_page_loads_is_caught_and_never_fetched(tmp_path):
    (tmp_path / "local.js").write_text("console.log('loaded')")
    visit = open_page(_page(tmp_path, "<img src='http://example.com/logo.png'>"
                                      "<link rel='stylesheet' href='https://fonts.example.com/font.css'>"
                                      "<script src='local.js'></script>"))
    assert set(visit.requests) == {"http://example.com/logo.png", "https://fonts.example.com/font.css",
                                   (tmp_path / "local.js").as_uri()}
    assert set(visit.failed_requests) == set(visit.requests)  # blocked, so the test never reaches the network
    assert visit.problems


def test_a_blank_page_has_a_blank_screenshot(tmp_path):
    visit = open_page(_page(tmp_path, ""), screenshot=tmp_path / "blank.png", full_page=False)
    assert visit.problems == () and visit.fields == ()
    assert colours(visit.screenshot) == 1


def test_the_system_setup_is_quiet_when_everything_is_there():
    done = subprocess.run([str(ROOT / "tools" / "setup_test_system.sh"), "--check"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip())
    assert (done.stdout, done.stderr) == ("", "")
