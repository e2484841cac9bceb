"""Trust in profile.json: a file malformed in any field, NaN included, is one ProfileError line."""

from __future__ import annotations

import json

import pytest

from graphs import chain, save
from onnxsplit.cli.main import main
from onnxsplit.model import load_model
from onnxsplit.profile.store import NodeTime, Profile, ProfileError, load_profile, profile_to_dict, save_profile


@pytest.fixture
def stored(tmp_path):
    m = load_model(save(chain(2), tmp_path / "m.onnx"))
    profile = Profile(model_sha256=m.sha256, input_shapes={"x": (4, 8)}, provider="CPUExecutionProvider",
                      provider_options={}, threads=1, ort_version="1.0", runs=3, warmup=1, end_to_end_ms=1.0,
                      nodes=tuple(NodeTime(n.name, n.op_type, 0.1, "measured") for n in m.graph.node))
    return profile_to_dict(profile)


def _broken(data: dict, path: str, value) -> dict:
    copy = json.loads(json.dumps(data))
    target = copy
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[int(keys[-1]) if isinstance(target, list) else keys[-1]] = value
    return copy


@pytest.mark.parametrize("field, value, needle", [
    ("end_to_end_ms", float("nan"), "NaN"),
    ("end_to_end_ms", float("inf"), "Infinity"),
    ("end_to_end_ms", -1.0, "'end_to_end_ms'"),
    ("end_to_end_ms", "1.0", "'end_to_end_ms'"),
    ("unattributed_ms", 10**400, "'unattributed_ms'"),
    ("unattributed_ms", None, "'unattributed_ms'"),
    ("threads", 0, "'threads'"),
    ("threads", 2.5, "'threads'"),
    ("threads", True, "'threads'"),
    ("runs", 0, "'runs'"),
    ("runs", "3", "'runs'"),
    ("warmup", -1, "'warmup'"),
    ("version", True, "version"),
    ("provider", "", "'provider'"),
    ("provider", 7, "'provider'"),
    ("model_sha256", [], "'model_sha256'"),
    ("input_shapes", [4, 8], "'input_shapes'"),
    ("input_shapes", {"x": [4, -8]}, "input shape of 'x'"),
    ("input_shapes", {"x": [4.0, 8]}, "input shape of 'x'"),
    ("provider_options", {"a": 1}, "provider_options"),
    ("nodes", {"a": 1}, "'nodes'"),
    ("nodes.0", "mm0", "node 0"),
    ("nodes.0.time_ms", float("nan"), "NaN"),
    ("nodes.0.time_ms", 1e400, "Infinity"),
    ("nodes.0.time_ms", "0.1", "'time_ms'"),
    ("nodes.0.name", "", "'name'"),
    ("nodes.0.name", None, "'name'"),
    ("nodes.0.op_type", 3, "'op_type'"),
    ("nodes.0.fused_with", [1], "fused_with"),
    ("nodes.1.name", "const", "listed twice"),
])
def test_malformed_fields_are_one_line(stored, tmp_path, field, value, needle):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(_broken(stored, field, value)))  # json writes NaN and Infinity as Python reads them
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and needle in message, message


def test_a_good_file_still_loads(stored, tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(stored))
    loaded = load_profile(path)
    assert save_profile(loaded, tmp_path / "again.json") and load_profile(tmp_path / "again.json") == loaded


@pytest.mark.parametrize("data", [b"\xff\xfe\x00binary", b"[" * 100000, b""])
def test_unreadable_files_are_one_line(tmp_path, data):
    path = tmp_path / "profile.json"
    path.write_bytes(data)
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_split_with_a_nan_profile_is_one_line(stored, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(_broken(stored, "nodes.0.time_ms", float("nan"))))
    code = main(["split", str(model), "--devices", "2", "--profile", str(path), "--input-shape", "x:4x8",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("onnxsplit: error: "), err
    assert "NaN" in err and not (tmp_path / "out").exists()
