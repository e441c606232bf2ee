"""Decode Open Inference Protocol JSON tensors into numpy arrays checked against a model's inputs,
and encode outputs back. Pure functions; every problem is an InvalidRequest (HTTP 400) whose
message names the tensor and what was expected.

The datatype tables (Open Inference Protocol name <-> numpy dtype <-> ONNX Runtime type string)
live here, with the codec. Callers: :mod:`stowplan.agent.dataplane`, and
:mod:`stowplan.agent.runtime` for the tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stowplan.agent.errors import InvalidRequest, PayloadTooLarge
from stowplan.agent.protocol import RequestInput, ResponseOutput

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
    inputs: Sequence[RequestInput], specs: Sequence[TensorSpec], max_items: int
) -> tuple[dict[str, np.ndarray], int]:
    """Return ({input name: array}, batch items). Every model input must be given exactly once,
    with the model's datatype, a shape matching the model's fixed dimensions, and as many
    elements as the shape says; all inputs must agree on the batch dimension."""
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
    batch: int | None = None
    for spec in specs:
        t = given[spec.name]
        arr = _decode_one(t, spec)
        items = int(arr.shape[0]) if arr.ndim else 1
        if batch is None:
            batch = items
        elif items != batch:
            raise InvalidRequest(f"inputs disagree on the batch dimension ({batch} vs {items})")
        arrays[spec.name] = arr
    assert batch is not None
    if batch < 1:
        raise InvalidRequest("batch dimension must be at least 1")
    if batch > max_items:
        raise PayloadTooLarge(f"batch of {batch} items exceeds the model's max batch {max_items}")
    return arrays, batch


def _decode_one(t: RequestInput, spec: TensorSpec) -> np.ndarray:
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
    count = math.prod(t.shape)
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
        if math.isfinite(biggest) and biggest > limit:
            raise InvalidRequest(
                f"input {t.name!r}: value {biggest:g} is out of range for {spec.datatype} "
                f"(largest magnitude {limit:g})"
            )
    flat = raw.astype(dtype, copy=False).reshape(-1)
    return flat.reshape(t.shape)


def encode_output(name: str, arr: np.ndarray) -> ResponseOutput:
    datatype = NUMPY_TO_V2.get(arr.dtype, "FP32")
    if datatype not in NUMPY_TO_V2.values():  # pragma: no cover - ORT only returns mapped types
        arr = arr.astype(np.float32)
    data = arr.reshape(-1).tolist()
    if arr.dtype.kind == "f":
        # JSON has no NaN/Infinity; a model that produces them answers null for those cells.
        data = [x if math.isfinite(x) else None for x in data]
    return ResponseOutput(name=name, shape=list(arr.shape), datatype=datatype, data=data)
