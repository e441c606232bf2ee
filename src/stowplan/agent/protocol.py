"""Open Inference Protocol (KServe v2) REST message types, as pydantic models, and the JSON
shapes of the Triton-only endpoints that Triton's clients call (model configuration,
repository index, inference statistics).

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
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="binary_data_size: the input's bytes follow the JSON header "
        "(binary tensor data extension) instead of data.",
    )
    data: list[Any] | None = Field(
        default=None, description="Tensor contents, flat or nested, row-major."
    )


class RequestOutput(_Msg):
    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Msg):
    id: str | None = Field(default=None, max_length=256)
    # Not in the protocol's request body, but KServe's SDK sends them: checked against the URL.
    model_name: str | None = Field(default=None, max_length=256)
    model_version: str | None = Field(default=None, max_length=64)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=64)
    outputs: list[RequestOutput] | None = Field(default=None, max_length=64)


class ResponseOutput(_Msg):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None  # binary_data_size when the output is binary
    data: list[Any] | None = None


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
    planned_batch: int = Field(default=0, description="Planned batch (0: no plan)")
    duty_cycle_ms: float = Field(default=0.0, description="Planned duty cycle (0: no plan)")
    planned_busy_ms: float = Field(
        default=0.0, description="GPU time per duty cycle the plan budgets one replica"
    )
    busy_ms: float | None = Field(
        default=None, description="Observed GPU time per duty cycle, mean over the replicas"
    )


class ModelIndex(_Msg):
    models: list[ModelStatus]


# -- Triton-only endpoints (the JSON of Triton's model_config.proto / ModelStatistics) ------


class ConfigTensor(_Msg):
    name: str
    data_type: str = Field(description="TYPE_FP32-style, as in Triton's model configuration")
    dims: list[int] = Field(description="Without the batch dimension when max_batch_size > 0")


class ConfigParameter(_Msg):
    string_value: str


class ModelConfigResponse(_Msg):
    name: str
    platform: str = "onnxruntime_onnx"
    backend: str = "onnxruntime"
    max_batch_size: int
    input: list[ConfigTensor]
    output: list[ConfigTensor]
    parameters: dict[str, ConfigParameter] = Field(default_factory=dict)


class RepositoryModel(_Msg):
    name: str
    version: str = "1"
    state: str = Field(description="READY or UNAVAILABLE")
    reason: str = ""


class StatDuration(_Msg):
    count: int
    ns: int


class InferStats(_Msg):
    success: StatDuration
    fail: StatDuration
    queue: StatDuration
    compute_input: StatDuration
    compute_infer: StatDuration
    compute_output: StatDuration
    cache_hit: StatDuration
    cache_miss: StatDuration


class BatchStats(_Msg):
    batch_size: int
    compute_input: StatDuration
    compute_infer: StatDuration
    compute_output: StatDuration


class ModelStatistics(_Msg):
    name: str
    version: str = "1"
    last_inference: int = Field(description="Milliseconds since the epoch; 0: never")
    inference_count: int
    execution_count: int
    inference_stats: InferStats
    batch_stats: list[BatchStats]


class InferenceStatistics(_Msg):
    model_stats: list[ModelStatistics]
