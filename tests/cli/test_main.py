"""The command itself: --version, Ctrl-C, and where warnings go (what start-up imports: test_startup.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import MODELS, REFERENCE, ROOT
from onnxsplit.cli.main import main

BERT = REFERENCE / "layer_bert24_inference.json"


def test_version(capsys):
    from onnxsplit import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"onnxsplit {__version__}\n"


# -- Ctrl-C -----------------------------------------------------------------------------------------------------------

_ENTRY = "import sys; from onnxsplit.cli.main import main; sys.exit(main())"


def _interrupt(argv: list[str], *, after_import: str, delay: float, cache) -> tuple[int, list[str]]:
    """Run the command line in a fresh interpreter, send SIGINT ``delay`` s after ``after_import`` finished importing.

    ``-X importtime`` reports every import on stderr as it completes: the
    signal is timed from a known point in the program, not from process start
    (before our first line runs, Python itself would report the interrupt).
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), ONNXSPLIT_CACHE=str(cache))
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-c", _ENTRY, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("import time:") and line.split("|")[-1].strip() == after_import:
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [x for x in (*seen, *err.splitlines()) if x.strip() and not x.startswith("import time:")]
    return proc.returncode, [x.rstrip("\n") for x in lines]


@pytest.mark.parametrize("module", ["onnxsplit.cli.main", "onnxsplit.cli.split_cmd", "onnx", "onnxruntime"])
def test_ctrl_c_while_starting(tmp_path, module):
    """Interrupted at points of the start-up itself (right after each of these imports), not after a delay:
    a split of this model can finish within a fraction of a second on a fast machine."""
    argv = ["split", str(MODELS / "transformer.onnx"), "--input-shape", "input_ids:4x32", "-o", str(tmp_path / "out")]
    code, lines = _interrupt(argv, after_import=module, delay=0.0, cache=tmp_path / "cache")
    # A warning may come first (profiling on a busy machine says so); then the one line, and nothing else.
    lines = [x for x in lines if not x.startswith("onnxsplit: warning: ")]
    assert code == 130 and lines == ["onnxsplit: interrupted"], lines
    assert not (tmp_path / "out").exists()


# Pauses the start-up right after one module finishes importing, and says so on stderr: the interrupt then lands
# at that very point, however fast or slow the machine and however far the output pipe lags behind the process.
_PAUSE_AFTER = """
import importlib.util, sys, time

class _PauseAfter:
    def find_spec(self, name, path=None, target=None):
        if name != {module!r}:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            sys.stderr.write("PAUSED\\n")
            sys.stderr.flush()
            time.sleep(60)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _PauseAfter())
from onnxsplit.cli.main import main
sys.exit(main())
"""


@pytest.mark.parametrize("module", ["onnxsplit.cli.common", "onnxsplit.cli.split_cmd", "rich", "numpy", "onnx",
                                    "onnxruntime"])
def test_ctrl_c_at_a_pause_while_importing(tmp_path, module):
    """Interrupted while the start-up is held right after ``module`` is imported (the first fraction of a second)."""
    argv = ["split", str(MODELS / "transformer.onnx"), "--input-shape", "input_ids:4x32", "-o", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), ONNXSPLIT_CACHE=str(tmp_path / "cache"))
    if module == "rich":
        # On a pipe no spinner is drawn and rich loads only for the final table: stand in for a user's terminal.
        env["TTY_COMPATIBLE"] = "1"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSE_AFTER.format(module=module), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert first == "PAUSED\n", first + proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "onnxsplit: interrupted\n", err
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_a_split(tmp_path):
    argv = ["split", str(MODELS / "transformer.onnx"), "--input-shape", "input_ids:4x32", "-o", str(tmp_path / "out")]
    code, lines = _interrupt(argv, after_import="onnxsplit.splitting", delay=0.2, cache=tmp_path / "cache")
    lines = [x for x in lines if not x.startswith("onnxsplit: warning: ")]
    assert code == 130 and len(lines) == 1 and lines[0].startswith("onnxsplit: interrupted"), lines
    if lines[0] == "onnxsplit: interrupted":
        assert not (tmp_path / "out").exists()
    else:  # the interrupt came late: the split had been put in place
        assert (tmp_path / "out" / "manifest.json").exists() and "completed" in lines[0]


def test_ctrl_c_during_solve(tmp_path):
    code, lines = _interrupt(["solve", str(BERT), "--solver", "ip", "--time-limit", "30"],
                             after_import="onnxsplit.solve.select", delay=0.3, cache=tmp_path / "cache")
    assert code == 130 and lines == ["onnxsplit: interrupted"], lines


def test_ctrl_c_after_the_split_is_in_place_says_so(tmp_path, monkeypatch, capsys):
    """An interrupt after the folder is in place (here: while the table prints) says the split completed."""
    from onnxsplit.cli import split_cmd

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(split_cmd, "_print_tables", interrupted)
    out = tmp_path / "out"
    code = main(["split", str(MODELS / "transformer.onnx"), "--input-shape", "input_ids:4x32", "--costs", "estimate",
                 "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 130 and err == f"onnxsplit: interrupted; the split in {out} had completed"
    assert (out / "manifest.json").exists()


def test_ctrl_c_before_the_split_is_in_place_says_interrupted(tmp_path, monkeypatch, capsys):
    import onnxsplit.splitting

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnxsplit.splitting, "split", interrupted)
    code = main(["split", str(MODELS / "transformer.onnx"), "-o", str(tmp_path / "out")])
    assert code == 130 and capsys.readouterr().err.strip() == "onnxsplit: interrupted"


# -- warnings ---------------------------------------------------------------------------------------------------------


def test_logged_and_python_warnings_share_the_format(tmp_path, monkeypatch, capsys):
    import logging
    import warnings

    from onnxsplit.cli import solve_cmd

    real = solve_cmd.run

    def noisy(args):
        logging.getLogger("onnxsplit.solve").warning("a logged warning")
        warnings.warn("a python\nwarning", UserWarning)
        return real(args)

    monkeypatch.setattr(solve_cmd, "run", noisy)
    assert main(["solve", str(BERT), "--solver", "greedy", "--json"]) == 0
    printed = capsys.readouterr()
    json.loads(printed.out)
    assert printed.err.splitlines() == ["onnxsplit: warning: a logged warning", "onnxsplit: warning: a python warning"]
