from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
REFERENCE = ROOT / "tests" / "data" / "reference-graphs"

sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture(autouse=True, scope="session")
def _profile_cache(tmp_path_factory):
    """Profiles measured by the tests are cached for the run only, never in the user's home."""
    old = os.environ.get("ONNXSPLIT_CACHE")
    os.environ["ONNXSPLIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("ONNXSPLIT_CACHE", None)
    else:
        os.environ["ONNXSPLIT_CACHE"] = old


@pytest.fixture
def light():
    return LIGHT


def copy_split(src, dst):
    """A copy of the split folder ``src`` at ``dst`` whose manifest still finds the original model; returns
    (dst, the manifest as a dict). The source path is relative to the folder, so it is rewritten absolute."""
    from onnxsplit.manifest import load_manifest

    dst = Path(dst)
    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    doc["source"]["path"] = str(load_manifest(src).source_path())
    (dst / "manifest.json").write_text(json.dumps(doc, indent=2))
    return dst, doc


def split_and_check(model_path, outdir, devices, **kwargs):
    """Split, check every stage with the full checker, validate; return (result, report)."""
    from onnxsplit.splitting import split
    from onnxsplit.validation import validate

    result = split(model_path, outdir, devices=devices, **kwargs)
    for stage in result.manifest.stages:
        onnx.checker.check_model(str(Path(outdir) / stage.file), full_check=True)
    report = validate(outdir, check_handoffs=True)
    return result, report


@pytest.fixture
def immutable(tmp_path):
    """A folder even root cannot write into (chattr +i); skipped where the file system or the user cannot set it."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    try:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    except OSError:
        pytest.skip("no chattr here")
    if done.returncode != 0:
        pytest.skip(f"chattr +i refused: {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The raised error's message, which must be one non-empty line."""
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


def run_cli(argv, capsys) -> tuple[int, str]:
    """Run the command line in-process: its exit code and what it wrote on stderr."""
    from onnxsplit.cli.main import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def one_error_line(code, err, *needles) -> str:
    """Exit 1 and exactly one ``onnxsplit: error:`` line, last, with no traceback; it holds every needle."""
    assert code == 1, err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("onnxsplit: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert all(line.startswith("onnxsplit: ") for line in lines), err  # no traceback
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def chain_in_three(root, *, costs="measure"):
    """``graphs.chain(6)`` saved in ``root``, a plan cutting its nodes in 3 stages by node order, and its split
    (input x:4x8); returns (model path, plan path, split folder)."""
    import graphs
    from onnxsplit.splitting import split

    root = Path(root)
    model = graphs.chain(6)
    src = graphs.save(model, root / "chain.onnx")
    n = len(model.graph.node)
    plan = root / "plan.json"
    plan.write_text(json.dumps([3 * v // n for v in range(n)]))
    out = root / "split"
    split(src, out, devices=3, input_shapes={"x": (4, 8)}, plan=plan, costs=costs)
    return src, plan, out


@pytest.fixture(scope="session")
def deep_transformer_split(tmp_path_factory):
    """A generated transformer of more than 10,000 nodes split on 4 devices (estimated costs, input_ids:2x16);
    returns (its node count, the split folder). Made once for the slow tests that need a big model."""
    import make_models
    from onnxsplit.splitting import split

    root = tmp_path_factory.mktemp("deep")
    model = make_models.make_deep_transformer(56)
    assert len(model.graph.node) >= 10_000
    src = root / "deep_transformer.onnx"
    make_models.save(model, src)
    out = root / "split"
    split(src, out, devices=4, input_shapes={"input_ids": (2, 16)}, costs="estimate")
    return len(model.graph.node), out
