"""`onnxsplit report` and `split --report`: a page written whole, or one error line and nothing written."""

from __future__ import annotations


import pytest

from conftest import chain_in_three, one_error_line, run_cli

pytest.importorskip("graphviz")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A small model, a 3-stage plan of it, and its split (estimated costs)."""
    return chain_in_three(tmp_path_factory.mktemp("chain"), costs="estimate")


def test_report_writes_the_page(chain, tmp_path, capsys):
    _, _, out = chain
    page = tmp_path / "r.html"
    code, err = run_cli(["report", out, "-o", page, "--costs", "estimate"], capsys)
    assert code == 0, err
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and 'data-report="onnxsplit"' in text


def test_an_existing_page_needs_force(chain, tmp_path, capsys):
    _, _, out = chain
    page = tmp_path / "r.html"
    page.write_text("mine")
    code, err = run_cli(["report", out, "-o", page, "--costs", "estimate"], capsys)
    one_error_line(code, err, str(page), "--force")
    assert page.read_text() == "mine"
    code, err = run_cli(["report", out, "-o", page, "--costs", "estimate", "--force"], capsys)
    assert code == 0, err
    assert page.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("problem", ["no split", "damaged", "bench", "folder", "dot", "memory", "devices"])
def test_errors_are_one_line_and_write_nothing(chain, tmp_path, capsys, monkeypatch, problem):
    _, _, out = chain
    pages = tmp_path / "pages"
    pages.mkdir()
    argv = ["report", out, "-o", pages / "r.html", "--costs", "estimate"]
    needle = ""
    if problem == "no split":
        argv[1], needle = tmp_path / "nowhere", "not a split folder"
    elif problem == "damaged":
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "manifest.json").write_text("{not json")
        argv[1], needle = bad, "manifest.json"
    elif problem == "bench":
        bench = tmp_path / "bench.json"
        bench.write_text('{"stages": []}')
        argv += ["--bench", bench]
        needle = str(bench)
    elif problem == "folder":
        argv[3], needle = tmp_path / "missing" / "r.html", "does not exist"
    elif problem == "dot":
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        needle = "Graphviz's dot"
    elif problem == "memory":
        argv += ["--device-memory", "8G"]
        needle = "--device-memory"
    elif problem == "devices":
        argv += ["--devices", "2"]
        needle = "2 devices"
    code, err = run_cli(argv, capsys)
    one_error_line(code, err, needle)
    assert list(pages.iterdir()) == []


def test_devices_show_their_memory(chain, tmp_path, capsys):
    _, _, out = chain
    page = tmp_path / "r.html"
    code, err = run_cli(["report", out, "-o", page, "--costs", "estimate", "--devices", "3", "--device-memory",
                         "2G"], capsys)
    assert code == 0, err
    assert page.read_text().count("<td>2 GB</td>") == 3


def test_split_report(chain, tmp_path, capsys):
    src, plan, _ = chain
    out, page = tmp_path / "out", tmp_path / "plan.html"
    code, err = run_cli(["split", src, "--devices", "3", "--input-shape", "x:4x8", "--plan", plan,
                         "--costs", "estimate", "-o", out, "--report", page], capsys)
    assert code == 0, err
    assert (out / "manifest.json").is_file()
    text = page.read_text()
    # split knows its devices: each stage's memory is shown (unlimited here).
    assert 'data-report="onnxsplit"' in text and text.count("<td>unlimited</td>") == 3


def test_split_refuses_an_existing_report_before_splitting(chain, tmp_path, capsys):
    src, plan, _ = chain
    out, page = tmp_path / "out", tmp_path / "plan.html"
    page.write_text("mine")
    code, err = run_cli(["split", src, "--devices", "3", "--input-shape", "x:4x8", "--plan", plan,
                         "--costs", "estimate", "-o", out, "--report", page], capsys)
    one_error_line(code, err, "--report", "--force")
    assert not out.exists() and page.read_text() == "mine"
