"""Frozen domain types of the placement engine: a Problem goes in, a Plan comes out.

Callers: the operator (``stowplan.operator.inventory`` builds a Problem from API objects), the
standalone server (``stowplan up``), the ``stowplan place`` CLI and the benchmarks. This module
holds data only: no I/O, no solver, no Kubernetes types. Units are in the field names.

Contract: the names and fields below are used by the operator and the agent; add fields with
defaults freely, but do not rename or remove them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Gpu(_Frozen):
    """One GPU of one node; ``labels`` are the node's labels (for node selectors)."""

    node: str = Field(min_length=1)
    index: int = Field(ge=0)
    memory_mib: int = Field(gt=0)
    gpu_type: str = ""
    labels: Mapping[str, str] = Field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.node, self.index)


class NodeResources(_Frozen):
    """CPU and host memory of one node, shared by every replica on any of its GPUs.

    A node not listed in ``Problem.nodes`` has no CPU/memory limit."""

    node: str = Field(min_length=1)
    cpu_milli: int = Field(ge=0)
    memory_mib: int = Field(ge=0)


class LatencyProfile(_Frozen):
    """latency(b) = base_ms + per_item_ms * b for a batch of b items on this GPU type."""

    base_ms: float = Field(ge=0)
    per_item_ms: float = Field(ge=0)


class MemoryProfile(_Frozen):
    """memory(b) = weights_mib + per_item_mib * b."""

    weights_mib: float = Field(ge=0)
    per_item_mib: float = Field(ge=0)


class BatchingPolicy(StrEnum):
    """How the agent batches a model's requests (``InferenceModel.spec.batching.policy``).

    ``aimd``: one batch per cycle of whatever arrived (the batch the duty cycle gives);
    ``static``: batches of exactly ``static_batch_size`` (as many per cycle as the load needs);
    ``none``: every request runs alone (one batch-1 run per request)."""

    AIMD = "aimd"
    STATIC = "static"
    NONE = "none"


class ModelDemand(_Frozen):
    """A model to place: ``replicas`` copies, each receiving target_qps / replicas."""

    name: str = Field(min_length=1)
    replicas: int = Field(ge=0)
    slo_ms: float = Field(gt=0)
    target_qps: float = Field(ge=0)
    latency: LatencyProfile
    memory: MemoryProfile
    max_batch: int = Field(ge=1)
    priority: int = 0
    node_selector: Mapping[str, str] = Field(default_factory=dict)
    gpu_type: str = ""
    # Fixed demand (a pod of the public GPU-sharing trace): when > 0 each replica takes this many
    # thousandths of every duty cycle whatever the cycle length, needs no batching and holds
    # memory.weights_mib; latency, slo_ms and max_batch are then ignored.
    gpu_milli: int = Field(default=0, ge=0, le=1000)
    # Node resources of each replica (counted once per replica against the node of its GPUs;
    # checked only on nodes listed in ``Problem.nodes``).
    cpu_milli: int = Field(default=0, ge=0)
    host_memory_mib: int = Field(default=0, ge=0)
    # > 1: each replica is a gang of that many whole GPUs of ONE node, each used exclusively
    # (no other replica on them); requires gpu_milli == 1000. memory.weights_mib is then the
    # device memory taken on EACH GPU of the gang.
    gpus_per_replica: int = Field(default=1, ge=1, le=16)
    # how the agent batches (capacity.py prices each policy); static_batch_size only for static
    batching: BatchingPolicy = BatchingPolicy.AIMD
    static_batch_size: int = Field(default=0, ge=0)
    # the longest a request waits for its batch to fill (spec.batching.maxQueueDelayMs; 0 for
    # policy none): a request may wait max(this, duty cycle) for its turn (stowplan.slo)
    max_queue_delay_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _static_size_with_static_only(self) -> ModelDemand:
        if self.batching is BatchingPolicy.STATIC:
            if not 1 <= self.static_batch_size <= self.max_batch:
                raise ValueError(
                    f"batching static needs 1 <= static_batch_size <= max_batch "
                    f"({self.max_batch}), got {self.static_batch_size}"
                )
        elif self.static_batch_size:
            raise ValueError(f"static_batch_size is only for batching static, not {self.batching}")
        return self

    @model_validator(mode="after")
    def _gang_is_whole_gpus(self) -> ModelDemand:
        if self.gpus_per_replica > 1 and self.gpu_milli != 1000:
            raise ValueError(
                f"gpus_per_replica={self.gpus_per_replica} needs gpu_milli=1000 (whole GPUs), "
                f"got gpu_milli={self.gpu_milli}"
            )
        return self


class Assignment(_Frozen):
    """Replica ``replica`` of ``model`` runs on GPU ``gpu`` (index) of ``node``.

    ``duty_cycle_ms`` is the same for every replica on one GPU; ``busy_ms`` is the time this
    replica's batch of ``batch_size`` takes per cycle, so its GPU share is busy_ms / duty_cycle_ms.
    A multi-GPU replica (``ModelDemand.gpus_per_replica > 1``) holds ``gpu`` plus
    ``extra_gpus`` (other indices of the same node), each exclusively; ``busy_ms`` and
    ``memory_mib`` are then per GPU.
    """

    model: str
    replica: int = Field(ge=0)
    node: str
    gpu: int = Field(ge=0)
    batch_size: int = Field(ge=0)
    duty_cycle_ms: float = Field(gt=0)
    busy_ms: float = Field(ge=0)
    memory_mib: float = Field(ge=0)
    extra_gpus: tuple[int, ...] = ()

    @property
    def gpu_key(self) -> tuple[str, int]:
        return (self.node, self.gpu)

    @property
    def gpu_keys(self) -> tuple[tuple[str, int], ...]:
        """Every GPU this replica holds (``gpu_key`` first, then the extra GPUs)."""
        return ((self.node, self.gpu), *((self.node, i) for i in self.extra_gpus))

    @property
    def placement_key(self) -> tuple[str, frozenset[int]]:
        """Where the replica runs, for move counting: its node and set of GPU indices."""
        return (self.node, frozenset((self.gpu, *self.extra_gpus)))

    @property
    def replica_key(self) -> tuple[str, int]:
        return (self.model, self.replica)


def count_moves(current: Sequence[Assignment], assignments: Iterable[Assignment]) -> int:
    """Replicas of ``current`` that ``assignments`` place on other GPUs (a multi-GPU replica
    moves when its node or set of GPUs changes; replicas no longer placed do not count)."""
    if not current:
        return 0
    old = {a.replica_key: a.placement_key if a.extra_gpus else a.gpu_key for a in current}
    moves = 0
    for a in assignments:
        before = old.get(a.replica_key)
        if before is not None and before != (a.placement_key if a.extra_gpus else a.gpu_key):
            moves += 1
    return moves


class UnplacedReason(StrEnum):
    """Why a replica has no GPU (an expected outcome, not an error)."""

    SLO_BELOW_BASE_LATENCY = "SLOBelowBaseLatency"
    MEMORY_EXCEEDS_EVERY_GPU = "MemoryExceedsEveryGPU"
    NO_MATCHING_NODE = "NoMatchingNode"
    NO_CAPACITY = "NoCapacity"
    # CPU/host memory larger than every eligible node, or more GPUs per replica than any
    # eligible node has (NoCapacity when it would fit an empty node but the fleet is full)
    RESOURCES_EXCEED_EVERY_NODE = "ResourcesExceedEveryNode"


class Unplaced(_Frozen):
    model: str
    replica: int = Field(ge=0)
    reason: UnplacedReason
    message: str = ""


class Problem(_Frozen):
    """Everything the engine needs. ``current`` is the running placement (re-plans keep it
    unless moving buys something); ``pinned`` replica keys (model, replica) must not move."""

    gpus: tuple[Gpu, ...]
    models: tuple[ModelDemand, ...]
    current: tuple[Assignment, ...] = ()
    pinned: frozenset[tuple[str, int]] = frozenset()
    memory_reserve_mib: int = Field(default=0, ge=0)
    nodes: tuple[NodeResources, ...] = ()

    @field_validator("nodes")
    @classmethod
    def _unique_node_names(cls, nodes: tuple[NodeResources, ...]) -> tuple[NodeResources, ...]:
        names = [n.node for n in nodes]
        if len(names) != len(set(names)):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"node {dup!r} is listed twice in nodes")
        return nodes

    @field_validator("models")
    @classmethod
    def _unique_model_names(cls, models: tuple[ModelDemand, ...]) -> tuple[ModelDemand, ...]:
        names = [m.name for m in models]
        if len(names) != len(set(names)):
            raise ValueError("model names must be unique")
        return models


class Plan(_Frozen):
    """The engine's answer. ``lower_bound`` is a lower bound on GPUs any plan needs."""

    assignments: tuple[Assignment, ...]
    unplaced: tuple[Unplaced, ...] = ()
    gpus_used: int = Field(ge=0)
    lower_bound: int = Field(ge=0)
    solve_seconds: float = Field(ge=0)
    moves: int = Field(default=0, ge=0)
