"""Make the report screenshot the README shows: split the bundled transformer, bench it, report it, photograph it.

    python tools/report_screenshot.py docs/report.png [--html report.html] [--height 2000] [--bench-seconds 2]

The split, bench and report run as the README's commands do (``python -m
onnxsplit ...``) in a scratch folder, so the page names no local paths; the
page is opened in headless Chromium (Debian's /usr/bin/chromium, through
playwright) 1200 px wide, its top ``--height`` pixels kept, and the PNG
reduced to a palette so it stays small enough to sit in the repository
(under ``--max-kb``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "transformer.onnx"


def onnxsplit(*argv: object, cwd: Path) -> str:
    """Run one onnxsplit command of this checkout in ``cwd``; its stdout. A failure stops the script."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run([sys.executable, "-m", "onnxsplit", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=env)
    if done.returncode != 0:
        sys.exit(f"onnxsplit {' '.join(map(str, argv))} failed:\n{done.stderr.strip()}")
    return done.stdout


def shrink(src: Path, dst: Path, *, height: int, max_bytes: int) -> tuple[int, int, int, int]:
    """The top ``height`` pixels of ``src`` as a palette PNG at ``dst``, with as many colours as fit in
    ``max_bytes`` (256 down to 32); (width, height, colours, bytes)."""
    from PIL import Image

    with Image.open(src) as image:
        top = image.convert("RGB").crop((0, 0, image.width, min(height, image.height)))
    for colours in (256, 128, 64, 32):
        # Pages are flat colours and text: a palette loses almost nothing and saves most of the bytes.
        top.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            dst, format="PNG", optimize=True)
        if dst.stat().st_size <= max_bytes:
            break
    return top.width, top.height, colours, dst.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", type=Path, help="where the screenshot goes, e.g. docs/report.png")
    parser.add_argument("--html", type=Path, help="also keep the report page here")
    parser.add_argument("--height", type=int, default=2000, help="pixels of the page kept, from the top")
    parser.add_argument("--max-kb", type=int, default=400, help="the PNG's size limit in KB")
    parser.add_argument("--bench-seconds", type=float, default=2.0, help="length of the bench's measurement")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests" / "export"))
    from browser import WIDTH, missing, open_page  # the test suite's browser harness

    if (why := missing()) is not None:
        sys.exit(f"cannot take the screenshot: {why}")

    png = args.png.resolve()
    html = args.html.resolve() if args.html else None
    with tempfile.TemporaryDirectory(prefix="onnxsplit-screenshot-") as tmp:
        work = Path(tmp)
        # The page names the split folder and the model: run in a scratch folder with relative paths, so the
        # picture shows "transformer.onnx", not where this checkout happens to live.
        shutil.copy(MODEL, work / MODEL.name)
        onnxsplit("split", MODEL.name, "--devices", 4, "--input-shape", "input_ids:4x32", "-o", "split", cwd=work)
        (work / "bench.json").write_text(onnxsplit("bench", "split", "--seconds", args.bench_seconds, "--rounds", 1,
                                                   "--json", cwd=work))
        onnxsplit("report", "split", "-o", "report.html", "--bench", "bench.json", "--devices", 4, cwd=work)
        if html is not None:
            shutil.copy(work / "report.html", html)
        visit = open_page(work / "report.html", screenshot=work / "full.png", width=WIDTH)
        if visit.problems:
            sys.exit("the report did not render cleanly:\n" + "\n".join(visit.problems))
        png.parent.mkdir(parents=True, exist_ok=True)
        width, height, colours, size = shrink(work / "full.png", png, height=args.height,
                                              max_bytes=args.max_kb * 1000)
    print(f"{args.png}: {width}x{height} px, {colours} colours, {size / 1000:.0f} KB")
    if size > args.max_kb * 1000:
        print(f"warning: larger than {args.max_kb} KB even with {colours} colours; lower --height", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
