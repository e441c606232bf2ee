"""Decode Open Inference Protocol tensors into numpy arrays checked against a model's inputs, and
encode outputs back, in both of the protocol's forms: JSON ``data`` lists and the binary tensor
data extension (raw little-endian bytes after the JSON header; BYTES elements each prefixed
with a 4-byte little-endian length). Pure functions; every problem is an InvalidRequest (HTTP
400) whose message names the tensor and what was expected.

The datatype tables (Open Inference Protocol name <-> numpy dtype <-> ONNX Runtime type string)
live here, with the codec. Callers: :mod:`stowplan.agent.dataplane`, and
:mod:`stowplan.agent.runtime` for the tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stowplan.agent.errors import InvalidRequest, PayloadTooLarge
from stowplan.agent.protocol import RequestInput, RequestOutput, ResponseOutput

#: the response's JSON: orjson writes numeric arrays straight from their buffer (float32 in
#: its shortest form, NaN and infinities as null: JSON has neither)
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

#: the one datatype without a fixed element size: variable-length byte strings
BYTES = "BYTES"

# Open Inference Protocol datatype <-> numpy dtype <-> ONNX Runtime type string.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}
#: each datatype's element as the binary extension sends it (little-endian)
_WIRE_DTYPES: dict[str, np.dtype] = {k: v.newbyteorder("<") for k, v in V2_TO_NUMPY.items()}
ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: shape uses -1 for dynamic dimensions (the batch one first)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def decode_inputs(
    inputs: Sequence[RequestInput],
    specs: Sequence[TensorSpec],
    max_items: int,
    raw: Mapping[str, bytes | memoryview] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Return ({input name: array}, batch items). Every model input must be given exactly once,
    with the model's datatype, a shape matching the model's fixed dimensions, and as many
    elements as the shape says; all inputs must agree on the batch dimension. ``raw`` holds
    the binary contents of the inputs sent with the binary extension (see
    :func:`split_binary_inputs`); the others carry JSON ``data``."""
    given = {}
    for t in inputs:
        if t.name in given:
            raise InvalidRequest(f"input {t.name!r} is given twice")
        given[t.name] = t
    expected = {s.name for s in specs}
    unknown = sorted(set(given) - expected)
    if unknown:
        raise InvalidRequest(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
    missing = sorted(expected - set(given))
    if missing:
        raise InvalidRequest(f"missing input(s) {missing}")
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        t = given[spec.name]
        buf = raw.get(spec.name) if raw else None
        arrays[spec.name] = _decode_one(t, spec) if buf is None else _decode_binary(t, spec, buf)
    return arrays, batch_items(arrays, max_items)


def batch_items(arrays: Mapping[str, np.ndarray], max_items: int) -> int:
    """The batch size of decoded inputs (their first dimension, in the model's input order),
    checked the same for every front end: equal across inputs, at least 1, at most
    ``max_items``."""
    batch: int | None = None
    for arr in arrays.values():
        items = int(arr.shape[0]) if arr.ndim else 1
        if batch is None:
            batch = items
        elif items != batch:
            raise InvalidRequest(f"inputs disagree on the batch dimension ({batch} vs {items})")
    assert batch is not None
    if batch < 1:
        raise InvalidRequest("batch dimension must be at least 1")
    if batch > max_items:
        raise PayloadTooLarge(f"batch of {batch} items exceeds the model's max batch {max_items}")
    return batch


def _check_header(t: RequestInput, spec: TensorSpec) -> int:
    """Datatype and shape against the model; returns the element count."""
    if t.datatype != spec.datatype:
        raise InvalidRequest(
            f"input {t.name!r} has datatype {t.datatype!r}; the model expects {spec.datatype!r}"
        )
    if len(t.shape) != len(spec.shape):
        raise InvalidRequest(
            f"input {t.name!r} has shape {t.shape}; the model expects rank {len(spec.shape)} "
            f"{list(spec.shape)} (-1 = any)"
        )
    for got, want in zip(t.shape, spec.shape, strict=True):
        if got < 0 or (want >= 0 and got != want):
            raise InvalidRequest(
                f"input {t.name!r} has shape {t.shape}; the model expects {list(spec.shape)} "
                "(-1 = any)"
            )
    return math.prod(t.shape)


def _decode_one(t: RequestInput, spec: TensorSpec) -> np.ndarray:
    count = _check_header(t, spec)
    if t.data is None:
        raise InvalidRequest(
            f"input {t.name!r} has neither data nor parameters.binary_data_size "
            "(binary contents after the JSON header)"
        )
    if spec.datatype == BYTES:
        return _decode_json_bytes(t, count)
    dtype = V2_TO_NUMPY[spec.datatype]
    ints_only = dtype.kind in "iub"
    try:
        raw = np.asarray(t.data)  # numbers only give a numeric dtype; anything else: object/str
    except (ValueError, TypeError, OverflowError):
        raise InvalidRequest(
            f"input {t.name!r}: data is not a {spec.datatype} tensor (ragged or mixed nesting)"
        ) from None
    if raw.dtype.kind not in ("iub" if ints_only else "iubf") or raw.dtype.kind == "O":
        kind = "integers" if ints_only else "numbers"
        raise InvalidRequest(f"input {t.name!r}: {spec.datatype} data must be {kind}")
    if raw.size != count:
        raise InvalidRequest(
            f"input {t.name!r}: shape {t.shape} needs {count} elements, got {raw.size}"
        )
    if ints_only and dtype.kind != "b" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidRequest(f"input {t.name!r}: values out of range for {spec.datatype}")
    if dtype.kind == "f" and raw.size:
        # A finite JSON number past the datatype's range (1e39 into FP32) would become inf.
        limit = float(np.finfo(dtype).max)
        biggest = float(np.max(np.abs(raw.astype(np.float64, copy=False))))
        if not math.isfinite(biggest):
            # Infinity and NaN are not JSON (some encoders write them anyway); a client that
            # means them sends the tensor binary.
            raise InvalidRequest(
                f"input {t.name!r}: {spec.datatype} data holds {biggest:g}; JSON numbers must "
                "be finite (send non-finite values with the binary tensor data extension)"
            )
        if biggest > limit:
            raise InvalidRequest(
                f"input {t.name!r}: value {biggest:g} is out of range for {spec.datatype} "
                f"(largest magnitude {limit:g})"
            )
    flat = raw.astype(dtype, copy=False).reshape(-1)
    return flat.reshape(t.shape)


def _decode_json_bytes(t: RequestInput, count: int) -> np.ndarray:
    """BYTES in JSON: a (flat or nested) list of strings, kept as ``str`` (see
    :func:`text_array`)."""
    flat: list[Any] = []
    stack: list[Any] = [t.data]
    while stack:  # flatten without recursion, row-major
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            flat.append(item)
        else:
            raise InvalidRequest(f"input {t.name!r}: BYTES data in JSON must be strings")
    if len(flat) != count:
        raise InvalidRequest(
            f"input {t.name!r}: shape {t.shape} needs {count} elements, got {len(flat)}"
        )
    arr = np.empty(count, dtype=object)
    arr[:] = flat
    return arr.reshape(t.shape)


def binary_size(t: RequestInput) -> int | None:
    """The input's ``parameters.binary_data_size`` (None: the input carries JSON data)."""
    if not t.parameters or "binary_data_size" not in t.parameters:
        return None
    size = t.parameters["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidRequest(
            f"input {t.name!r}: parameters.binary_data_size must be a non-negative integer, "
            f"got {size!r}"
        )
    if t.data is not None:
        raise InvalidRequest(
            f"input {t.name!r} has both data and parameters.binary_data_size; send one"
        )
    return size


def split_binary_inputs(inputs: Sequence[RequestInput], tail: memoryview) -> dict[str, memoryview]:
    """Cut the bytes after the JSON header into the inputs that declare
    ``parameters.binary_data_size``, in the order the header lists them; the sizes must add up
    to exactly the bytes that follow the header."""
    out: dict[str, memoryview] = {}
    offset = 0
    for t in inputs:
        for key in ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"):
            if t.parameters and key in t.parameters:
                raise InvalidRequest(
                    f"input {t.name!r}: parameters.{key}: shared-memory inputs are not supported "
                    "by this server; send the tensor in the body (binary or JSON)"
                )
        size = binary_size(t)
        if size is None:
            continue
        if offset + size > len(tail):
            raise InvalidRequest(
                f"input {t.name!r}: parameters.binary_data_size is {size} bytes but only "
                f"{len(tail) - offset} bytes of binary data follow the JSON header for it"
            )
        out[t.name] = tail[offset : offset + size]
        offset += size
    if offset != len(tail):
        raise InvalidRequest(
            f"{len(tail) - offset} bytes follow the JSON header beyond the inputs' "
            f"binary_data_size total of {offset} (check Inference-Header-Content-Length and "
            "each input's parameters.binary_data_size)"
        )
    return out


def _decode_binary(t: RequestInput, spec: TensorSpec, buf: bytes | memoryview) -> np.ndarray:
    count = _check_header(t, spec)
    if spec.datatype == BYTES:
        return deserialize_bytes(buf, count, t.name).reshape(t.shape)
    dtype = _WIRE_DTYPES[spec.datatype]
    want = count * dtype.itemsize
    if len(buf) != want:
        raise InvalidRequest(
            f"input {t.name!r}: parameters.binary_data_size is {len(buf)} bytes; shape "
            f"{t.shape} of {spec.datatype} needs {want} bytes ({count} x {dtype.itemsize})"
        )
    arr = np.frombuffer(buf, dtype=dtype)
    if dtype.kind == "b" and count and int(arr.view(np.uint8).max()) > 1:
        raise InvalidRequest(f"input {t.name!r}: BOOL bytes must be 0 or 1")
    return arr.reshape(t.shape)


def serialize_bytes(arr: np.ndarray) -> bytes:
    """BYTES tensor -> the protocol's binary form: each element (row-major) as a 4-byte
    little-endian length followed by its bytes (str elements are sent as UTF-8)."""
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        b = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes(buf: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """The protocol's binary BYTES form -> a flat object array of ``count`` ``str`` elements
    (:func:`text_array`); a truncated length prefix, an element running past the end, a wrong
    element count or an element that is not UTF-8 is an InvalidRequest naming the tensor."""
    view = memoryview(buf).cast("B")
    items: list[bytes] = []
    pos, end = 0, len(view)
    while pos < end:
        if pos + 4 > end:
            raise InvalidRequest(
                f"input {name!r}: BYTES element {len(items)} has a truncated 4-byte length prefix"
            )
        size = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if pos + size > end:
            raise InvalidRequest(
                f"input {name!r}: BYTES element {len(items)} declares {size} bytes but only "
                f"{end - pos} remain"
            )
        items.append(bytes(view[pos : pos + size]))
        pos += size
        if len(items) > count:
            break
    if len(items) != count:
        raise InvalidRequest(
            f"input {name!r}: the shape needs {count} BYTES elements, the binary data holds "
            f"{len(items)}{' or more' if len(items) > count else ''}"
        )
    return text_array(items, name)


def text_array(items: Sequence[bytes], name: str) -> np.ndarray:
    """BYTES elements -> a flat object array of ``str``, what ONNX Runtime's tensor(string)
    takes: its Python binding reads an element with ``str()``, so a ``bytes`` element would
    reach the model as its repr (``"b'cat'"``), and a fixed-width ``S`` array without a spare
    byte is read past its end. Elements must be UTF-8 (an InvalidRequest naming the element
    otherwise): ONNX Runtime's strings are text, and its outputs come back decoded."""
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        try:
            arr[i] = item.decode()
        except UnicodeDecodeError as exc:
            raise InvalidRequest(
                f"input {name!r}: BYTES element {i} is not UTF-8 ({exc.reason} at byte "
                f"{exc.start}); this server passes BYTES to ONNX Runtime as text strings"
            ) from None
    return arr


def wants_binary(
    outputs: Sequence[RequestOutput] | None, parameters: Mapping[str, Any] | None
) -> dict[str, bool]:
    """Output name -> whether to send it binary: its own ``parameters.binary_data`` when given,
    else the request's ``parameters.binary_data_output`` (default False: JSON). Unsupported
    output parameters (classification, shared memory) are an InvalidRequest."""
    default = False
    if parameters and "binary_data_output" in parameters:
        default = _flag(parameters["binary_data_output"], "parameters.binary_data_output")
    chosen: dict[str, bool] = {}
    for o in outputs or ():
        p = o.parameters or {}
        for key in ("classification", "shared_memory_region"):
            if p.get(key):
                raise InvalidRequest(
                    f"output {o.name!r}: parameters.{key} is not supported by this server"
                )
        if "binary_data" in p:
            chosen[o.name] = _flag(p["binary_data"], f"output {o.name!r}: parameters.binary_data")
        else:
            chosen[o.name] = default
    chosen[""] = default  # outputs not listed (all of them, when none is)
    return chosen


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where} must be true or false, got {value!r}")
    return value


def encode_response(
    model: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    names: Sequence[str],
    binary: Mapping[str, bool],
) -> tuple[bytes, int | None]:
    """(body, JSON header length) of an inference response. Outputs asked for binary carry
    ``parameters.binary_data_size`` and follow the JSON header, in order; the header length
    is None when no output is binary (the whole body is JSON)."""
    default = binary.get("", False)
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for n in names:
        arr = outputs[n]
        if binary.get(n, default):
            datatype, raw = _binary_output(arr)
            described.append(
                {
                    "name": n,
                    "datatype": datatype,
                    "shape": list(arr.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
            chunks.append(raw)
        else:
            described.append(_json_output(n, arr, as_list=False))
    head: dict[str, Any] = {"model_name": model, "model_version": "1"}
    if request_id is not None:
        head["id"] = request_id
    head["outputs"] = described
    header = orjson.dumps(head, option=_JSON_OPTIONS)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _binary_output(arr: np.ndarray) -> tuple[str, bytes]:
    if arr.dtype.kind in "OSU":
        return BYTES, serialize_bytes(arr)
    datatype = NUMPY_TO_V2.get(arr.dtype)
    if datatype is None:  # pragma: no cover - ORT only returns mapped types
        arr, datatype = arr.astype(np.float32), "FP32"
    return datatype, np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _json_output(name: str, arr: np.ndarray, as_list: bool = True) -> dict[str, Any]:
    """One output's JSON form; ``as_list`` False leaves a numeric output's data a flat array
    (for orjson, which writes it from its buffer), True makes it a list of Python numbers."""
    if arr.dtype.kind in "OSU":
        data: Any = [_text(x) for x in arr.reshape(-1)]
        return {"name": name, "datatype": BYTES, "shape": list(arr.shape), "data": data}
    datatype = NUMPY_TO_V2.get(arr.dtype)
    if datatype is None:  # pragma: no cover - ORT only returns mapped types
        arr, datatype = arr.astype(np.float32), "FP32"
    flat = np.ascontiguousarray(arr.reshape(-1), dtype=arr.dtype.newbyteorder("="))
    if not as_list:
        return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": flat}
    data = flat.tolist()
    if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
        # JSON has no NaN/Infinity; a model that produces them answers null for those cells.
        data = [x if math.isfinite(x) else None for x in data]
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def _text(item: object) -> str:
    if isinstance(item, str):
        return item
    raw: bytes = bytes(item)  # type: ignore[call-overload]
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidRequest(
            "a BYTES output is not UTF-8 and cannot be sent as JSON; ask for it with "
            "parameters.binary_data true"
        ) from None


def encode_output(name: str, arr: np.ndarray) -> ResponseOutput:
    """One output in JSON form, as the protocol's message type."""
    return ResponseOutput(**_json_output(name, arr))
