"""Open Inference Protocol (KServe v2) REST message types, as pydantic models.

FastAPI turns these into the OpenAPI document that the fuzz tests (schemathesis) drive.
Data only. Callers: :mod:`stowplan.agent.server` and :mod:`stowplan.agent.tensors`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_NAME = r"^[A-Za-z0-9_.:/-]{1,256}$"


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RequestInput(_Msg):
    name: str = Field(max_length=256)
    shape: list[int] = Field(max_length=16)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="Tensor contents, flat or nested, row-major.")


class RequestOutput(_Msg):
    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Msg):
    id: str | None = Field(default=None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=64)
    outputs: list[RequestOutput] | None = Field(default=None, max_length=64)


class ResponseOutput(_Msg):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferenceResponse(_Msg):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(_Msg):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Msg):
    name: str
    versions: list[str] = Field(default_factory=lambda: ["1"])
    platform: str = "onnxruntime_onnx"
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    state: str
    reason: str = ""


class ModelReady(_Msg):
    name: str
    ready: bool


class ServerMetadata(_Msg):
    name: str
    version: str
    extensions: list[str]


class ServerLive(_Msg):
    live: bool


class ServerReady(_Msg):
    ready: bool


class ErrorBody(_Msg):
    error: str


class ModelStatus(_Msg):
    name: str
    state: str
    reason: str = ""
    device: int
    devices: list[int] = Field(default_factory=list)  # one per replica on this machine
    policy: str
    batch_cap: int
    slo_ms: float
    resident: bool | None = None  # in the device-memory pool (False: offloaded to host)
    qps: float
    p99_ms: float | None
    mean_batch: float | None


class ModelIndex(_Msg):
    models: list[ModelStatus]
