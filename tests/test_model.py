"""The "original model still matches its sha256" check."""

from __future__ import annotations

import pytest

from graphs import chain, save
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
