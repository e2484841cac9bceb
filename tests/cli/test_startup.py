"""What the command line imports on start-up: ``solve`` with the DP must not load onnx, onnxruntime or python-mip.

Each check runs the command line in a fresh interpreter (as a user's shell
starts it) and reads back ``sys.modules``. No timing is asserted here: the
start-up time is measured by benchmarks/startup_bench.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REFERENCE, ROOT

BERT = REFERENCE / "layer_bert24_inference.json"
HEAVY = {"onnx", "onnxruntime", "mip", "google"}  # google: protobuf, which only onnx needs

# Runs main(argv) and writes the imported modules on stderr's last line; stdout and stderr stay pipes, as in a script.
_PROBE = """
import json, sys
from onnxsplit.cli.main import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
sys.stderr.write("EXIT " + str(code) + "\\n")
sys.stderr.write("MODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""


def _run(argv: list[str]) -> tuple[int, set[str]]:
    """Exit code and the top-level packages a fresh interpreter has imported after running ``argv`` through main."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR"):  # rich would draw on the pipe as if on a terminal
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    lines = done.stderr.splitlines()
    code = int([x for x in lines if x.startswith("EXIT ")][-1].removeprefix("EXIT "))
    modules = json.loads([x for x in lines if x.startswith("MODULES ")][-1].removeprefix("MODULES "))
    return code, {m.split(".")[0] for m in modules}


def _reference_graphs() -> list:
    """Every cost graph of the reference folder (expert split files are not graphs); the training graphs, eight
    more processes that each solve a larger graph, marked slow."""
    names = sorted(p.name for p in REFERENCE.glob("*.json")
                   if not p.name.startswith("expert_") and p.name != "expected.json")
    return [pytest.param(name, marks=[pytest.mark.slow] if "_training" in name else []) for name in names]


def test_help_imports_nothing_heavy():
    code, top = _run(["--help"])
    assert code == 0
    assert not top & (HEAVY | {"numpy", "rich"}), sorted(top)


@pytest.mark.parametrize("extra", [[], ["--solver", "dp"]])
def test_solve_with_the_dp_needs_neither_onnx_nor_onnxruntime_nor_mip(extra):
    code, top = _run(["solve", str(BERT), "--format", "paper", *extra])
    assert code == 0
    assert not top & HEAVY, sorted(top)


@pytest.mark.parametrize("graph", _reference_graphs())
def test_solve_dp_on_every_reference_graph_imports_nothing_heavy(graph):
    code, top = _run(["solve", str(REFERENCE / graph), "--solver", "dp"])
    assert code == 0
    assert not top & HEAVY, sorted(top)


def test_solve_json_in_a_script_does_not_load_rich():
    """With stdout and stderr pipes no spinner is drawn and no table printed: rich is not needed at all."""
    code, top = _run(["solve", str(BERT), "--solver", "dp", "--json"])
    assert code == 0
    assert not top & (HEAVY | {"rich"}), sorted(top)
