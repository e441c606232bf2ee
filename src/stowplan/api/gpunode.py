"""The ``GPUNode`` custom resource (cluster-scoped; one per GPU node, named after the Node).

The operator owns ``spec.assignments`` (what should run where); the agent on that node owns
``status`` (what its GPUs and models actually do) and never writes spec. The object's labels
mirror the Node's labels so that ``InferenceModel.spec.nodeSelector`` can match them.

Callers: the operator (reads status for the inventory, writes spec), the agent (watches its own
object, writes status), the CRD generator. Pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stowplan.api.inferencemodel import Batching, ModelSource, ResourceQuantities
from stowplan.api.meta import Condition, ObjectMeta, WireModel

KIND = "GPUNode"
PLURAL = "gpunodes"
SINGULAR = "gpunode"
SHORT_NAMES = ("gn",)
#: the label (value "true") and the NoSchedule taint (same key) of the GPU nodes stowplan owns:
#: only the agent and stowplan's capacity-request pods tolerate it (README, "GPU ownership")
POOL_LABEL = "stowplan.io/gpu-node"


class Assignment(WireModel):
    """One replica the operator wants this node to run: everything the agent needs to serve it
    as planned (written by ``stowplan.demands.node_assignment``, read by
    ``stowplan.agent.config.model_config``; every field is read)."""

    model: str = Field(description="The InferenceModel as namespace/name.")
    replica: int = Field(ge=0, description="Replica index.")
    gpu: int = Field(ge=0, description="GPU index on this node.")
    source: ModelSource = Field(description="Where to load the model from.")
    batch_size: int = Field(
        alias="batchSize", ge=0, description="Planned items per batch (AIMD starts there)."
    )
    max_batch: int = Field(alias="maxBatch", ge=1, description="Largest batch the model takes.")
    duty_cycle_ms: float = Field(alias="dutyCycleMs", gt=0, description="GPU duty cycle, in ms.")
    busy_ms: float = Field(
        alias="busyMs", ge=0, description="Planned GPU time per cycle (the replica's budget), ms."
    )
    memory_mib: float = Field(
        alias="memoryMiB", ge=0, description="Planned device memory: weights + workspace, MiB."
    )
    weights_mib: float = Field(
        default=0, alias="weightsMiB", ge=0, description="The weights' share of memoryMiB."
    )
    per_item_mib: float = Field(
        default=0, alias="perItemMiB", ge=0, description="Activation memory per batch item, MiB."
    )
    slo_ms: float = Field(alias="sloMs", gt=0, description="p99 latency target, in ms.")
    priority: int = Field(default=0, ge=-1000, le=1000, description="The model's priority.")
    batching: Batching = Field(default_factory=Batching, description="Batching policy.")


class GPUNodeSpec(WireModel):
    """What the operator wants this node to run (written by the operator only)."""

    assignments: list[Assignment] = Field(
        default_factory=list, description="Replicas placed on this node (operator-owned)."
    )


class GpuInfo(WireModel):
    """One GPU as NVML (or the simulated device) reports it."""

    index: int = Field(ge=0, description="Device index.")
    uuid: str = Field(default="", description="Device UUID.")
    name: str = Field(default="", description="Product name, e.g. NVIDIA H100 80GB HBM3.")
    memory_total_mib: int = Field(alias="memoryTotalMiB", ge=0, description="Total memory.")
    memory_used_mib: int = Field(default=0, alias="memoryUsedMiB", ge=0, description="Used.")
    utilization_percent: float = Field(
        default=0, alias="utilizationPercent", ge=0, le=100, description="Busy time, percent."
    )
    simulated: bool = Field(default=False, description="True when no real GPU backs it.")


ModelState = Literal["Loading", "Ready", "Offloaded", "Failed"]


class ResidentModel(WireModel):
    """What the agent observes for one assigned replica."""

    model: str = Field(description="namespace/name.")
    replica: int = Field(ge=0, description="Replica index.")
    gpu: int = Field(ge=0, description="GPU index.")
    state: ModelState = Field(description="Loading, Ready, Offloaded or Failed.")
    reason: str = Field(default="", description="Why it failed, when it did.")
    qps: float = Field(default=0, ge=0, description="Requests per second (recent window).")
    p99_ms: float | None = Field(default=None, alias="p99Ms", description="p99 latency, ms.")
    batch_size: float | None = Field(default=None, alias="batchSize", description="Mean batch.")
    planned_batch_size: int = Field(
        default=0, alias="plannedBatchSize", ge=0, description="The batch placement planned."
    )
    planned_busy_ms: float = Field(
        default=0,
        alias="plannedBusyMs",
        ge=0,
        description="GPU time per duty cycle placement budgeted this replica, ms.",
    )
    busy_ms: float | None = Field(
        default=None,
        alias="busyMs",
        ge=0,
        description="GPU time per duty cycle this replica used (recent window), ms.",
    )


class GPUNodeStatus(WireModel):
    """What the agent on this node observes (written by the agent only)."""

    gpus: list[GpuInfo] = Field(default_factory=list, description="The node's GPUs.")
    gpu_count: int = Field(default=0, alias="gpuCount", ge=0, description="len(gpus).")
    models: list[ResidentModel] = Field(default_factory=list, description="Assigned replicas.")
    ready_models: int = Field(default=0, alias="readyModels", ge=0, description="Ready ones.")
    heartbeat: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="Last time the agent wrote this status (RFC 3339).",
    )
    agent_version: str = Field(default="", alias="agentVersion", description="Agent version.")
    endpoint: str = Field(default="", description="Where the agent serves inference.")
    allocatable: ResourceQuantities | None = Field(
        default=None,
        description=(
            "CPU and host memory this node offers stowplan's replicas (the agent's own "
            "container limits less its reserve); the replicas' resources.requests on this node "
            "add up to at most this. Absent, or a field of it absent: no limit."
        ),
    )
    conditions: list[Condition] = Field(default_factory=list, description="Ready.")


class GPUNode(WireModel):
    """A GPU node as stowplan sees it."""

    api_version: Literal["stowplan.io/v1alpha1"] = Field(
        default="stowplan.io/v1alpha1", alias="apiVersion"
    )
    kind: Literal["GPUNode"] = "GPUNode"
    metadata: ObjectMeta
    spec: GPUNodeSpec = Field(default_factory=GPUNodeSpec)
    status: GPUNodeStatus | None = None
