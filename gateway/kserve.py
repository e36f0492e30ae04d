"""KServe v2 HTTP/REST bodies <-> Triton gRPC protobuf messages.

Requests: the JSON header (plus Triton's binary tensor data extension) becomes a
``ModelInferRequest`` whose tensors are always carried in ``raw_input_contents``.
Responses: a ``ModelInferResponse`` becomes a JSON body, or a JSON header followed by
binary blobs for the outputs that asked for ``binary_data``.

This runs on every request, so the JSON envelope is decoded once with a typed msgspec
schema (tensor ``data`` is captured as raw JSON and decoded afterwards with an
element type chosen from the tensor's datatype, which also enforces integer ranges), and
numeric data is packed/unpacked with struct, array and numpy, never per-element Python code.
"""

from __future__ import annotations

import math
import re
import struct
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Annotated, Any, Final, TypeAlias

import msgspec
import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2

from gateway.errors import BackendError, InvalidInferenceRequest, InvalidJson, InvalidTensor

__all__ = ["ParsedInfer", "parse_infer_request", "render_infer_response"]

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1
_LITTLE_ENDIAN: Final = sys.byteorder == "little"
_U32: Final = struct.Struct("<I")
# Smallest float64 magnitude that rounds to infinity when narrowed to float16.
_FP16_OVERFLOW: Final = 65520.0
# Depth of the envelope itself: {"inputs": [{"shape": [ ... ]}]}
_ENVELOPE_DEPTH: Final = 4
# Containers opened before an input's ``data`` value: top object, inputs list, input object.
_DATA_BASE_DEPTH: Final = 3
_SHARED_MEMORY_PREFIX: Final = "shared_memory"
_LEADING_BRACKETS: Final = re.compile(rb"[ \t\n\r\[]*")
# Below this many elements, rendering with array beats numpy (whose per-call overhead dominates).
_SMALL_TENSOR: Final = 256
# Up to this many elements JSON values are packed with one struct call (fastest); beyond it
# with array, which avoids building a huge argument tuple.
_STRUCT_PACK_LIMIT: Final = 1 << 16

ParamValue: TypeAlias = bool | int | float | str
Shape: TypeAlias = list[Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]]


# --------------------------------------------------------------------------- public API


@dataclass(slots=True)
class ParsedInfer:
    request: service_pb2.ModelInferRequest
    # True: every output binary (request parameter binary_data_output); otherwise the names of
    # the outputs that asked for parameters.binary_data=true.
    binary_outputs: frozenset[str] | bool
    # Largest first dimension over the inputs (1 when every input is a scalar).
    batch_elements: int


# --------------------------------------------------------------------------- datatypes


@dataclass(frozen=True, slots=True)
class _DType:
    name: str
    np_dtype: np.dtype[Any] | None  # None for BYTES
    itemsize: int  # 0 for BYTES
    element_type: Any  # msgspec type of one JSON element
    typecode: str | None  # array module typecode used to pack large JSON tensors
    struct_code: str | None  # struct format character used to pack small JSON tensors
    contents_field: str  # typed InferTensorContents field
    wide_dtype: np.dtype[Any] | None  # dtype of the typed contents field

    @property
    def is_float(self) -> bool:
        return self.name in ("FP16", "FP32", "FP64")


def _int_type(lo: int, hi: int | None) -> Any:
    return (
        Annotated[int, msgspec.Meta(ge=lo, le=hi)]
        if hi is not None
        else Annotated[int, msgspec.Meta(ge=lo)]
    )


def _make_dtypes() -> dict[str, _DType]:
    table: list[tuple[str, str | None, Any, str | None, str, str | None]] = [
        ("BOOL", "|b1", bool, None, "bool_contents", "|b1"),
        ("UINT8", "|u1", _int_type(0, 2**8 - 1), "B", "uint_contents", "<u8"),
        ("UINT16", "<u2", _int_type(0, 2**16 - 1), "H", "uint_contents", "<u8"),
        ("UINT32", "<u4", _int_type(0, 2**32 - 1), "I", "uint_contents", "<u8"),
        # msgspec bounds must fit in int64: the UINT64 upper bound is enforced when packing.
        ("UINT64", "<u8", _int_type(0, None), "Q", "uint64_contents", "<u8"),
        ("INT8", "|i1", _int_type(-(2**7), 2**7 - 1), "b", "int_contents", "<i8"),
        ("INT16", "<i2", _int_type(-(2**15), 2**15 - 1), "h", "int_contents", "<i8"),
        ("INT32", "<i4", _int_type(-(2**31), 2**31 - 1), "i", "int_contents", "<i8"),
        ("INT64", "<i8", _int_type(_INT64_MIN, _INT64_MAX), "q", "int64_contents", "<i8"),
        # Triton has no typed FP16 field; accept fp32_contents narrowed to float16.
        ("FP16", "<f2", float, None, "fp32_contents", "<f8"),
        ("FP32", "<f4", float, "f", "fp32_contents", "<f8"),
        ("FP64", "<f8", float, "d", "fp64_contents", "<f8"),
        ("BYTES", None, str, None, "bytes_contents", None),
    ]
    out: dict[str, _DType] = {}
    for name, np_name, element, code, field, wide in table:
        dtype = np.dtype(np_name) if np_name else None
        if code is not None and dtype is not None and array(code).itemsize != dtype.itemsize:
            raise RuntimeError(f"array typecode {code!r} is not {dtype.itemsize} bytes here")
        out[name] = _DType(
            name=name,
            np_dtype=dtype,
            itemsize=dtype.itemsize if dtype is not None else 0,
            element_type=element,
            typecode=code,
            struct_code=code if code is not None else ("e" if name == "FP16" else None),
            contents_field=field,
            wide_dtype=np.dtype(wide) if wide else None,
        )
    return out


_DTYPES: Final = _make_dtypes()
_DATATYPE_NAMES: Final = ", ".join(_DTYPES)


@lru_cache(maxsize=1024)
def _data_decoder(datatype: str, depth: int) -> msgspec.json.Decoder[Any]:
    """Decoder for an input's ``data`` nested ``depth`` lists deep (0 = a bare scalar)."""
    typ: Any = _DTYPES[datatype].element_type
    for _ in range(depth):
        typ = list[typ]
    return msgspec.json.Decoder(typ)


# --------------------------------------------------------------------------- request schema


class _InputSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    shape: Shape
    datatype: str
    parameters: dict[str, ParamValue] = {}
    data: msgspec.Raw = msgspec.Raw()


class _OutputSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    parameters: dict[str, ParamValue] = {}


class _RequestSpec(msgspec.Struct, forbid_unknown_fields=True):
    inputs: list[_InputSpec]
    id: str = ""
    parameters: dict[str, ParamValue] = {}
    outputs: list[_OutputSpec] = []


_REQUEST_DECODER: Final = msgspec.json.Decoder(_RequestSpec)


# --------------------------------------------------------------------------- request parsing


def parse_infer_request(
    body: bytes,
    *,
    model_name: str,
    model_version: str,
    header_length: int | None,
    max_elements: int = 16_000_000,
    max_depth: int = 64,
) -> ParsedInfer:
    """Validate a KServe v2 inference body and convert it to a Triton ``ModelInferRequest``.

    Raises ``InvalidJson``, ``InvalidInferenceRequest`` or ``InvalidTensor``.
    """
    body = bytes(body) if not isinstance(body, bytes) else body
    if header_length is None:
        header = body
        blob_bytes = 0
    else:
        if isinstance(header_length, bool) or not isinstance(header_length, int):
            raise InvalidInferenceRequest("Inference-Header-Content-Length must be an integer")
        if not 0 <= header_length <= len(body):
            raise InvalidInferenceRequest(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"(body is {len(body)} bytes)"
            )
        header = body if header_length == len(body) else body[:header_length]
        blob_bytes = len(body) - header_length

    spec = _decode_envelope(header, max_depth)
    if not spec.inputs:
        raise InvalidInferenceRequest("inputs: at least one input is required")

    request = service_pb2.ModelInferRequest(
        model_name=model_name, model_version=model_version, id=spec.id
    )
    binary_data_output = _copy_request_parameters(request.parameters, spec.parameters)

    raw_contents: list[bytes] = []
    binary_inputs: list[tuple[int, _InputSpec, _DType, int, int]] = []
    seen: set[str] = set()
    batch = -1
    depth = _ENVELOPE_DEPTH
    for index, inp in enumerate(spec.inputs):
        name = inp.name
        if name in seen:
            raise InvalidInferenceRequest(f"inputs[{index}].name: duplicate input name {name!r}")
        seen.add(name)
        dtype = _DTYPES.get(inp.datatype)
        if dtype is None:
            raise InvalidInferenceRequest(_unsupported_datatype(index, inp.datatype))
        shape = inp.shape
        if shape and shape[0] > batch:
            batch = shape[0]
        count = math.prod(shape)
        if count > max_elements:
            raise InvalidTensor(
                f"input {name!r}: shape {shape} has {count} elements, more than the limit "
                f"of {max_elements}"
            )
        tensor = request.inputs.add(name=name, datatype=dtype.name, shape=shape)
        binary_size: int | None = None
        for key, value in inp.parameters.items():
            if key == "binary_data_size":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise InvalidInferenceRequest(
                        f"inputs[{index}].parameters.binary_data_size: "
                        "must be a non-negative integer"
                    )
                binary_size = value
            else:
                _set_parameter(tensor.parameters, key, value, f"inputs[{index}].parameters")

        has_data = len(inp.data) > 0
        if binary_size is not None:
            if has_data:
                raise InvalidInferenceRequest(
                    f"inputs[{index}]: give either data or parameters.binary_data_size, not both"
                )
            binary_inputs.append((index, inp, dtype, count, binary_size))
            raw_contents.append(b"")  # filled in once the blob offsets are known
        elif has_data:
            data_depth, raw = _json_tensor(inp, dtype, count, max_depth)
            depth = max(depth, _DATA_BASE_DEPTH + data_depth)
            raw_contents.append(raw)
        else:
            raise InvalidInferenceRequest(
                f"inputs[{index}]: data is required unless parameters.binary_data_size is given"
            )
    if depth > max_depth:  # only when max_depth is below the envelope's own depth
        raise _too_deep(max_depth)

    _attach_binary_inputs(body, header_length, blob_bytes, binary_inputs, raw_contents)
    request.raw_input_contents.extend(raw_contents)

    binary_outputs = _copy_outputs(request, spec.outputs, binary_data_output)
    return ParsedInfer(
        request=request,
        binary_outputs=binary_outputs,
        batch_elements=batch if batch >= 0 else 1,
    )


def _decode_envelope(header: bytes, max_depth: int) -> _RequestSpec:
    if not header.isascii():
        try:
            header.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(
                f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason})"
            ) from None
    try:
        return _REQUEST_DECODER.decode(header)
    except msgspec.ValidationError as exc:
        if _json_depth(header, max_depth) > max_depth:
            raise _too_deep(max_depth) from None
        raise _envelope_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidJson(_syntax_error(header, str(exc))) from None
    except RecursionError:
        raise _too_deep(max_depth) from None
    except UnicodeDecodeError as exc:  # pragma: no cover - caught by the UTF-8 check above
        raise InvalidJson(f"request body is not valid UTF-8: {exc.reason}") from None


def _envelope_error(message: str) -> InvalidJson | InvalidInferenceRequest:
    what, path = _split_validation_message(message)
    if not path and what.startswith("Expected `object`"):
        got = what.partition(", got ")[2].strip("`") or "something else"
        return InvalidJson(f"request body must be a JSON object, not {got}")
    what = what.replace("`bool | int | float | str`", "a boolean, number or string")
    if path.endswith("[...]"):  # msgspec does not name the offending key of a dict
        path = path.removesuffix("[...]") + " values"
    if what.startswith("Object contains unknown field"):
        field = what.rpartition(" ")[2]
        where = f"{path}: " if path else ""
        return InvalidInferenceRequest(f"{where}unknown field {field}")
    if what.startswith("Object missing required field"):
        field = what.rpartition(" ")[2]
        where = f"{path}: " if path else ""
        return InvalidInferenceRequest(f"{where}missing required field {field}")
    return InvalidInferenceRequest(f"{path or 'request'}: {_lower_first(what)}")


def _split_validation_message(message: str) -> tuple[str, str]:
    """Split msgspec's ``"<what> - at `$.inputs[1].shape[0]`"`` into (what, path).

    The path loses its ``$.`` prefix: ``inputs[1].shape[0]``.
    """
    what, sep, where = message.rpartition(" - at `")
    if not sep:
        return message, ""
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    return what, path


def _lower_first(text: str) -> str:
    """Lower-case a sentence start, leaving acronyms such as ``JSON`` alone."""
    if text[1:2].isupper():
        return text
    return text[:1].lower() + text[1:]


_BYTE_OFFSET: Final = re.compile(r"\(byte (\d+)\)")


def _syntax_error(header: bytes, message: str) -> str:
    text = f"request body is not valid JSON: {_lower_first(message)}"
    found = _BYTE_OFFSET.search(message)
    if found:
        rest = header[int(found.group(1)) : int(found.group(1)) + 9].lstrip(b"-+")
        if rest.startswith((b"NaN", b"Infinity", b"inf", b"nan")):
            text += "; NaN and Infinity are not allowed in strict JSON"
    return text


def _too_deep(max_depth: int) -> InvalidJson:
    return InvalidJson(f"JSON is nested too deeply (the limit is {max_depth} levels)")


def _unsupported_datatype(index: int, datatype: str) -> str:
    return (
        f"inputs[{index}].datatype: unsupported datatype {datatype!r}; "
        f"expected one of {_DATATYPE_NAMES}"
    )


def _set_parameter(target: Any, key: str, value: ParamValue, where: str) -> None:
    """Store one JSON parameter into a protobuf ``map<string, InferParameter>``."""
    if key.startswith(_SHARED_MEMORY_PREFIX):
        raise InvalidInferenceRequest(
            f"{where}.{key}: shared memory parameters are not allowed through this gateway"
        )
    param = target[key]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            param.int64_param = value
        elif _INT64_MAX < value <= _UINT64_MAX:
            param.uint64_param = value
        else:
            del target[key]
            raise InvalidInferenceRequest(f"{where}.{key}: integer does not fit in 64 bits")
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


def _copy_request_parameters(target: Any, params: dict[str, ParamValue]) -> bool | None:
    """Forward request parameters; return the HTTP-only ``binary_data_output`` flag."""
    binary_data_output: bool | None = None
    for key, value in params.items():
        if key == "binary_data_output":
            if not isinstance(value, bool):
                raise InvalidInferenceRequest("parameters.binary_data_output: must be a boolean")
            binary_data_output = value
        else:
            _set_parameter(target, key, value, "parameters")
    return binary_data_output


def _copy_outputs(
    request: Any, outputs: list[_OutputSpec], binary_data_output: bool | None
) -> frozenset[str] | bool:
    binary: set[str] = set()
    explicit_json = False
    seen: set[str] = set()
    for index, out in enumerate(outputs):
        if out.name in seen:
            raise InvalidInferenceRequest(
                f"outputs[{index}].name: duplicate output name {out.name!r}"
            )
        seen.add(out.name)
        tensor = request.outputs.add(name=out.name)
        wants_binary = binary_data_output is True
        for key, value in out.parameters.items():
            where = f"outputs[{index}].parameters"
            if key == "binary_data":
                if not isinstance(value, bool):
                    raise InvalidInferenceRequest(f"{where}.binary_data: must be a boolean")
                wants_binary = value
                explicit_json = explicit_json or not value
            elif key == "classification":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise InvalidInferenceRequest(
                        f"{where}.classification: must be a non-negative integer"
                    )
                _set_parameter(tensor.parameters, key, value, where)
            else:
                _set_parameter(tensor.parameters, key, value, where)
        if wants_binary:
            binary.add(out.name)
    if binary_data_output is True and not explicit_json:
        return True
    return frozenset(binary)


# --------------------------------------------------------------------------- tensor data


def _json_tensor(inp: _InputSpec, dtype: _DType, count: int, max_depth: int) -> tuple[int, bytes]:
    """Decode, check and pack one input's JSON ``data``; return (nesting depth, raw bytes)."""
    name = inp.name
    shape = inp.shape
    raw = inp.data
    match = _LEADING_BRACKETS.match(raw)
    lead = match.group().count(b"[") if match else 0
    if _DATA_BASE_DEPTH + lead > max_depth:
        raise _too_deep(max_depth)
    ndim = len(shape)
    if lead == 0:
        if any(dim != 1 for dim in shape):
            raise InvalidTensor(
                f"input {name!r}: a scalar data value needs shape [] or all ones, not {shape}"
            )
    elif lead != 1 and lead != ndim:
        raise InvalidTensor(
            f"input {name!r}: data is nested {lead} levels deep but shape {shape} has "
            f"{ndim} dimensions; send a flat list or lists nested exactly like the shape"
        )
    try:
        value = _data_decoder(dtype.name, lead).decode(raw)
    except msgspec.ValidationError as exc:
        if _DATA_BASE_DEPTH + _json_depth(raw, max_depth) > max_depth:
            raise _too_deep(max_depth) from None
        raise InvalidTensor(_data_error(name, dtype, str(exc))) from None
    except msgspec.DecodeError as exc:  # pragma: no cover - the envelope already parsed it
        raise InvalidJson(f"input {name!r}: data is not valid JSON: {exc}") from None
    except UnicodeDecodeError:  # pragma: no cover - the body was checked for UTF-8
        raise InvalidJson(f"input {name!r}: data is not valid UTF-8") from None

    if lead == 0:
        flat: list[Any] = [value]
    elif lead == 1:
        flat = value
        if len(flat) != count:
            raise InvalidTensor(
                f"input {name!r}: data has {len(flat)} elements but shape {shape} needs {count}"
            )
    else:
        flat = _flatten(name, value, shape)
    return lead, _pack(name, dtype, flat)


def _data_error(name: str, dtype: _DType, message: str) -> str:
    what, path = _split_validation_message(message)
    location = "data" + (path if path.startswith("[") else "")
    what = _lower_first(what)
    if what.startswith("expected `array`") or ("got `array`" in what and location != "data"):
        hint = " (nested lists must be rectangular and match the shape)"
    else:
        hint = f" (datatype {dtype.name})"
    return f"input {name!r}: {location}: {what}{hint}"


def _flatten(name: str, nested: list[Any], shape: list[int]) -> list[Any]:
    """Flatten lists nested exactly ``len(shape)`` deep, checking every level's length."""
    if len(nested) != shape[0]:
        raise InvalidTensor(
            f"input {name!r}: data has {len(nested)} rows in dimension 0 but shape {shape} "
            f"needs {shape[0]}"
        )
    level: list[Any] = nested
    for axis in range(1, len(shape)):
        want = shape[axis]
        lengths = set(map(len, level))
        if lengths and lengths != {want}:
            got = sorted(lengths)
            detail = "ragged lists" if len(got) > 1 else f"length {got[0]}"
            raise InvalidTensor(
                f"input {name!r}: data has {detail} in dimension {axis} but shape {shape} "
                f"needs length {want} (nested lists must be rectangular and match the shape)"
            )
        level = list(chain.from_iterable(level))
    return level


@lru_cache(maxsize=512)
def _struct_for(code: str, count: int) -> struct.Struct:
    return struct.Struct(f"<{count}{code}")


def _out_of_range(name: str, dtype: _DType) -> InvalidTensor:
    if dtype.is_float:
        return InvalidTensor(
            f"input {name!r}: a value is too large for {dtype.name} and would become infinity"
        )
    return InvalidTensor(f"input {name!r}: a value is out of range for {dtype.name}")


def _pack(name: str, dtype: _DType, flat: list[Any]) -> bytes:
    """Pack already type-checked JSON values into Triton's little-endian raw layout."""
    struct_code = dtype.struct_code
    if struct_code is not None and len(flat) <= _STRUCT_PACK_LIMIT:
        # struct is the fastest packer and range-checks every value, including float
        # narrowing: FP32/FP16 values that would round to infinity raise OverflowError.
        try:
            return _struct_for(struct_code, len(flat)).pack(*flat)
        except (struct.error, OverflowError):
            raise _out_of_range(name, dtype) from None
    code = dtype.typecode
    if code is not None:
        try:
            packed = array(code, flat)
        except OverflowError:
            raise _out_of_range(name, dtype) from None
        if code == "f" and not _finite_f32(packed):
            raise _out_of_range(name, dtype)
        if not _LITTLE_ENDIAN:  # pragma: no cover - every supported platform is little-endian
            packed.byteswap()
        return packed.tobytes()
    if dtype.name == "BOOL":
        return bytes(flat)
    if dtype.name == "FP16":
        wide = np.asarray(flat, dtype=np.float64)
        if wide.size and float(np.abs(wide).max()) >= _FP16_OVERFLOW:
            raise _out_of_range(name, dtype)
        return wide.astype("<f2").tobytes()
    # BYTES: strings as UTF-8, each prefixed by its uint32 little-endian length.
    try:
        return _serialize_bytes(s.encode() for s in flat)
    except UnicodeEncodeError:  # pragma: no cover - msgspec refuses lone surrogates
        raise InvalidTensor(f"input {name!r}: strings must be valid Unicode") from None


def _finite_f32(values: array[float]) -> bool:
    return bool(np.isfinite(np.frombuffer(values, dtype=np.float32)).all())


def _serialize_bytes(items: Iterable[bytes]) -> bytes:
    pack = _U32.pack
    parts: list[bytes] = []
    append = parts.append
    for item in items:
        append(pack(len(item)))
        append(item)
    return b"".join(parts)


def _split_bytes(blob: bytes, count: int) -> list[bytes] | str:
    """Split a length-prefixed BYTES blob into exactly ``count`` items, or explain why not."""
    items: list[bytes] = []
    append = items.append
    unpack = _U32.unpack_from
    offset = 0
    end = len(blob)
    while offset < end:
        if len(items) == count:
            return f"has more than the {count} elements its shape allows"
        if offset + 4 > end:
            return f"ends inside the length prefix of element {len(items)}"
        (size,) = unpack(blob, offset)
        offset += 4
        if offset + size > end:
            return f"element {len(items)} claims {size} bytes but only {end - offset} remain"
        append(blob[offset : offset + size])
        offset += size
    if len(items) != count:
        return f"has {len(items)} elements but its shape needs {count}"
    return items


def _attach_binary_inputs(
    body: bytes,
    header_length: int | None,
    blob_bytes: int,
    binary_inputs: list[tuple[int, _InputSpec, _DType, int, int]],
    raw_contents: list[bytes],
) -> None:
    declared = sum(item[4] for item in binary_inputs)
    if binary_inputs and header_length is None:
        raise InvalidInferenceRequest(
            "inputs with parameters.binary_data_size need the Inference-Header-Content-Length "
            "header"
        )
    if declared != blob_bytes:
        raise InvalidInferenceRequest(
            f"binary_data_size values add up to {declared} bytes but {blob_bytes} bytes follow "
            "the JSON header"
        )
    if not binary_inputs or header_length is None:
        return
    offset = header_length
    for index, inp, dtype, count, size in binary_inputs:
        blob = body[offset : offset + size]
        offset += size
        if dtype.np_dtype is not None:
            if size != count * dtype.itemsize:
                raise InvalidTensor(
                    f"input {inp.name!r}: binary data is {size} bytes but shape {inp.shape} of "
                    f"{dtype.name} needs {count * dtype.itemsize}"
                )
        else:
            problem = _split_bytes(blob, count)
            if isinstance(problem, str):
                raise InvalidTensor(f"input {inp.name!r}: BYTES binary data {problem}")
        raw_contents[index] = blob


def _json_depth(buf: Any, limit: int, chunk: int = 1 << 20) -> int:
    """Maximum nesting depth of a JSON text, ignoring brackets inside strings.

    Vectorised and chunked so a huge rejected body costs little; stops once past ``limit``.
    Only used on error paths (a valid request's depth follows from its schema).
    """
    data = np.frombuffer(buf, dtype=np.uint8)
    depth = 0
    deepest = 0
    in_string = 0
    backslashes = 0  # run of backslashes that ended the previous chunk
    for start in range(0, data.size, chunk):
        part = data[start : start + chunk]
        is_bs = part == 92
        quotes = np.flatnonzero(part == 34)
        if quotes.size and (backslashes or is_bs.any()):
            positions = np.arange(part.size)
            last_other = np.maximum.accumulate(np.where(is_bs, -1, positions))
            before = quotes - 1
            clipped = np.maximum(before, 0)
            run = np.where(before >= 0, before - last_other[clipped], 0)
            spans_chunk = (before < 0) | (last_other[clipped] == -1)
            run = run + np.where(spans_chunk, backslashes, 0)
            quotes = quotes[run % 2 == 0]
        toggles = np.zeros(part.size, dtype=np.int8)
        toggles[quotes] = 1
        inside = (np.cumsum(toggles, dtype=np.int64) + in_string) & 1
        delta = (part == 91).astype(np.int32) + (part == 123)
        delta -= part == 93
        delta -= part == 125
        delta[inside.astype(bool)] = 0
        levels = np.cumsum(delta, dtype=np.int64) + depth
        if levels.size:
            deepest = max(deepest, int(levels.max()))
            depth = int(levels[-1])
        if deepest > limit:
            return deepest
        in_string = (in_string + int(quotes.size)) & 1
        tail = np.flatnonzero(~is_bs)
        if tail.size:
            backslashes = part.size - 1 - int(tail[-1])
        else:
            backslashes += part.size
    return deepest


# --------------------------------------------------------------------------- responses


def render_infer_response(
    response: service_pb2.ModelInferResponse,
    binary_outputs: frozenset[str] | bool,
) -> tuple[bytes, int | None]:
    """Return (body, json_header_length). json_header_length is None when the body is plain JSON
    (content type application/json); otherwise the body is JSON header + binary blobs and the
    caller sets the `Inference-Header-Content-Length` header to that value (content type
    application/octet-stream)."""
    raws: list[bytes] = list(response.raw_output_contents)
    all_binary = binary_outputs is True
    selected: frozenset[str] = (
        binary_outputs if isinstance(binary_outputs, frozenset) else frozenset()
    )
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for index, out in enumerate(response.outputs):
        name: str = out.name
        datatype: str = out.datatype
        shape = [int(dim) for dim in out.shape]
        dtype = _DTYPES.get(datatype)
        if dtype is None:
            raise BackendError(f"output {name!r} has unsupported datatype {datatype!r}")
        if any(dim < 0 for dim in shape):
            raise BackendError(f"output {name!r} has an invalid shape {shape}")
        count = math.prod(shape)
        raw = raws[index] if index < len(raws) else _contents_to_raw(name, dtype, count, out)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        params = _parameters_to_json(out.parameters)
        if all_binary or name in selected:
            _check_raw_output(name, dtype, count, raw)
            params["binary_data_size"] = len(raw)
            entry["parameters"] = params
            blobs.append(raw)
        else:
            entry["data"] = _raw_to_json(name, dtype, count, raw)
            if params:
                entry["parameters"] = params
        outputs.append(entry)

    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        document["id"] = response.id
    params = _parameters_to_json(response.parameters)
    if params:
        document["parameters"] = params
    document["outputs"] = outputs
    header = msgspec.json.encode(document)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _parameters_to_json(params: Any) -> dict[str, ParamValue]:
    if not params:
        return {}
    return {str(key): _parameter_value(value) for key, value in params.items()}


def _parameter_value(param: Any) -> ParamValue:
    which = param.WhichOneof("parameter_choice")
    if which == "bool_param":
        return bool(param.bool_param)
    if which == "int64_param":
        return int(param.int64_param)
    if which == "uint64_param":
        return int(param.uint64_param)
    if which == "double_param":
        return float(param.double_param)
    if which == "string_param":
        return str(param.string_param)
    return ""  # an unset InferParameter (protobuf default); JSON has no better spelling


def _check_raw_output(name: str, dtype: _DType, count: int, raw: bytes) -> None:
    if dtype.np_dtype is not None:
        if len(raw) != count * dtype.itemsize:
            raise BackendError(
                f"output {name!r}: backend sent {len(raw)} bytes, shape needs "
                f"{count * dtype.itemsize}"
            )
    else:
        problem = _split_bytes(raw, count)
        if isinstance(problem, str):
            raise BackendError(f"output {name!r}: backend BYTES data {problem}")


def _advice(name: str) -> str:
    return (
        f'request it as binary: add "parameters": {{"binary_data": true}} to the "{name}" '
        'entry of "outputs" (or set the request parameter "binary_data_output": true)'
    )


def _raw_to_json(name: str, dtype: _DType, count: int, raw: bytes) -> list[Any]:
    np_dtype = dtype.np_dtype
    if np_dtype is None:
        items = _split_bytes(raw, count)
        if isinstance(items, str):
            raise BackendError(f"output {name!r}: backend BYTES data {items}")
        try:
            return [item.decode() for item in items]
        except UnicodeDecodeError:
            raise BackendError(
                f"output {name!r} holds bytes that are not valid UTF-8 and cannot be sent as "
                f"JSON; {_advice(name)}"
            ) from None
    if len(raw) != count * dtype.itemsize:
        raise BackendError(
            f"output {name!r}: backend sent {len(raw)} bytes, shape needs {count * dtype.itemsize}"
        )
    small = count <= _SMALL_TENSOR
    if dtype.name == "BOOL":
        if small:
            return list(map(bool, raw))
        return (np.frombuffer(raw, dtype=np.uint8) != 0).tolist()  # type: ignore[no-any-return]
    code = dtype.typecode
    if small and code is not None and _LITTLE_ENDIAN:
        # array is cheaper than numpy for a handful of values (numpy's per-call overhead).
        numbers: list[Any] = array(code, raw).tolist()
        if dtype.is_float and not _all_finite(numbers, code):
            raise _non_finite(name)
        return numbers
    values: npt.NDArray[Any] = np.frombuffer(raw, dtype=np_dtype)
    if dtype.is_float and not np.isfinite(values).all():
        raise _non_finite(name)
    return values.tolist()  # type: ignore[no-any-return]


def _all_finite(values: list[float], typecode: str) -> bool:
    if typecode == "f":  # float32 magnitudes cannot overflow a float64 sum; inf + -inf = nan
        return math.isfinite(sum(values))
    return all(map(math.isfinite, values))


def _non_finite(name: str) -> BackendError:
    return BackendError(
        f"output {name!r} holds NaN or infinity, which strict JSON cannot represent; "
        f"{_advice(name)}"
    )


def _contents_to_raw(name: str, dtype: _DType, count: int, out: Any) -> bytes:
    """Build the raw little-endian layout from an output's typed ``contents`` field."""
    values = list(getattr(out.contents, dtype.contents_field))
    if len(values) != count:
        raise BackendError(
            f"output {name!r}: backend sent {len(values)} values in "
            f"{dtype.contents_field}, shape needs {count}"
        )
    if dtype.np_dtype is None:
        return _serialize_bytes(bytes(value) for value in values)
    wide: npt.NDArray[Any] = np.asarray(values, dtype=dtype.wide_dtype)
    target = dtype.np_dtype
    if wide.size and target.kind in "iu" and target != wide.dtype:
        info = np.iinfo(target)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise BackendError(f"output {name!r}: a value is out of range for {dtype.name}")
    with np.errstate(over="ignore"):
        return wide.astype(target).tobytes()
