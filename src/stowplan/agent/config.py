"""The agent's own configuration types: what to serve (ModelConfig) and how (AgentSettings).

These are the agent's domain types, independent of the Kubernetes wire types. The one
translation of placed replicas into them is :func:`model_config`: ``GPUNode`` assignments (as
:func:`stowplan.demands.node_assignment` writes them, from the InferenceModel spec and the plan)
in, the config of the model they serve out. Cluster mode (:mod:`stowplan.agent.gpunode_sync`)
calls it on its node's ``GPUNode.spec``, standalone mode (:mod:`stowplan.standalone`) on the
assignments of its own plan, so both serve a model alike. Data and pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stowplan import slo
from stowplan.api.gpunode import Assignment
from stowplan.api.inferencemodel import Batching


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Policy(StrEnum):
    """Batch-forming policies. ``triton`` is the baseline: the largest batch available up to
    max_batch after waiting at most max_queue_delay (Triton's dynamic batcher)."""

    AIMD = "aimd"
    STATIC = "static"
    NONE = "none"
    TRITON = "triton"


class BatchingConfig(_Frozen):
    policy: Policy = Policy.AIMD
    max_queue_delay_ms: float = Field(default=5.0, ge=0)
    additive_step: int = Field(default=1, ge=1)
    multiplicative_decrease: float = Field(default=0.9, gt=0, lt=1)
    static_batch_size: int | None = Field(default=None, ge=1)
    #: AIMD's latency target for one batch; None derives it from the SLO (see batching.py).
    target_batch_ms: float | None = Field(default=None, gt=0)


class ReplicaSlot(_Frozen):
    """One more replica of a model on another device of this machine (from placement)."""

    device: int = Field(ge=-1)
    duty_cycle_ms: float = Field(default=0.0, ge=0)
    busy_ms: float = Field(default=0.0, ge=0)
    #: Memory placement planned for this replica (0: none planned; see ModelConfig).
    planned_memory_mib: float = Field(default=0.0, ge=0)
    #: The batch placement planned for this replica (AIMD starts there; 0: none planned).
    planned_batch: int = Field(default=0, ge=0)
    #: This replica's batching settings: its own batch-fill wait and AIMD target from its own
    #: duty cycle and busy time (:func:`batching_config`); None: the model's.
    batching: BatchingConfig | None = None


class ModelConfig(_Frozen):
    """One model (one replica) this agent serves on one device."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    uri: str = Field(min_length=1)
    slo_ms: float = Field(default=100.0, gt=0)
    max_batch: int = Field(default=64, ge=1)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    #: Device index on this node; -1 is the CPU.
    device: int = Field(default=0, ge=-1)
    #: From placement: the device's duty cycle and this model's busy time per cycle (0: unknown).
    duty_cycle_ms: float = Field(default=0.0, ge=0)
    busy_ms: float = Field(default=0.0, ge=0)
    priority: int = 0
    #: Device memory the model needs besides its weights, per batch item (for residency).
    per_item_memory_mib: float = Field(default=0.0, ge=0)
    #: From placement: the memory planned for the primary replica and the weights' share of
    #: it. When set, the residency pool reserves exactly this, so placement and agent agree.
    planned_memory_mib: float = Field(default=0.0, ge=0)
    weights_memory_mib: float = Field(default=0.0, ge=0)
    #: From placement: the primary replica's planned batch (AIMD starts there; 0: none planned).
    planned_batch: int = Field(default=0, ge=0)
    #: Further replicas on other devices, served under the same name (least-queued routing).
    replicas: tuple[ReplicaSlot, ...] = ()
    #: Directory that relative file:// URIs are resolved against (the manifest's folder).
    base_dir: Path | None = None

    @model_validator(mode="after")
    def _static_needs_size(self) -> ModelConfig:
        if self.batching.policy is Policy.STATIC and self.batching.static_batch_size is None:
            raise ValueError("batching.static_batch_size is required when policy is static")
        return self


class DeviceSpec(_Frozen):
    """A device the agent schedules onto. ``simulated`` devices run on the CPU and report the
    executor's busy time as utilisation."""

    index: int = Field(ge=-1)
    name: str
    uuid: str
    memory_total_bytes: int = Field(ge=0)
    simulated: bool = True


class AgentSettings(_Frozen):
    node_name: str = "local"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: Largest request body accepted (HTTP 413 above it).
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: Most requests queued per model before new ones get HTTP 503.
    max_queue_requests: int = Field(default=4096, ge=1)
    #: Admission (:mod:`stowplan.agent.admission`): most inference requests, HTTP and gRPC
    #: together, taken in and not yet answered; past it a new one is refused before its body is
    #: read or decoded (HTTP 503 + Retry-After, gRPC UNAVAILABLE). A lone request always enters.
    max_inflight_requests: int = Field(default=1024, ge=1)
    #: Admission: most request-body bytes of those requests (16 bodies at the largest
    #: ``max_body_bytes``).
    max_inflight_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    #: Requests still queued past their SLO deadline are answered 503 instead of run late.
    drop_expired: bool = True
    #: Where http(s) models are downloaded to.
    cache_dir: Path = Path.home() / ".cache" / "stowplan" / "models"
    #: Share of each device's memory reserved once as the model pool (weights + workspaces are
    #: carved from it; idle models are offloaded LRU when it is full). 0 disables residency.
    memory_pool_fraction: float = Field(default=0.9, ge=0, le=1)
    #: ONNX Runtime intra-op threads per session (0: ORT default).
    intra_op_threads: int = Field(default=0, ge=0)
    #: When set, each device's pool records its load/offload/prefetch sequence and the agent
    #: writes it to ``DIR/device-N.stwres.json`` on close (``stowplan memsim`` replays it).
    residency_trace_dir: Path | None = None


class PlacedReplica(Protocol):
    """What the agent needs of a placed replica (placement's Assignment or GPUNode's)."""

    @property
    def gpu(self) -> int: ...
    @property
    def duty_cycle_ms(self) -> float: ...
    @property
    def busy_ms(self) -> float: ...
    @property
    def memory_mib(self) -> float: ...
    @property
    def batch_size(self) -> int: ...


def extra_slots(
    replicas: Sequence[PlacedReplica], batching: Batching | None = None, slo_ms: float = 0.0
) -> tuple[ReplicaSlot, ...]:
    """Slots for the replicas after the first, one per device other than the first's, each
    with its own plan: duty cycle, busy time, memory, batch and (given the spec's
    ``batching`` and the SLO) the batching settings :func:`batching_config` derives from them,
    not the first replica's."""
    seen = {replicas[0].gpu} if replicas else set()
    slots = []
    for r in replicas[1:]:
        if r.gpu not in seen:
            seen.add(r.gpu)
            own = None
            if batching is not None:
                own = batching_config(batching, slo_ms, r.duty_cycle_ms, r.busy_ms)
            slots.append(
                ReplicaSlot(
                    device=r.gpu,
                    duty_cycle_ms=r.duty_cycle_ms,
                    busy_ms=r.busy_ms,
                    planned_memory_mib=r.memory_mib,
                    planned_batch=r.batch_size,
                    batching=own,
                )
            )
    return tuple(slots)


def batching_config(
    spec: Batching, slo_ms: float = 0.0, duty_cycle_ms: float = 0.0, busy_ms: float = 0.0
) -> BatchingConfig:
    """The agent's batching settings from an InferenceModel's ``spec.batching``, for a lane
    with the SLO ``slo_ms`` planned at ``busy_ms`` per cycle of ``duty_cycle_ms`` (0: unplanned,
    the spec as it is). A planned lane waits for a batch to fill up to
    :func:`stowplan.slo.batch_wait_ms` (the plan's collection window, so the agent runs the
    batches the plan priced, not more and smaller ones), and AIMD's target is
    :func:`stowplan.slo.batch_target_ms` of the plan's cycle, busy time and the spec's bound, the
    same formula placement checked (so the planned batch is within it)."""
    planned = duty_cycle_ms > 0
    target = None
    if planned and spec.policy.value == Policy.AIMD.value:
        extra_wait_ms = slo.wait_beyond_cycle_ms(spec.max_queue_delay_ms, duty_cycle_ms)
        target = slo.batch_target_ms(slo_ms, duty_cycle_ms, busy_ms, extra_wait_ms)
    return BatchingConfig(
        policy=Policy(spec.policy.value),
        max_queue_delay_ms=slo.batch_wait_ms(spec.max_queue_delay_ms, duty_cycle_ms),
        additive_step=spec.additive_step,
        multiplicative_decrease=spec.multiplicative_decrease,
        static_batch_size=spec.static_batch_size,
        target_batch_ms=target,
    )


def model_config(
    name: str, assignments: Sequence[Assignment], base_dir: Path | None = None
) -> ModelConfig:
    """The config of the model served as ``name`` for its replicas ``assignments`` on this
    node (one ``GPUNode`` assignment each, at least one; the lowest replica's GPU is primary,
    replicas on other GPUs become extra lanes): the one translation of a plan into what the
    agent does. Raises ``ValueError`` for no assignments."""
    if not assignments:
        raise ValueError(f"model {name!r}: no assignments to serve")
    replicas = sorted(assignments, key=lambda a: a.replica)
    first = replicas[0]
    return ModelConfig(
        name=name,
        uri=first.source.uri,
        slo_ms=first.slo_ms,
        max_batch=first.max_batch,
        batching=batching_config(first.batching, first.slo_ms, first.duty_cycle_ms, first.busy_ms),
        device=first.gpu,
        duty_cycle_ms=first.duty_cycle_ms,
        busy_ms=first.busy_ms,
        priority=first.priority,
        per_item_memory_mib=first.per_item_mib,
        planned_memory_mib=first.memory_mib,
        weights_memory_mib=first.weights_mib,
        planned_batch=first.batch_size,
        replicas=extra_slots(replicas, first.batching, first.slo_ms),
        base_dir=base_dir,
    )


def unplanned(config: ModelConfig, batching: Batching) -> ModelConfig:
    """``config`` served best-effort, without a plan (standalone mode, a model placement could
    not place): no duty cycle, budget, planned memory or batch, no extra replicas, and the
    spec's own batch-fill bound (``batching``)."""
    return config.model_copy(
        update={
            "batching": batching_config(batching),
            "duty_cycle_ms": 0.0,
            "busy_ms": 0.0,
            "planned_memory_mib": 0.0,
            "planned_batch": 0,
            "replicas": (),
        }
    )
