"""onnxruntime session options, built in one place."""

from __future__ import annotations

import numpy as np
import pytest

from graphs import chain, save
from onnxsplit.errors import UsageError
from onnxsplit.ortutil import make_session, session_options


def test_session_options(tmp_path):
    import onnxruntime as ort

    plain = session_options(threads=3)
    assert plain.intra_op_num_threads == 3 and plain.inter_op_num_threads == 1 and not plain.enable_profiling
    assert plain.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL and plain.log_severity_level == 3
    quiet = session_options(spin=False, log_severity=2)
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert quiet.log_severity_level == 2
    profiled = session_options(profile_prefix=tmp_path / "trace", optimized_model=tmp_path / "optimized.onnx",
                               external_folder=tmp_path)
    assert profiled.enable_profiling and profiled.profile_file_prefix == str(tmp_path / "trace")
    assert profiled.optimized_model_filepath == str(tmp_path / "optimized.onnx")
    assert profiled.get_session_config_entry(
        "session.optimized_model_external_initializers_file_name") == "optimized.data"
    assert profiled.get_session_config_entry(
        "session.model_external_initializers_file_folder_path") == str(tmp_path)


def test_make_session_runs_and_checks_the_provider(tmp_path):
    path = save(chain(2), tmp_path / "m.onnx")
    session = make_session(path, threads=2)
    (y,) = session.run(None, {"x": np.ones((2, 8), dtype=np.float32)})
    assert y.shape == (2, 8)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UsageError, match="'CUDAExecutionProvider' is not available here"):
            make_session(path, provider="CUDAExecutionProvider")
