"""Open an HTML file in headless Chromium and say what a reader would get: errors, requests, figures, a picture.

The browser is Debian's ``/usr/bin/chromium`` driven through playwright, not
playwright's own download, so the test sees the browser a user of the
distribution has. Every request other than the page itself is blocked and
recorded: a self-contained page makes none, and a test must never reach the
network.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")

# Headless, no sandbox (tests run as root in containers), and nothing the browser would fetch on its own behalf.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")

WIDTH = 1200
HEIGHT = 900

# innerText is what a reader sees (hidden parts left out); SVG elements have only textContent.
_FIELDS_JS = """els => els.map(e => [e.getAttribute('data-field'), e.getAttribute('data-value'),
                                      (e.innerText === undefined ? e.textContent : e.innerText)])"""


@dataclass(frozen=True)
class Field:
    """One ``[data-field]`` element: its key, its ``data-value`` (raw JSON text) and its visible text."""

    key: str
    value: str | None
    text: str


@dataclass(frozen=True)
class Visit:
    """What one load of a page showed.

    ``requests`` are the URLs the page asked for besides itself (``data:`` URIs
    never leave the page, so they are not requests); each was blocked, so it
    is also in ``failed_requests``.
    """

    console_errors: tuple[str, ...]
    page_errors: tuple[str, ...]
    requests: tuple[str, ...]
    failed_requests: tuple[str, ...]
    root: dict[str, str]  # the <html> element's attributes
    ids: tuple[str, ...]  # every element id, in document order
    fields: tuple[Field, ...]
    screenshot: Path | None

    @property
    def problems(self) -> tuple[str, ...]:
        """Every console error, page error and request, one line each; empty for a clean page."""
        return (tuple(f"console error: {m}" for m in self.console_errors)
                + tuple(f"page error: {m}" for m in self.page_errors)
                + tuple(f"request: {u}" for u in self.requests)
                + tuple(f"failed request: {u}" for u in self.failed_requests if u not in self.requests))

    def values(self, key: str) -> tuple[Field, ...]:
        """Every element that carries ``key``."""
        return tuple(f for f in self.fields if f.key == key)


def missing() -> str | None:
    """Why pages cannot be opened here (no Chromium, no playwright), or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (tools/setup_test_system.sh installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def open_page(path: str | Path, *, screenshot: str | Path | None = None, width: int = WIDTH,
              height: int = HEIGHT, full_page: bool = True, timeout_s: float = 60.0) -> Visit:
    """Load the HTML file ``path`` in a fresh headless Chromium and report what it showed.

    Before: :func:`missing` returned None. After: when ``screenshot`` is given,
    a PNG of the page (the whole page with ``full_page``, else one
    ``width`` x ``height`` viewport) is there. The browser and its throwaway
    profile are gone when this returns.
    """
    from playwright.sync_api import sync_playwright

    page_url = Path(path).resolve().as_uri()
    console: list[str] = []
    errors: list[str] = []
    requests: list[str] = []
    failed: list[str] = []

    def route(r) -> None:
        if r.request.url == page_url:
            r.continue_()
        else:
            requests.append(r.request.url)
            r.abort()

    with tempfile.TemporaryDirectory(prefix="onnxsplit-chromium-") as profile, sync_playwright() as pw:
        # --headless is playwright's own (headless=True); the rest are passed as they are.
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=[f for f in FLAGS if f != "--headless"],
            viewport={"width": width, "height": height}, timeout=timeout_s * 1000)
        try:
            context.route("**/*", route)
            page = context.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(page_url, wait_until="load")
            root = page.evaluate("() => Object.fromEntries([...document.documentElement.attributes]"
                                 ".map(a => [a.name, a.value]))")
            ids = page.eval_on_selector_all("[id]", "els => els.map(e => e.id)")
            fields = page.eval_on_selector_all("[data-field]", _FIELDS_JS)
            shot = None
            if screenshot is not None:
                shot = Path(screenshot)
                page.screenshot(path=str(shot), full_page=full_page, type="png")
        finally:
            context.close()
    return Visit(console_errors=tuple(console), page_errors=tuple(errors), requests=tuple(requests),
                 failed_requests=tuple(failed), root=dict(root), ids=tuple(ids),
                 fields=tuple(Field(k, v, " ".join(t.split())) for k, v, t in fields), screenshot=shot)


def colours(png: str | Path, *, limit: int = 1 << 16) -> int:
    """How many distinct colours the image has (at most ``limit``): a blank page has one or two."""
    from PIL import Image

    with Image.open(png) as image:
        found = image.convert("RGB").getcolors(maxcolors=limit)
    return limit if found is None else len(found)
