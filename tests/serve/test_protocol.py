"""The KServe v2 messages: requests checked against the model, responses as tritonclient reads them."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

from onnxsplit.errors import ModelError
from onnxsplit.manifest import TensorSpec
from onnxsplit.serve.protocol import (
    InferRequest,
    ProtocolError,
    check_servable,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
    protocol_shape,
)

INPUTS = (TensorSpec("x", "float32", ("batch", 4)), TensorSpec("k", "int64", ("batch", 1)),
          TensorSpec("m", "bool", ("batch",)))
OUTPUTS = ("y", "flag")


def _request(*items, parameters=None, outputs=None) -> dict:
    doc: dict = {"inputs": list(items)}
    if parameters is not None:
        doc["parameters"] = parameters
    if outputs is not None:
        doc["outputs"] = outputs
    return doc


def _json_input(name, datatype, array):
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}


def _arrays(n=2):
    rng = np.random.default_rng(n)
    return (rng.uniform(-1, 1, (n, 4)).astype(np.float32), rng.integers(-5, 5, (n, 1)),
            rng.integers(0, 2, (n,)).astype(bool))


def _parse(doc, binary=b""):
    header = json.dumps(doc).encode()
    if binary:
        return parse_infer_request(header + binary, header_length=len(header), inputs=INPUTS, outputs=OUTPUTS)
    return parse_infer_request(header, header_length=None, inputs=INPUTS, outputs=OUTPUTS)


def test_json_request_gives_the_arrays_in_the_models_order():
    x, k, m = _arrays()
    req = _parse(_request(_json_input("m", "BOOL", m), _json_input("x", "FP32", x), _json_input("k", "INT64", k)))
    assert list(req.feeds) == ["x", "k", "m"]
    np.testing.assert_array_equal(req.feeds["x"], x)
    np.testing.assert_array_equal(req.feeds["k"], k)
    np.testing.assert_array_equal(req.feeds["m"], m)
    assert req.feeds["x"].dtype == np.float32 and req.feeds["k"].dtype == np.int64 and req.feeds["m"].dtype == bool
    assert req.outputs == OUTPUTS and req.binary == frozenset()


def test_nested_json_data_is_accepted():
    x, k, m = _arrays()
    item = {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.tolist()}
    req = _parse(_request(item, _json_input("k", "INT64", k), _json_input("m", "BOOL", m)))
    np.testing.assert_array_equal(req.feeds["x"], x)


def test_binary_request_is_read_in_the_order_the_json_lists_the_inputs():
    x, k, m = _arrays(3)
    items = [{"name": n, "datatype": d, "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
             for n, d, a in (("k", "INT64", k), ("x", "FP32", x), ("m", "BOOL", m))]
    req = _parse(_request(*items), k.tobytes() + x.tobytes() + m.tobytes())
    np.testing.assert_array_equal(req.feeds["x"], x)
    np.testing.assert_array_equal(req.feeds["k"], k)
    np.testing.assert_array_equal(req.feeds["m"], m)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["inputs"].append({"name": "z", "datatype": "FP32", "shape": [1], "data": [0]}), "unknown input 'z'"),
    (lambda d: d["inputs"].pop(), "missing input 'm'"),
    (lambda d: d["inputs"][0].update(datatype="FP64"), "datatype FP64, expected FP32"),
    (lambda d: d["inputs"][0].update(shape=[2, 5], data=[0.0] * 10), "does not fit the model's [batch, 4]"),
    (lambda d: d["inputs"][0].update(shape=[8]), "does not fit the model's [batch, 4]"),
    (lambda d: d["inputs"][0].update(data=[0.0] * 7), "7 values, expected 8"),
    (lambda d: d["inputs"][1].update(data=[0.5, 1]), "without fractions"),
    (lambda d: d["inputs"][1].update(data=[2 ** 63, 1]), "outside the range of INT64"),
    (lambda d: d["inputs"][2].update(data=[1, 0]), "true or false"),
    (lambda d: d["inputs"][0].update(data=[[0.0, 1.0], [2.0]]), "3 values, expected 8"),
    (lambda d: d["inputs"][0].update(data=["1.5"] * 8), "data of FP32 must be numbers"),
    (lambda d: d["inputs"][0].update(shape=[3, 4], data=[0.0] * 12), "dim 'batch' is 3 in input 'x' but 2"),
    (lambda d: d["inputs"].append(dict(d["inputs"][0])), "given twice"),
    (lambda d: d["inputs"][0].pop("data"), "neither data nor binary_data_size"),
    (lambda d: d["inputs"][0].update(shape=[-2, 4]), "shape must be a list of whole numbers"),
    (lambda d: d.update(outputs=[{"name": "nope"}]), "unknown output 'nope'"),
    (lambda d: d.update(inputs={}), "inputs must be a list"),
    (lambda d: d.update(id=3), "id must be a string"),
])
def test_requests_that_do_not_fit_the_model_are_refused_with_400_naming_the_fault(mutate, message):
    x, k, m = _arrays()
    doc = _request(_json_input("x", "FP32", x), _json_input("k", "INT64", k), _json_input("m", "BOOL", m))
    mutate(doc)
    with pytest.raises(ProtocolError, match=re.escape(message)) as info:
        _parse(doc)
    assert info.value.status == 400


@pytest.mark.parametrize("body, header_length, message", [
    (b"garbage", None, "not valid JSON"),
    (b"\xff\xfe", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object"),
    (b"{}", 10, "does not fit a body of 2 bytes"),
    (b"{}", None, "no inputs list"),
])
def test_bodies_that_are_not_requests_are_refused(body, header_length, message):
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(body, header_length=header_length, inputs=INPUTS, outputs=OUTPUTS)


def test_binary_sizes_must_add_up():
    x, k, m = _arrays()
    items = [{"name": n, "datatype": d, "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
             for n, d, a in (("x", "FP32", x), ("k", "INT64", k), ("m", "BOOL", m))]
    with pytest.raises(ProtocolError, match="runs past the end"):
        _parse(_request(*items), x.tobytes() + k.tobytes())
    with pytest.raises(ProtocolError, match="1 bytes of binary data follow"):
        _parse(_request(*items), x.tobytes() + k.tobytes() + m.tobytes() + b"\0")
    items[0]["parameters"]["binary_data_size"] = 4
    with pytest.raises(ProtocolError, match="4 bytes of binary data, expected 32"):
        _parse(_request(*items), x.tobytes()[:4] + k.tobytes() + m.tobytes())


def test_bytes_tensors_in_json_and_binary():
    inputs = (TensorSpec("s", "str", ("n",)),)
    words = ["a", "héllo", ""]
    doc = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3], "data": words}]}
    req = parse_infer_request(json.dumps(doc).encode(), header_length=None, inputs=inputs, outputs=())
    assert req.feeds["s"].tolist() == words
    raw = b"".join(struct.pack("<I", len(w.encode())) + w.encode() for w in words)
    doc = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(raw)}}]}
    header = json.dumps(doc).encode()
    req = parse_infer_request(header + raw, header_length=len(header), inputs=inputs, outputs=())
    assert req.feeds["s"].tolist() == words
    with pytest.raises(ProtocolError, match="2 BYTES elements, expected 3"):
        doc["inputs"][0]["parameters"]["binary_data_size"] = len(raw) - 4
        header = json.dumps(doc).encode()
        parse_infer_request(header + raw[:-4], header_length=len(header), inputs=inputs, outputs=())


def test_responses_read_back_with_tritonclient():
    from tritonclient.http import InferResult

    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    flag = np.array([True, False])
    results = {"y": y, "flag": flag}
    for binary in (frozenset(), frozenset({"y"}), frozenset(OUTPUTS)):
        req = InferRequest("r1", {}, OUTPUTS, binary)
        body, header_length = encode_infer_response(req, results, model_name="m", model_version="1")
        assert (header_length is None) == (not binary)
        parsed = InferResult.from_response_body(body, header_length=header_length)
        np.testing.assert_array_equal(parsed.as_numpy("y"), y)
        np.testing.assert_array_equal(parsed.as_numpy("flag"), flag)
        assert parsed.get_response()["id"] == "r1"


def test_outputs_asked_for_come_back_alone_binary_as_asked():
    x, k, m = _arrays()
    doc = _request(_json_input("x", "FP32", x), _json_input("k", "INT64", k), _json_input("m", "BOOL", m),
                   parameters={"binary_data_output": True}, outputs=[{"name": "flag"},
                                                                     {"name": "y", "parameters": {"binary_data": False}}])
    req = _parse(doc)
    assert req.outputs == ("flag", "y") and req.binary == frozenset({"flag"})


def test_metadata_names_the_protocols_datatypes_and_minus_one_for_symbolic_dims():
    meta = model_metadata("m", INPUTS, (TensorSpec("y", "float16", ("batch", None, 3)),), version="1",
                          platform="onnxsplit")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                              {"name": "k", "datatype": "INT64", "shape": [-1, 1]},
                              {"name": "m", "datatype": "BOOL", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP16", "shape": [-1, -1, 3]}]
    assert protocol_shape(None) == [-1]


def test_a_model_the_protocol_cannot_carry_is_refused():
    with pytest.raises(ModelError, match="input 'c' has dtype complex64"):
        check_servable((TensorSpec("c", "complex64", (2,)),), (), where="out")
    with pytest.raises(ModelError, match="output 's' has dtype seq\\(float32\\)"):
        check_servable(INPUTS, (TensorSpec("s", "seq(float32)", None),), where="out")


@pytest.mark.parametrize("dtype, datatype", [("float16", "FP16"), ("uint8", "UINT8"), ("int32", "INT32"),
                                             ("float64", "FP64")])
def test_every_numeric_datatype_round_trips_as_json_and_binary(dtype, datatype):
    from tritonclient.http import InferResult

    inputs = (TensorSpec("a", dtype, ("n", 3)),)
    array = (np.arange(6) * 3 % 7).reshape(2, 3).astype(dtype)
    as_json = {"inputs": [{"name": "a", "datatype": datatype, "shape": [2, 3], "data": array.ravel().tolist()}]}
    as_binary = {"inputs": [{"name": "a", "datatype": datatype, "shape": [2, 3],
                             "parameters": {"binary_data_size": array.nbytes}}]}
    header = json.dumps(as_binary).encode()
    for req in (parse_infer_request(json.dumps(as_json).encode(), header_length=None, inputs=inputs, outputs=("a",)),
                parse_infer_request(header + array.tobytes(), header_length=len(header), inputs=inputs,
                                    outputs=("a",))):
        assert req.feeds["a"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(req.feeds["a"], array)
        for binary in (frozenset(), frozenset({"a"})):
            body, length = encode_infer_response(InferRequest(None, {}, ("a",), binary), req.feeds, model_name="m",
                                                 model_version="1")
            back = InferResult.from_response_body(body, header_length=length).as_numpy("a")
            assert back.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(back, array)
