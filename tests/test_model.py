"""Loading a model: external data stays in the model's folder and is checked, and the "still matches its sha256" check."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import one_error_line, one_line, run_cli
from graphs import chain, f32, model, save
from onnx import TensorProto, helper

from onnxsplit.errors import ModelError
from onnxsplit.model import check_source, load_model, sha256_of


def test_check_source(tmp_path):
    path = save(chain(2), tmp_path / "m.onnx")
    digest = sha256_of(path)
    assert check_source(path, digest, what="this folder was split from") == path
    assert check_source(load_model(path), digest, what="the profile was measured on") == path.resolve()
    with pytest.raises(ModelError) as exc:
        check_source(path, "0" * 64, what="this folder was split from")
    message = str(exc.value)
    assert "is not the model this folder was split from" in message and "sha256" in message and "\n" not in message
    with pytest.raises(ModelError) as exc:
        check_source(load_model(path), "0" * 64, what="the profile was measured on")
    assert "the profile was measured on" in str(exc.value)
    with pytest.raises(ModelError) as exc:
        check_source(tmp_path / "moved.onnx", digest, what="this folder was split from")
    assert "moved.onnx: no such file" in str(exc.value) and "--" not in str(exc.value)
    path.write_bytes(path.read_bytes() + b"\x00")  # edited in place
    with pytest.raises(ModelError, match="sha256"):
        check_source(path, digest, what="this folder was split from")



# ---------------------------------------------------------------------------------------------
# External data


def _external_model(folder, location, *, offset=None, length=None, dims=(4,)):
    """A model whose weight W (float32, ``dims``) is stored externally at ``location``."""
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=list(dims))
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    if offset is not None:
        w.external_data.add(key="offset", value=str(offset))
    if length is not None:
        w.external_data.add(key="length", value=str(length))
    nodes = [helper.make_node("Add", ["x", "W"], ["y"], name="add")]
    m = model(nodes, [f32("x", list(dims))], [f32("y", list(dims))], [w])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save_model(m, str(path))
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    folder = tmp_path / "model"
    path = _external_model(folder, "w.bin")
    (folder / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    assert load_model(path).graph.initializer[0].name == "W"
    # A link that stays inside the folder is fine.
    (folder / "data").mkdir()
    os.replace(folder / "w.bin", folder / "data" / "w.bin")
    (folder / "w-link.bin").symlink_to(folder / "data" / "w.bin")
    assert load_model(_external_model(folder, "w-link.bin")).graph.initializer[0].name == "W"


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink", "dotdot-inside"])
def test_external_data_outside_the_folder_is_refused(tmp_path, where):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    location = {"dotdot": "../secret.bin", "absolute": str(outside), "symlink": "link.bin",
                "dotdot-inside": "sub/../../secret.bin"}[where]
    if where == "symlink":
        (folder / "link.bin").symlink_to(outside)
    path = _external_model(folder, location)
    with pytest.raises(ModelError) as exc:
        load_model(path)
    message = one_line(exc)
    assert "outside the model's folder" in message and "'W'" in message and "m.onnx" in message


def test_etc_passwd_is_refused_by_therun_cli(tmp_path, capsys):
    path = _external_model(tmp_path / "a" / "b" / "c", "../../../../../../../../etc/passwd")
    code, err = run_cli(["split", path, "--devices", 2, "--costs", "estimate", "-o", tmp_path / "out"], capsys)
    one_error_line(code, err, "outside the model's folder", "'W'")
    assert not (tmp_path / "out").exists()


def test_truncated_and_missing_external_data(tmp_path):
    folder = tmp_path / "model"
    path = _external_model(folder, "w.bin", offset=8, length=16)
    (folder / "w.bin").write_bytes(b"\0" * 20)  # 8 + 16 = 24 bytes needed
    with pytest.raises(ModelError) as exc:
        load_model(path)
    message = one_line(exc)
    assert "truncated" in message and "'W'" in message and "'w.bin'" in message and "20" in message
    # Without a length, the tensor's dims say how many bytes it needs.
    path = _external_model(folder, "w.bin", dims=(8,))
    (folder / "w.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelError) as exc:
        load_model(path)
    assert "truncated" in one_line(exc)
    (folder / "w.bin").write_bytes(b"\0" * 32)
    assert load_model(path)
    path = _external_model(folder, "nothing.bin")
    with pytest.raises(ModelError) as exc:
        load_model(path)
    message = one_line(exc)
    assert "'nothing.bin'" in message and "'W'" in message and "missing" in message
    path = _external_model(folder, "w.bin", offset="-3")
    with pytest.raises(ModelError) as exc:
        load_model(path)
    assert "offset" in one_line(exc)


def test_external_data_symlink_loop(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.bin").symlink_to(folder / "b.bin")
    (folder / "b.bin").symlink_to(folder / "a.bin")
    with pytest.raises(ModelError) as exc:
        load_model(_external_model(folder, "a.bin"))
    assert "'a.bin'" in one_line(exc)


def test_a_symlink_loop_as_the_model_path(tmp_path, capsys):
    (tmp_path / "m.onnx").symlink_to(tmp_path / "n.onnx")
    (tmp_path / "n.onnx").symlink_to(tmp_path / "m.onnx")
    with pytest.raises(ModelError) as exc:
        load_model(tmp_path / "m.onnx")
    assert "m.onnx" in one_line(exc) and "symlink loop" in one_line(exc)
    for command in (["split", tmp_path / "m.onnx", "--devices", 2, "--costs", "estimate", "-o", tmp_path / "out"],
                    ["profile", tmp_path / "m.onnx", "-o", tmp_path / "p.json"]):
        code, err = run_cli(command, capsys)
        one_error_line(code, err, "m.onnx", "symlink loop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "n.onnx"]
