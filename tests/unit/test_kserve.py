"""KServe v2 HTTP bodies <-> Triton gRPC messages (gateway.kserve)."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import msgspec
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from gateway import kserve
from gateway.errors import BackendError, InvalidInferenceRequest, InvalidJson, InvalidTensor

Client = triton_http.InferenceServerClient

# datatype -> (shape, JSON values in row-major order, numpy dtype)
SAMPLES: dict[str, tuple[list[int], list[Any], Any]] = {
    "BOOL": ([2, 2], [True, False, False, True], np.bool_),
    "UINT8": ([3], [0, 1, 255], np.uint8),
    "UINT16": ([3], [0, 1, 65535], np.uint16),
    "UINT32": ([3], [0, 1, 2**32 - 1], np.uint32),
    "UINT64": ([3], [0, 1, 2**64 - 1], np.uint64),
    "INT8": ([1, 3], [-128, 0, 127], np.int8),
    "INT16": ([3], [-(2**15), 0, 2**15 - 1], np.int16),
    "INT32": ([3], [-(2**31), 0, 2**31 - 1], np.int32),
    "INT64": ([2, 2], [-(2**63), -1, 0, 2**63 - 1], np.int64),
    "FP16": ([4], [0.5, -65504.0, 1.0009765625, 6.103515625e-05], np.float16),
    "FP32": ([2, 2], [1.5, -3.4028234663852886e38, 1.401298464324817e-45, 0.1], np.float32),
    "FP64": ([3], [0.1, 1.7976931348623157e308, -5e-324], np.float64),
    "BYTES": ([2, 2], ["héllo", "日本語", "", "emoji 🎉"], np.object_),
}
DATATYPES = list(SAMPLES)


def encode(doc: Any) -> bytes:
    return msgspec.json.encode(doc)


def parse(doc: Any, header_length: int | None = None, **limits: int) -> kserve.ParsedInfer:
    body = doc if isinstance(doc, bytes) else encode(doc)
    return kserve.parse_infer_request(
        body, model_name="m", model_version="3", header_length=header_length, **limits
    )


def one_input(datatype: str, shape: list[int], data: Any, name: str = "x") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def expected_array(datatype: str) -> np.ndarray[Any, Any]:
    shape, values, dtype = SAMPLES[datatype]
    if datatype == "BYTES":
        return np.array([v.encode() for v in values], dtype=np.object_).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def raw_of(array: np.ndarray[Any, Any]) -> bytes:
    if array.dtype == np.object_:
        mine = b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
        assert mine == serialize_byte_tensor(array).item()  # Triton's own serializer agrees
        return mine
    return array.tobytes()


def echo(parsed: kserve.ParsedInfer, request_id: str = "") -> service_pb2.ModelInferResponse:
    """What an identity model would answer: every input back as an output of the same name."""
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3", id=request_id)
    for tensor in parsed.request.inputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(parsed.request.raw_input_contents)
    return response


def read_back(body: bytes, header_length: int | None) -> Any:
    return Client.parse_response_body(body, header_length=header_length)


def as_bytes_array(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """tritonclient returns JSON BYTES as str objects and binary BYTES as bytes objects."""
    flat = [v.encode() if isinstance(v, str) else v for v in array.reshape(-1)]
    return np.array(flat, dtype=np.object_).reshape(array.shape)


def assert_same_array(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    assert got.shape == want.shape
    if want.dtype == np.object_:
        assert as_bytes_array(got).tolist() == want.tolist()
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def assert_json_data_equal(data: list[Any], datatype: str, values: list[Any]) -> None:
    """Float32/16 values come back as the exact float64 of the stored value (as Triton does)."""
    if datatype in ("FP16", "FP32"):
        dtype = SAMPLES[datatype][2]
        assert all(isinstance(v, float) for v in data)
        np.testing.assert_array_equal(np.array(data, dtype=dtype), np.array(values, dtype=dtype))
        assert data == np.array(values, dtype=dtype).tolist()
    else:
        assert data == values
        assert [type(v) for v in data] == [type(v) for v in values]


def param_dict(params: Any) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = (which, getattr(value, which))
    return out


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_survives_json_parse_echo_and_json_render(datatype: str) -> None:
    shape, values, _ = SAMPLES[datatype]
    parsed = parse(one_input(datatype, shape, values))

    tensor = parsed.request.inputs[0]
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("x", datatype, shape)
    assert parsed.request.raw_input_contents[0] == raw_of(expected_array(datatype))
    assert not tensor.HasField("contents")

    body, header_length = kserve.render_infer_response(echo(parsed), parsed.binary_outputs)
    assert header_length is None
    document = json.loads(body)
    (output,) = document["outputs"]
    data = output.pop("data")
    assert output == {"name": "x", "datatype": datatype, "shape": shape}
    assert_json_data_equal(data, datatype, values)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_survives_binary_render_read_by_tritonclient(datatype: str) -> None:
    shape, values, _ = SAMPLES[datatype]
    doc = one_input(datatype, shape, values)
    doc["outputs"] = [{"name": "x", "parameters": {"binary_data": True}}]
    parsed = parse(doc)
    assert parsed.binary_outputs == frozenset({"x"})

    body, header_length = kserve.render_infer_response(echo(parsed), parsed.binary_outputs)
    assert header_length is not None
    header = json.loads(body[:header_length])
    want = expected_array(datatype)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": len(raw_of(want))}
    assert "data" not in header["outputs"][0]
    assert body[header_length:] == raw_of(want)
    assert_same_array(read_back(body, header_length).as_numpy("x"), want)


def test_nested_data_packs_exactly_like_flat_data() -> None:
    flat = parse(one_input("INT32", [2, 3], [1, 2, 3, 4, 5, 6]))
    nested = parse(one_input("INT32", [2, 3], [[1, 2, 3], [4, 5, 6]]))
    spaced = parse(
        b'{"inputs":[{"name":"x","shape":[2,3],"datatype":"INT32",'
        b'"data":[ \n [1,2,3],\t[4,5,6] ]}]}'
    )
    want = np.arange(1, 7, dtype=np.int32).tobytes()
    assert flat.request.raw_input_contents[0] == want
    assert nested.request.raw_input_contents[0] == want
    assert spaced.request.raw_input_contents[0] == want


def test_three_dimensional_nested_data_is_row_major() -> None:
    values = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    parsed = parse(one_input("FP64", [2, 3, 4], values.tolist()))
    assert parsed.request.raw_input_contents[0] == values.tobytes()


@pytest.mark.parametrize("shape", [[], [1], [1, 1, 1]])
def test_scalar_data_is_accepted_for_single_element_shapes(shape: list[int]) -> None:
    parsed = parse(one_input("FP32", shape, 2.5))
    assert parsed.request.raw_input_contents[0] == np.float32(2.5).tobytes()
    assert list(parsed.request.inputs[0].shape) == shape


def test_zero_dimensional_tensor_also_accepts_a_one_element_list() -> None:
    parsed = parse(one_input("INT16", [], [-3]))
    assert parsed.request.raw_input_contents[0] == np.int16(-3).tobytes()
    assert list(parsed.request.inputs[0].shape) == []


def test_empty_tensor_round_trips() -> None:
    parsed = parse(one_input("FP32", [0, 3], []))
    assert parsed.request.raw_input_contents[0] == b""
    body, _ = kserve.render_infer_response(echo(parsed), parsed.binary_outputs)
    assert json.loads(body)["outputs"][0]["data"] == []


def test_json_integers_are_accepted_in_float_tensors() -> None:
    parsed = parse(one_input("FP32", [2], [1, -7]))
    assert parsed.request.raw_input_contents[0] == np.array([1, -7], np.float32).tobytes()


def test_strings_with_brackets_and_escapes_round_trip() -> None:
    values = ["[[[[" * 30, 'quote " and \\ backslash ]]}}', "\u0000nul"]
    parsed = parse(one_input("BYTES", [3], values))
    body, _ = kserve.render_infer_response(echo(parsed), parsed.binary_outputs)
    assert json.loads(body)["outputs"][0]["data"] == values


def test_tensor_at_the_element_limit_is_accepted() -> None:
    parsed = parse(one_input("UINT8", [2, 5], [0] * 10), max_elements=10)
    assert len(parsed.request.raw_input_contents[0]) == 10


# --------------------------------------------------------------------------- tritonclient interop


def client_input(datatype: str, binary: bool, name: str = "x") -> triton_http.InferInput:
    array = expected_array(datatype)
    tensor = triton_http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_tritonclient_bodies_parse_and_responses_read_back(
    datatype: str, binary_input: bool, binary_output: bool
) -> None:
    want = expected_array(datatype)
    body, json_size = Client.generate_request_body(
        [client_input(datatype, binary_input)],
        outputs=[triton_http.InferRequestedOutput("x", binary_data=binary_output)],
        request_id="req-7",
    )
    assert (json_size is not None) == binary_input

    parsed = parse(body, header_length=json_size)
    assert parsed.request.id == "req-7"
    assert parsed.request.model_name == "m"
    assert parsed.request.model_version == "3"
    assert list(parsed.request.inputs[0].shape) == list(want.shape)
    assert parsed.request.raw_input_contents[0] == raw_of(want)
    assert "binary_data_size" not in parsed.request.inputs[0].parameters
    assert [o.name for o in parsed.request.outputs] == ["x"]
    assert "binary_data" not in parsed.request.outputs[0].parameters
    assert parsed.binary_outputs == (frozenset({"x"}) if binary_output else frozenset())

    response_body, header_length = kserve.render_infer_response(
        echo(parsed, "req-7"), parsed.binary_outputs
    )
    assert (header_length is not None) == binary_output
    result = read_back(response_body, header_length)
    assert result.get_response()["id"] == "req-7"
    assert_same_array(result.as_numpy("x"), want)


def test_tritonclient_without_requested_outputs_gets_every_output_binary() -> None:
    inputs = [client_input("FP32", True, "a"), client_input("BYTES", False, "b")]
    body, json_size = Client.generate_request_body(inputs)
    parsed = parse(body, header_length=json_size)
    assert parsed.binary_outputs is True
    assert "binary_data_output" not in parsed.request.parameters
    assert len(parsed.request.outputs) == 0

    response_body, header_length = kserve.render_infer_response(echo(parsed), True)
    assert header_length is not None
    result = read_back(response_body, header_length)
    assert_same_array(result.as_numpy("a"), expected_array("FP32"))
    assert_same_array(result.as_numpy("b"), expected_array("BYTES"))


def test_tritonclient_parameters_and_sequence_fields_are_forwarded() -> None:
    body, json_size = Client.generate_request_body(
        [client_input("INT64", False)],
        outputs=[triton_http.InferRequestedOutput("x", binary_data=False, class_count=3)],
        sequence_id=42,
        sequence_start=True,
        priority=2,
        timeout=1500,
        parameters={"temperature": 0.25, "mode": "fast", "beam": 4, "greedy": False},
    )
    parsed = parse(body, header_length=json_size)
    assert param_dict(parsed.request.parameters) == {
        "sequence_id": ("int64_param", 42),
        "sequence_start": ("bool_param", True),
        "sequence_end": ("bool_param", False),
        "priority": ("int64_param", 2),
        "timeout": ("int64_param", 1500),
        "temperature": ("double_param", 0.25),
        "mode": ("string_param", "fast"),
        "beam": ("int64_param", 4),
        "greedy": ("bool_param", False),
    }
    assert param_dict(parsed.request.outputs[0].parameters) == {
        "classification": ("int64_param", 3)
    }


def test_tritonclient_mixed_binary_and_json_inputs_keep_input_order() -> None:
    inputs = [
        client_input("INT8", False, "a"),
        client_input("FP16", True, "b"),
        client_input("BOOL", False, "c"),
        client_input("BYTES", True, "d"),
        client_input("UINT64", True, "e"),
    ]
    body, json_size = Client.generate_request_body(
        inputs, outputs=[triton_http.InferRequestedOutput(n) for n in "abcde"]
    )
    parsed = parse(body, header_length=json_size)
    wanted = [expected_array(t) for t in ("INT8", "FP16", "BOOL", "BYTES", "UINT64")]
    assert list(parsed.request.raw_input_contents) == [raw_of(w) for w in wanted]
    assert parsed.binary_outputs == frozenset("abcde")
    result = read_back(*kserve.render_infer_response(echo(parsed), parsed.binary_outputs))
    for name, want in zip("abcde", wanted, strict=True):
        assert_same_array(result.as_numpy(name), want)


# --------------------------------------------------------------------------- request features


def test_multiple_inputs_and_outputs_are_converted_in_order() -> None:
    doc = {
        "id": "abc",
        "inputs": [
            {"name": "tokens", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]},
            {"name": "mask", "shape": [2, 3], "datatype": "BOOL", "data": [[True] * 3] * 2},
            {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
        ],
        "outputs": [
            {"name": "logits", "parameters": {"binary_data": True}},
            {"name": "labels", "parameters": {"binary_data": False, "classification": 2}},
            {"name": "text"},
        ],
    }
    parsed = parse(doc)
    request = parsed.request
    assert request.id == "abc"
    assert [t.name for t in request.inputs] == ["tokens", "mask", "prompt"]
    assert [t.datatype for t in request.inputs] == ["INT64", "BOOL", "BYTES"]
    assert list(request.raw_input_contents) == [
        np.arange(1, 7, dtype=np.int64).tobytes(),
        b"\x01" * 6,
        b"\x02\x00\x00\x00hi",
    ]
    assert [o.name for o in request.outputs] == ["logits", "labels", "text"]
    assert param_dict(request.outputs[1].parameters) == {"classification": ("int64_param", 2)}
    assert len(request.outputs[0].parameters) == 0
    assert parsed.binary_outputs == frozenset({"logits"})


def test_requested_output_subset_renders_binary_and_json_outputs_side_by_side() -> None:
    parsed = parse(
        {
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            "outputs": [
                {"name": "probs", "parameters": {"binary_data": True}},
                {"name": "label"},
            ],
        }
    )
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    response.outputs.add(name="label", datatype="BYTES", shape=[1])
    response.outputs.add(name="probs", datatype="FP32", shape=[1, 2])
    response.raw_output_contents.extend([b"\x03\x00\x00\x00cat", probs.tobytes()])

    body, header_length = kserve.render_infer_response(response, parsed.binary_outputs)
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["label", "probs"]
    assert header["outputs"][0]["data"] == ["cat"]
    result = read_back(body, header_length)
    np.testing.assert_array_equal(result.as_numpy("probs"), probs)
    assert result.as_numpy("label").tolist() == ["cat"]


def test_request_parameters_are_forwarded_with_matching_types() -> None:
    doc = one_input("FP32", [1], [1.0])
    doc["parameters"] = {
        "flag": True,
        "count": -5,
        "huge": 2**64 - 1,
        "edge": 2**63 - 1,
        "ratio": 0.5,
        "tag": "blue",
        "binary_data_output": False,
    }
    parsed = parse(doc)
    assert param_dict(parsed.request.parameters) == {
        "flag": ("bool_param", True),
        "count": ("int64_param", -5),
        "huge": ("uint64_param", 2**64 - 1),
        "edge": ("int64_param", 2**63 - 1),
        "ratio": ("double_param", 0.5),
        "tag": ("string_param", "blue"),
    }
    assert parsed.binary_outputs == frozenset()


def test_input_parameters_except_binary_data_size_are_forwarded() -> None:
    payload = np.array([1, 2], dtype=np.int32).tobytes()
    header = encode(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 8, "layout": "NHWC", "scale": 2},
                }
            ]
        }
    )
    parsed = parse(header + payload, header_length=len(header))
    assert param_dict(parsed.request.inputs[0].parameters) == {
        "layout": ("string_param", "NHWC"),
        "scale": ("int64_param", 2),
    }
    assert parsed.request.raw_input_contents[0] == payload


def test_binary_data_output_makes_every_output_binary() -> None:
    doc = one_input("FP32", [1], [1.0])
    doc["parameters"] = {"binary_data_output": True}
    doc["outputs"] = [{"name": "a"}, {"name": "b"}]
    assert parse(doc).binary_outputs is True


def test_per_output_binary_data_false_overrides_binary_data_output() -> None:
    doc = one_input("FP32", [1], [1.0])
    doc["parameters"] = {"binary_data_output": True}
    doc["outputs"] = [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}]
    assert parse(doc).binary_outputs == frozenset({"b"})


def test_without_binary_request_every_output_is_json() -> None:
    parsed = parse(one_input("FP32", [1], [1.0]))
    assert parsed.binary_outputs == frozenset()
    body, header_length = kserve.render_infer_response(echo(parsed), parsed.binary_outputs)
    assert header_length is None
    assert json.loads(body)["outputs"][0]["data"] == [1.0]


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        ([[8, 3]], 8),
        ([[2, 5], [7], [3, 1]], 7),
        ([[]], 1),
        ([[], []], 1),
        ([[], [4]], 4),
        ([[0, 3]], 0),
        ([[1]], 1),
    ],
)
def test_batch_elements_is_the_largest_first_dimension(
    shapes: list[list[int]], expected: int
) -> None:
    doc = {
        "inputs": [
            {"name": f"i{n}", "shape": s, "datatype": "UINT8", "data": [0] * math.prod(s)}
            for n, s in enumerate(shapes)
        ]
    }
    assert parse(doc).batch_elements == expected


def test_header_length_equal_to_body_means_no_binary_data() -> None:
    body = encode(one_input("INT8", [1], [5]))
    assert parse(body, header_length=len(body)).request.raw_input_contents[0] == b"\x05"


def test_binary_inputs_are_sliced_in_input_order() -> None:
    first = np.array([1.0, 2.0], dtype=np.float64).tobytes()
    second = b"\x05\x00\x00\x00hello\x00\x00\x00\x00"
    header = encode(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": [2],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(first)},
                },
                {"name": "j", "shape": [1], "datatype": "INT16", "data": [7]},
                {
                    "name": "b",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(second)},
                },
            ]
        }
    )
    parsed = parse(header + first + second, header_length=len(header))
    assert list(parsed.request.raw_input_contents) == [first, b"\x07\x00", second]


# --------------------------------------------------------------------------- request errors


def deep(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def raw_input(data: str, shape: str = "[1]", datatype: str = "FP32") -> bytes:
    return (
        f'{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}'
    ).encode()


def with_input(**fields: Any) -> bytes:
    tensor: dict[str, Any] = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    tensor.update(fields)
    tensor = {k: v for k, v in tensor.items() if v is not None}
    return encode({"inputs": [tensor]})


ERROR_CASES: list[Any] = [
    # --- not JSON / not acceptable JSON
    pytest.param(b'{"inputs": [', None, InvalidJson, "not valid JSON", id="malformed-json"),
    pytest.param(b"", None, InvalidJson, "not valid JSON", id="empty-body"),
    pytest.param(b'{"inputs": []} x', None, InvalidJson, "trailing", id="trailing-garbage"),
    pytest.param(raw_input("[NaN]"), None, InvalidJson, "NaN", id="nan-literal"),
    pytest.param(raw_input("[Infinity]"), None, InvalidJson, "Infinity", id="infinity-literal"),
    pytest.param(raw_input("[-Infinity]"), None, InvalidJson, "Infinity", id="neg-infinity"),
    pytest.param(raw_input(deep(70)), None, InvalidJson, "nested too deeply", id="too-deep"),
    pytest.param(
        raw_input("[1, " + deep(70) + "]"), None, InvalidJson, "too deeply", id="too-deep-inner"
    ),
    pytest.param(
        ('{"id": ' + deep(80) + ', "inputs": []}').encode(),
        None,
        InvalidJson,
        "too deeply",
        id="too-deep-in-id",
    ),
    pytest.param(
        ('{"extra": ' + deep(80) + ', "inputs": []}').encode(),
        None,
        InvalidJson,
        "too deeply",
        id="too-deep-unknown-key",
    ),
    pytest.param(raw_input(deep(50_000)), None, InvalidJson, "too deeply", id="very-deep"),
    pytest.param(
        b'{"id": "caf\xe9", "inputs": []}', None, InvalidJson, "UTF-8", id="non-utf8-body"
    ),
    pytest.param(b'{"inputs": [], "\xff": 1}', None, InvalidJson, "UTF-8", id="non-utf8-key"),
    pytest.param(b"[1, 2]", None, InvalidJson, "JSON object", id="top-level-array"),
    pytest.param(b'"hello"', None, InvalidJson, "JSON object", id="top-level-string"),
    # --- JSON, but not an inference request
    pytest.param(b"{}", None, InvalidInferenceRequest, "inputs", id="missing-inputs"),
    pytest.param(b'{"inputs": []}', None, InvalidInferenceRequest, "inputs", id="empty-inputs"),
    pytest.param(b'{"inputs": {}}', None, InvalidInferenceRequest, "inputs", id="inputs-object"),
    pytest.param(
        encode(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "model": "other",
            }
        ),
        None,
        InvalidInferenceRequest,
        "model",
        id="unknown-top-level-key",
    ),
    pytest.param(
        encode({"id": 5, "inputs": []}), None, InvalidInferenceRequest, "id", id="id-not-string"
    ),
    pytest.param(
        with_input(shape="2"), None, InvalidInferenceRequest, "inputs[0].shape", id="shape-not-list"
    ),
    pytest.param(
        with_input(shape=[1.0]),
        None,
        InvalidInferenceRequest,
        "inputs[0].shape[0]",
        id="shape-float",
    ),
    pytest.param(
        with_input(shape=[2, -1]),
        None,
        InvalidInferenceRequest,
        "inputs[0].shape[1]",
        id="negative-dim",
    ),
    pytest.param(
        with_input(shape=None), None, InvalidInferenceRequest, "shape", id="missing-shape"
    ),
    pytest.param(
        with_input(name=3), None, InvalidInferenceRequest, "inputs[0].name", id="name-not-string"
    ),
    pytest.param(
        with_input(datatype="FLOAT"), None, InvalidInferenceRequest, "FLOAT", id="unknown-datatype"
    ),
    pytest.param(
        with_input(datatype="BF16"), None, InvalidInferenceRequest, "BF16", id="bf16-unsupported"
    ),
    pytest.param(
        with_input(datatype=None), None, InvalidInferenceRequest, "datatype", id="missing-datatype"
    ),
    pytest.param(with_input(data=None), None, InvalidInferenceRequest, "data", id="missing-data"),
    pytest.param(
        with_input(contents={"fp32_contents": [1.0]}),
        None,
        InvalidInferenceRequest,
        "contents",
        id="unknown-input-key",
    ),
    pytest.param(
        encode(
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]},
                    {"name": "y", "shape": [1], "datatype": "FP32", "data": [1.0]},
                    {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]},
                ]
            }
        ),
        None,
        InvalidInferenceRequest,
        "inputs[2].name",
        id="duplicate-input-names",
    ),
    pytest.param(
        encode(
            {
                "parameters": {"shared_memory_region": "r"},
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            }
        ),
        None,
        InvalidInferenceRequest,
        "shared memory",
        id="shared-memory-request-param",
    ),
    pytest.param(
        with_input(parameters={"shared_memory_region": "r", "shared_memory_byte_size": 4}),
        None,
        InvalidInferenceRequest,
        "shared memory",
        id="shared-memory-input-param",
    ),
    pytest.param(
        encode(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"name": "y", "parameters": {"shared_memory_offset": 0}}],
            }
        ),
        None,
        InvalidInferenceRequest,
        "shared memory",
        id="shared-memory-output-param",
    ),
    pytest.param(
        encode(
            {
                "parameters": {"nested": {"a": 1}},
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            }
        ),
        None,
        InvalidInferenceRequest,
        "parameters",
        id="parameter-object-value",
    ),
    pytest.param(
        encode(
            {
                "parameters": {"big": 2**64},
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            }
        ),
        None,
        InvalidInferenceRequest,
        "parameters.big",
        id="parameter-int-too-big",
    ),
    pytest.param(
        encode(
            {
                "parameters": {"binary_data_output": 1},
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            }
        ),
        None,
        InvalidInferenceRequest,
        "binary_data_output",
        id="binary-data-output-not-bool",
    ),
    pytest.param(
        encode(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}],
            }
        ),
        None,
        InvalidInferenceRequest,
        "outputs[0].parameters.binary_data",
        id="output-binary-data-not-bool",
    ),
    pytest.param(
        encode(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"name": "y", "parameters": {"classification": -1}}],
            }
        ),
        None,
        InvalidInferenceRequest,
        "classification",
        id="classification-negative",
    ),
    pytest.param(
        encode(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"parameters": {}}],
            }
        ),
        None,
        InvalidInferenceRequest,
        "name",
        id="output-without-name",
    ),
    pytest.param(
        encode(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"name": "y"}, {"name": "y"}],
            }
        ),
        None,
        InvalidInferenceRequest,
        "outputs[1].name",
        id="duplicate-output-names",
    ),
    pytest.param(
        with_input(parameters={"binary_data_size": 4}),
        None,
        InvalidInferenceRequest,
        "not both",
        id="data-and-binary-size",
    ),
    pytest.param(
        with_input(data=None, parameters={"binary_data_size": 4}),
        None,
        InvalidInferenceRequest,
        "Inference-Header-Content-Length",
        id="binary-size-without-header",
    ),
    pytest.param(
        with_input(data=None, parameters={"binary_data_size": -4}),
        None,
        InvalidInferenceRequest,
        "binary_data_size",
        id="binary-size-negative",
    ),
    # --- tensor data
    pytest.param(raw_input("[1, 2, 3]", "[2, 2]"), None, InvalidTensor, "'x'", id="count-mismatch"),
    pytest.param(
        raw_input("[[1, 2, 3], [4, 5, 6]]", "[3, 2]"),
        None,
        InvalidTensor,
        "'x'",
        id="nested-shape-mismatch",
    ),
    pytest.param(
        raw_input("[[1, 2], [3]]", "[2, 2]"),
        None,
        InvalidTensor,
        "rectangular",
        id="ragged-nested-list",
    ),
    pytest.param(
        raw_input("[[1, 2], 3]", "[2, 2]"), None, InvalidTensor, "'x'", id="ragged-mixed-depth"
    ),
    pytest.param(
        raw_input("[[[1]], [[2]]]", "[2]"),
        None,
        InvalidTensor,
        "nested",
        id="nesting-deeper-than-shape",
    ),
    pytest.param(raw_input("1.5", "[2]"), None, InvalidTensor, "scalar", id="scalar-for-shape-2"),
    pytest.param(
        raw_input("[300]", datatype="INT8"), None, InvalidTensor, "'x'", id="int8-out-of-range"
    ),
    pytest.param(
        raw_input("[-1]", datatype="UINT8"), None, InvalidTensor, "'x'", id="uint8-negative"
    ),
    pytest.param(
        raw_input("[70000]", datatype="UINT16"),
        None,
        InvalidTensor,
        "'x'",
        id="uint16-out-of-range",
    ),
    pytest.param(
        raw_input("[2147483648]", datatype="INT32"),
        None,
        InvalidTensor,
        "'x'",
        id="int32-out-of-range",
    ),
    pytest.param(
        raw_input(f"[{2**63}]", datatype="INT64"),
        None,
        InvalidTensor,
        "'x'",
        id="int64-out-of-range",
    ),
    pytest.param(
        raw_input(f"[{2**64}]", datatype="UINT64"),
        None,
        InvalidTensor,
        "UINT64",
        id="uint64-out-of-range",
    ),
    pytest.param(
        raw_input("[1.0]", datatype="INT32"), None, InvalidTensor, "float", id="float-in-int-tensor"
    ),
    pytest.param(
        raw_input("[true]", datatype="INT64"), None, InvalidTensor, "bool", id="bool-in-int-tensor"
    ),
    pytest.param(
        raw_input("[true]", datatype="FP32"), None, InvalidTensor, "bool", id="bool-in-fp-tensor"
    ),
    pytest.param(
        raw_input('["1.0"]', datatype="FP64"),
        None,
        InvalidTensor,
        "str",
        id="string-in-numeric-tensor",
    ),
    pytest.param(
        raw_input("[null]", datatype="FP64"),
        None,
        InvalidTensor,
        "null",
        id="null-in-numeric-tensor",
    ),
    pytest.param(
        raw_input("[1]", datatype="BOOL"), None, InvalidTensor, "bool", id="number-in-bool-tensor"
    ),
    pytest.param(
        raw_input("[1]", datatype="BYTES"), None, InvalidTensor, "str", id="number-in-bytes-tensor"
    ),
    pytest.param(
        raw_input("[1e39]", datatype="FP32"), None, InvalidTensor, "FP32", id="fp32-overflow"
    ),
    pytest.param(
        raw_input("[70000]", datatype="FP16"), None, InvalidTensor, "FP16", id="fp16-overflow"
    ),
    pytest.param(
        raw_input("[1e400]", datatype="FP64"), None, InvalidTensor, "'x'", id="fp64-overflow"
    ),
]


@pytest.mark.parametrize(("body", "header_length", "error", "fragment"), ERROR_CASES)
def test_invalid_requests_raise_the_right_error(
    body: bytes, header_length: int | None, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as caught:
        parse(body, header_length=header_length)
    assert type(caught.value) is error
    assert fragment in str(caught.value)


def binary_request(
    datatype: str, shape: list[int], declared: int, payload: bytes
) -> tuple[bytes, int]:
    header = encode(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": declared},
                }
            ]
        }
    )
    return header + payload, len(header)


BINARY_ERROR_CASES: list[Any] = [
    pytest.param(
        *binary_request("FP32", [2], 8, b"\x00" * 9),
        InvalidInferenceRequest,
        "binary_data_size",
        id="sizes-shorter-than-trailer",
    ),
    pytest.param(
        *binary_request("FP32", [2], 8, b"\x00" * 7),
        InvalidInferenceRequest,
        "binary_data_size",
        id="sizes-longer-than-trailer",
    ),
    pytest.param(
        *binary_request("FP32", [2], 7, b"\x00" * 7),
        InvalidTensor,
        "'x'",
        id="blob-not-shape-times-itemsize",
    ),
    pytest.param(
        *binary_request("INT64", [3], 16, b"\x00" * 16),
        InvalidTensor,
        "24",
        id="blob-too-short-for-shape",
    ),
    pytest.param(
        *binary_request("BYTES", [1], 3, b"\x01\x00\x00"),
        InvalidTensor,
        "length prefix",
        id="bytes-truncated-prefix",
    ),
    pytest.param(
        *binary_request("BYTES", [1], 6, b"\x05\x00\x00\x00ab"),
        InvalidTensor,
        "claims 5 bytes",
        id="bytes-truncated-element",
    ),
    pytest.param(
        *binary_request("BYTES", [2], 6, b"\x02\x00\x00\x00ab"),
        InvalidTensor,
        "1 elements",
        id="bytes-too-few-elements",
    ),
    pytest.param(
        *binary_request("BYTES", [1], 8, b"\x00" * 8),
        InvalidTensor,
        "more than",
        id="bytes-too-many-elements",
    ),
]


@pytest.mark.parametrize(("body", "header_length", "error", "fragment"), BINARY_ERROR_CASES)
def test_invalid_binary_requests_raise_the_right_error(
    body: bytes, header_length: int, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as caught:
        parse(body, header_length=header_length)
    assert type(caught.value) is error
    assert fragment in str(caught.value)


@pytest.mark.parametrize("header_length", [-1, 10_000])
def test_header_length_outside_the_body_is_rejected(header_length: int) -> None:
    body = encode(one_input("FP32", [1], [1.0]))
    with pytest.raises(InvalidInferenceRequest, match="Inference-Header-Content-Length"):
        parse(body, header_length=header_length)


def test_header_length_that_cuts_the_json_is_invalid_json() -> None:
    body = encode(one_input("FP32", [1], [1.0]))
    with pytest.raises(InvalidJson):
        parse(body, header_length=len(body) - 3)


def test_trailing_bytes_without_binary_inputs_are_rejected() -> None:
    header = encode(one_input("FP32", [1], [1.0]))
    with pytest.raises(InvalidInferenceRequest, match="0 bytes"):
        parse(header + b"junk", header_length=len(header))


def test_too_many_elements_are_rejected_before_decoding() -> None:
    with pytest.raises(InvalidTensor, match="limit of 10"):
        parse(one_input("UINT8", [11], [0] * 11), max_elements=10)
    header = encode(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [4, 1000, 1000, 1000],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    )
    with pytest.raises(InvalidTensor, match="limit"):
        parse(header, header_length=len(header))


def test_tensor_errors_name_the_input_and_element() -> None:
    doc = {
        "inputs": [
            {"name": "ok", "shape": [1], "datatype": "INT8", "data": [1]},
            {"name": "pixels", "shape": [2, 2], "datatype": "UINT8", "data": [[1, 2], [3, 256]]},
        ]
    }
    with pytest.raises(InvalidTensor) as caught:
        parse(doc)
    message = str(caught.value)
    assert "'pixels'" in message
    assert "data[1][1]" in message


def test_depth_limit_is_configurable() -> None:
    doc = one_input("INT8", [1, 1, 1], [[[1]]])  # depth 3 + 3 = 6
    assert parse(doc, max_depth=6).request.raw_input_contents[0] == b"\x01"
    with pytest.raises(InvalidJson, match="limit is 5"):
        parse(doc, max_depth=5)


def test_depth_limit_below_the_envelope_depth_refuses_everything() -> None:
    with pytest.raises(InvalidJson, match="limit is 3"):
        parse(one_input("INT8", [1], 1), max_depth=3)


def test_brackets_inside_strings_do_not_count_toward_depth() -> None:
    noisy = '\\"[[[[' * 40 + "{{{{" * 40
    doc = {
        "id": 7,  # wrong type, so the error path measures the depth of the whole body
        "parameters": {"note": noisy},
        "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [noisy]}],
    }
    with pytest.raises(InvalidInferenceRequest, match="id"):
        parse(doc)
    del doc["id"]
    assert parse(doc).request.raw_input_contents[0].endswith(noisy.encode())


def reference_depth(text: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 1 << 20])
def test_depth_scanner_matches_a_reference_across_chunk_boundaries(chunk: int) -> None:
    texts = [
        b'{"a": [[1, 2], {"b": "]]]]"}], "c": "\\\\", "d": [[["\\"[[["]]]}',
        b'["\\\\\\"[", [[[["x\\\\"]]]], "{{{{\\\\\\\\"]',
        b"[" * 10 + b'"' + b"\\" * 7 + b'"[[[' + b'"' + b"]" * 10,
        b"",
        b"{}",
    ]
    for text in texts:
        assert kserve._json_depth(text, 1000, chunk=chunk) == reference_depth(text), text


# --------------------------------------------------------------------------- responses


def test_response_id_and_parameters_are_rendered_only_when_present() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    response.outputs.add(name="y", datatype="INT32", shape=[1])
    response.raw_output_contents.append(np.int32(4).tobytes())
    document = json.loads(kserve.render_infer_response(response, frozenset())[0])
    assert document == {
        "model_name": "m",
        "model_version": "3",
        "outputs": [{"name": "y", "datatype": "INT32", "shape": [1], "data": [4]}],
    }

    response.id = "r-1"
    response.parameters["done"].bool_param = True
    response.parameters["n"].int64_param = -3
    response.parameters["u"].uint64_param = 2**64 - 1
    response.parameters["p"].double_param = 0.5
    response.parameters["s"].string_param = "ok"
    response.outputs[0].parameters["note"].string_param = "x"
    document = json.loads(kserve.render_infer_response(response, frozenset())[0])
    assert list(document) == ["model_name", "model_version", "id", "parameters", "outputs"]
    assert document["id"] == "r-1"
    assert document["parameters"] == {"done": True, "n": -3, "u": 2**64 - 1, "p": 0.5, "s": "ok"}
    assert document["outputs"][0]["parameters"] == {"note": "x"}


def test_binary_output_keeps_backend_parameters_next_to_binary_data_size() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    out = response.outputs.add(name="y", datatype="UINT8", shape=[2])
    out.parameters["note"].string_param = "x"
    response.raw_output_contents.append(b"\x01\x02")
    body, header_length = kserve.render_infer_response(response, True)
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert header["outputs"][0]["parameters"] == {"note": "x", "binary_data_size": 2}
    assert body[header_length:] == b"\x01\x02"


CONTENTS: dict[str, tuple[str, list[Any]]] = {
    "BOOL": ("bool_contents", SAMPLES["BOOL"][1]),
    "UINT8": ("uint_contents", [0, 1, 255]),
    "UINT16": ("uint_contents", [0, 1, 65535]),
    "UINT32": ("uint_contents", [0, 1, 2**32 - 1]),
    "UINT64": ("uint64_contents", [0, 1, 2**64 - 1]),
    "INT8": ("int_contents", [-128, 0, 127]),
    "INT16": ("int_contents", [-(2**15), 0, 2**15 - 1]),
    "INT32": ("int_contents", [-(2**31), 0, 2**31 - 1]),
    "INT64": ("int64_contents", [-(2**63), -1, 0, 2**63 - 1]),
    "FP16": ("fp32_contents", [0.5, -65504.0, 1.0009765625, 6.103515625e-05]),
    "FP32": ("fp32_contents", [1.5, -3.4028234663852886e38, 1.401298464324817e-45, 0.1]),
    "FP64": ("fp64_contents", [0.1, 1.7976931348623157e308, -5e-324]),
    "BYTES": ("bytes_contents", [s.encode() for s in SAMPLES["BYTES"][1]]),
}


def contents_response(datatype: str) -> service_pb2.ModelInferResponse:
    field, values = CONTENTS[datatype]
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    out = response.outputs.add(name="y", datatype=datatype, shape=SAMPLES[datatype][0])
    getattr(out.contents, field).extend(values)
    return response


@pytest.mark.parametrize("datatype", DATATYPES)
def test_typed_contents_are_rendered_like_raw_contents(datatype: str) -> None:
    response = contents_response(datatype)
    document = json.loads(kserve.render_infer_response(response, frozenset())[0])
    shape, values, _ = SAMPLES[datatype]
    assert_json_data_equal(document["outputs"][0]["data"], datatype, values)
    assert document["outputs"][0]["shape"] == shape

    body, header_length = kserve.render_infer_response(response, frozenset({"y"}))
    assert header_length is not None
    assert body[header_length:] == raw_of(expected_array(datatype))
    assert_same_array(read_back(body, header_length).as_numpy("y"), expected_array(datatype))


def test_raw_contents_win_over_typed_contents() -> None:
    response = contents_response("INT32")
    response.raw_output_contents.append(np.array([7, 8, 9], dtype=np.int32).tobytes())
    document = json.loads(kserve.render_infer_response(response, frozenset())[0])
    assert document["outputs"][0]["data"] == [7, 8, 9]


def test_large_outputs_render_through_numpy_identically() -> None:
    values = np.linspace(-1, 1, 5000, dtype=np.float32)
    flags = np.arange(5000) % 3 == 0
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    response.outputs.add(name="v", datatype="FP32", shape=[5000])
    response.outputs.add(name="f", datatype="BOOL", shape=[5000])
    response.raw_output_contents.extend([values.tobytes(), flags.tobytes()])
    result = read_back(*kserve.render_infer_response(response, frozenset()))
    np.testing.assert_array_equal(result.as_numpy("v"), values)
    np.testing.assert_array_equal(result.as_numpy("f"), flags)


def test_large_json_input_round_trips() -> None:
    values = np.random.default_rng(1).standard_normal((64, 300)).astype(np.float32)
    parsed = parse(one_input("FP32", [64, 300], values.tolist()))
    assert parsed.request.raw_input_contents[0] == values.tobytes()


FP32_ROUNDS_TO_INF = (2 - 2**-24) * 2**127  # float32 max + half an ulp
SIZES = [pytest.param(3, id="small"), pytest.param(70_000, id="large")]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("datatype", [t for t in DATATYPES if t != "BYTES"])
def test_json_values_pack_like_numpy_at_any_size(datatype: str, size: int) -> None:
    _, values, dtype = SAMPLES[datatype]
    repeated = (values * (size // len(values) + 1))[:size]
    parsed = parse(one_input(datatype, [size], repeated))
    assert parsed.request.raw_input_contents[0] == np.array(repeated, dtype=dtype).tobytes()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("datatype", "largest_ok", "first_bad"),
    [
        ("FP32", float(np.nextafter(FP32_ROUNDS_TO_INF, 0)), FP32_ROUNDS_TO_INF),
        ("FP16", 65519.99, 65520.0),
    ],
)
def test_float_narrowing_refuses_exactly_the_values_that_round_to_infinity(
    datatype: str, largest_ok: float, first_bad: float, size: int
) -> None:
    dtype = SAMPLES[datatype][2]
    ok = [1.0] * (size - 2) + [largest_ok, -largest_ok]
    parsed = parse(one_input(datatype, [size], ok))
    assert parsed.request.raw_input_contents[0] == np.array(ok, dtype=dtype).tobytes()
    for bad in (first_bad, -first_bad):
        with pytest.raises(InvalidTensor, match=f"too large for {datatype}"):
            parse(one_input(datatype, [size], [1.0] * (size - 1) + [bad]))


@pytest.mark.parametrize("size", SIZES)
def test_uint64_above_its_maximum_is_refused_at_any_size(size: int) -> None:
    with pytest.raises(InvalidTensor, match="out of range for UINT64"):
        parse(one_input("UINT64", [size], [0] * (size - 1) + [2**64]))


def raw_response(datatype: str, shape: list[int], raw: bytes) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    response.outputs.add(name="y", datatype=datatype, shape=shape)
    response.raw_output_contents.append(raw)
    return response


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("FP32", np.float32(np.nan)),
        ("FP32", np.float32(np.inf)),
        ("FP64", np.float64(-np.inf)),
        ("FP16", np.float16(np.inf)),
    ],
)
def test_non_finite_outputs_need_binary_data(datatype: str, value: Any) -> None:
    big = np.full(300, value)  # exercise the numpy path too
    for array in (np.array([1, value]), big):
        raw = array.astype(value.dtype).tobytes()
        response = raw_response(datatype, [array.size], raw)
        with pytest.raises(BackendError, match="binary_data"):
            kserve.render_infer_response(response, frozenset())
        body, header_length = kserve.render_infer_response(response, frozenset({"y"}))
        got = read_back(body, header_length).as_numpy("y")
        np.testing.assert_array_equal(got, array.astype(value.dtype))


def test_non_utf8_bytes_output_needs_binary_data() -> None:
    raw = b"\x02\x00\x00\x00\xff\xfe"
    with pytest.raises(BackendError, match="binary_data") as caught:
        kserve.render_infer_response(raw_response("BYTES", [1], raw), frozenset())
    assert "'y'" in str(caught.value)
    body, header_length = kserve.render_infer_response(raw_response("BYTES", [1], raw), True)
    assert read_back(body, header_length).as_numpy("y").tolist() == [b"\xff\xfe"]


@pytest.mark.parametrize(
    ("datatype", "shape", "raw"),
    [
        ("FP32", [2], b"\x00" * 7),
        ("INT64", [1], b"\x00" * 16),
        ("BYTES", [2], b"\x01\x00\x00\x00a"),
        ("BYTES", [1], b"\x09\x00\x00\x00a"),
        ("BF16", [1], b"\x00\x00"),
        ("FP32", [-1], b""),
    ],
)
def test_malformed_backend_outputs_are_backend_errors(
    datatype: str, shape: list[int], raw: bytes
) -> None:
    modes: tuple[frozenset[str] | bool, ...] = (frozenset(), True)
    for binary in modes:
        with pytest.raises(BackendError):
            kserve.render_infer_response(raw_response(datatype, shape, raw), binary)


def test_typed_contents_with_the_wrong_count_are_backend_errors() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    out = response.outputs.add(name="y", datatype="INT32", shape=[3])
    out.contents.int_contents.extend([1, 2])
    with pytest.raises(BackendError, match="shape needs 3"):
        kserve.render_infer_response(response, frozenset())


def test_typed_contents_out_of_range_for_datatype_are_backend_errors() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    out = response.outputs.add(name="y", datatype="INT8", shape=[1])
    out.contents.int_contents.append(300)
    with pytest.raises(BackendError, match="out of range"):
        kserve.render_infer_response(response, frozenset())


def test_output_with_no_data_at_all_renders_as_empty_when_shape_is_empty() -> None:
    response = raw_response("FP32", [0], b"")
    document = json.loads(kserve.render_infer_response(response, frozenset())[0])
    assert document["outputs"][0]["data"] == []
