"""Decode an Open Inference Protocol gRPC ``ModelInferRequest`` into numpy arrays checked
against a model's inputs, and encode outputs into a ``ModelInferResponse``. Pure functions;
every problem is an InvalidRequest (PayloadTooLarge for a batch over the model's limit) whose
message names the tensor and what was expected, as :mod:`stowplan.agent.tensors` does for JSON.

Inputs come as ``raw_input_contents`` (one little-endian, row-major byte string per input, in
the order of ``inputs``; zero-copy) or as typed ``contents`` (the repeated field of the
datatype: ``int_contents`` for INT8/16/32, ``uint_contents`` for UINT8/16/32, ...); never both.
Outputs always go back as ``raw_output_contents``, as Triton answers, which both tritonclient and
KServe's client read. Callers: :mod:`stowplan.agent.grpc_server`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from stowplan.agent.errors import InvalidRequest
from stowplan.agent.oip import grpc_predict_v2_pb2 as pb
from stowplan.agent.tensors import (
    BYTES,
    NUMPY_TO_V2,
    V2_TO_NUMPY,
    TensorSpec,
    batch_items,
    deserialize_bytes,
    text_array,
)

# datatype -> the typed-contents field that carries it (FP16 has none: raw only)
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_request(
    request: pb.ModelInferRequest, specs: Sequence[TensorSpec], max_items: int
) -> tuple[dict[str, np.ndarray], int, list[str]]:
    """Return ({input name: array}, batch items, requested output names)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries; the request names "
            f"{len(request.inputs)} input(s) (one entry per input, in their order)"
        )
    given: dict[str, tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]] = {}
    for i, t in enumerate(request.inputs):
        if t.name in given:
            raise InvalidRequest(f"input {t.name!r} is given twice")
        if raw and t.HasField("contents") and t.contents.ByteSize():
            raise InvalidRequest(
                f"input {t.name!r} has contents while the request uses raw_input_contents "
                "(use one or the other)"
            )
        given[t.name] = (t, raw[i] if raw else None)
    expected = {s.name for s in specs}
    unknown = sorted(set(given) - expected)
    if unknown:
        raise InvalidRequest(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
    missing = sorted(expected - set(given))
    if missing:
        raise InvalidRequest(f"missing input(s) {missing}")
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        tensor, data = given[spec.name]
        arrays[spec.name] = _decode_one(tensor, data, spec)
    return arrays, batch_items(arrays, max_items), [o.name for o in request.outputs]


def _decode_one(
    t: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, spec: TensorSpec
) -> np.ndarray:
    shape = [int(d) for d in t.shape]
    if t.datatype != spec.datatype:
        raise InvalidRequest(
            f"input {t.name!r} has datatype {t.datatype!r}; the model expects {spec.datatype!r}"
        )
    if len(shape) != len(spec.shape) or any(
        got < 0 or (want >= 0 and got != want) for got, want in zip(shape, spec.shape, strict=False)
    ):
        raise InvalidRequest(
            f"input {t.name!r} has shape {shape}; the model expects {list(spec.shape)} (-1 = any)"
        )
    count = math.prod(shape)
    if spec.datatype == BYTES:
        if raw is not None:  # each element a 4-byte little-endian length, then its bytes
            return deserialize_bytes(raw, count, t.name).reshape(shape)
        items = list(t.contents.bytes_contents)
        if len(items) != count:
            raise InvalidRequest(
                f"input {t.name!r}: shape {shape} needs {count} elements in "
                f"contents.bytes_contents, got {len(items)}"
            )
        return text_array(items, t.name).reshape(shape)
    dtype = V2_TO_NUMPY[spec.datatype]
    if raw is not None:
        need = count * dtype.itemsize
        if len(raw) != need:
            raise InvalidRequest(
                f"input {t.name!r}: raw_input_contents has {len(raw)} bytes; shape {shape} of "
                f"{spec.datatype} needs {need}"
            )
        if dtype.kind == "b" and raw and max(raw) > 1:
            raise InvalidRequest(f"input {t.name!r}: BOOL bytes must be 0 or 1")
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    field = CONTENTS_FIELD.get(spec.datatype)
    if field is None:
        raise InvalidRequest(
            f"input {t.name!r}: {spec.datatype} has no typed contents field; send it in "
            "raw_input_contents"
        )
    values = getattr(t.contents, field)
    if len(values) != count:
        raise InvalidRequest(
            f"input {t.name!r}: shape {shape} needs {count} elements in contents.{field}, "
            f"got {len(values)}"
        )
    wide: np.ndarray = np.array(values, dtype=_WIDE[field])
    if dtype.kind in "iu" and wide.size and dtype.itemsize < wide.dtype.itemsize:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidRequest(
                f"input {t.name!r}: values out of range for {spec.datatype} "
                f"({info.min}..{info.max})"
            )
    return wide.astype(dtype, copy=False).reshape(shape)


_WIDE: dict[str, type] = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def encode_response(
    model_name: str, request_id: str, outputs: Mapping[str, np.ndarray]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model_name, model_version="1", id=request_id)
    for name, arr in outputs.items():
        datatype, blob = _raw(arr)
        response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        response.raw_output_contents.append(blob)
    return response


def _raw(arr: np.ndarray) -> tuple[str, bytes]:
    if arr.dtype.kind in "OSU":  # strings: BYTES, each element length-prefixed
        parts = []
        for x in arr.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return "BYTES", b"".join(parts)
    datatype = NUMPY_TO_V2.get(arr.dtype)
    if datatype is None:  # pragma: no cover - ONNX Runtime returns mapped types only
        arr, datatype = arr.astype(np.float32), "FP32"
    return datatype, np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


__all__ = ["CONTENTS_FIELD", "decode_request", "encode_response"]
