"""onnxruntime's errors as one plain line."""

from __future__ import annotations

from onnxsplit.orterrors import ort_message


def test_ort_message_is_one_plain_line():
    class Fail(Exception):
        pass

    Fail.__module__ = "onnxruntime.capi.onnxruntime_pybind11_state"
    exc = Fail("[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/model.cc:256 "
               "onnxruntime::Model::Model(onnx::ModelProto&&, const std::string&) Unsupported model IR version: 99, "
               "max supported IR version: 11\n\x1b[1;31msecond line\x1b[m")
    assert ort_message(exc) == "Unsupported model IR version: 99, max supported IR version: 11"
