"""Frozen domain types of the placement engine: a Problem goes in, a Plan comes out.

Callers: the operator (``stowplan.operator.inventory`` builds a Problem from API objects), the
standalone server (``stowplan up``), the ``stowplan place`` CLI and the benchmarks. This module
holds data only: no I/O, no solver, no Kubernetes types. Units are in the field names.

Contract: the names and fields below are used by the operator and the agent; add fields with
defaults freely, but do not rename or remove them.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class LatencyProfile(_Frozen):
    """latency(b) = base_ms + per_item_ms * b for a batch of b items on this GPU type."""

    base_ms: float = Field(ge=0)
    per_item_ms: float = Field(ge=0)


class MemoryProfile(_Frozen):
    """memory(b) = weights_mib + per_item_mib * b."""

    weights_mib: float = Field(ge=0)
    per_item_mib: float = Field(ge=0)


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


class Assignment(_Frozen):
    """Replica ``replica`` of ``model`` runs on GPU ``gpu`` (index) of ``node``.

    ``duty_cycle_ms`` is the same for every replica on one GPU; ``busy_ms`` is the time this
    replica's batch of ``batch_size`` takes per cycle, so its GPU share is busy_ms / duty_cycle_ms.
    """

    model: str
    replica: int = Field(ge=0)
    node: str
    gpu: int = Field(ge=0)
    batch_size: int = Field(ge=0)
    duty_cycle_ms: float = Field(gt=0)
    busy_ms: float = Field(ge=0)
    memory_mib: float = Field(ge=0)

    @property
    def gpu_key(self) -> tuple[str, int]:
        return (self.node, self.gpu)

    @property
    def replica_key(self) -> tuple[str, int]:
        return (self.model, self.replica)


class UnplacedReason(StrEnum):
    """Why a replica has no GPU (an expected outcome, not an error)."""

    SLO_BELOW_BASE_LATENCY = "SLOBelowBaseLatency"
    MEMORY_EXCEEDS_EVERY_GPU = "MemoryExceedsEveryGPU"
    NO_MATCHING_NODE = "NoMatchingNode"
    NO_CAPACITY = "NoCapacity"


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
