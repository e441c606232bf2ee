"""What the agent reports about itself: one typed :class:`ModelReport` per served model (state,
devices, batch cap, residency, qps, p99, mean batch, and the planned batch and GPU time per
duty cycle beside the observed ones) and the device samples (utilisation and
memory) that also feed the Prometheus gauges.

Callers: :mod:`stowplan.agent.server` (``GET /v2/models``), :mod:`stowplan.agent.gpunode_sync`
(the GPUNode status), :mod:`stowplan.agentbench`. Reads the registry; changes nothing in it.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from stowplan.agent.registry import ModelRegistry
from stowplan.agent.telemetry import DeviceSample


class ModelReport(BaseModel):
    """One served model as this agent sees it now (the row of ``GET /v2/models``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
    #: what placement planned for the primary replica (0: standalone without a plan)
    planned_batch: int = 0
    duty_cycle_ms: float = 0.0
    planned_busy_ms: float = 0.0  # GPU time per duty cycle the plan budgets one replica
    #: observed GPU time per duty cycle, mean over the model's replicas on this machine (None:
    #: no duty cycle planned)
    busy_ms: float | None = None


def model_reports(registry: ModelRegistry) -> list[ModelReport]:
    reports = []
    for m in list(registry.models.values()):
        qps, p99, mean_batch = m.stats.snapshot()
        cycle_ms = m.config.duty_cycle_ms
        lanes = max(1, len(m.lanes))
        reports.append(
            ModelReport(
                name=m.name,
                state=m.state.value,
                reason=m.reason,
                device=m.config.device,
                devices=sorted(m.lanes) or [m.config.device],
                policy=m.config.batching.policy.value,
                batch_cap=m.policy.cap if m.policy is not None else 0,
                slo_ms=m.config.slo_ms,
                resident=registry.is_resident(m),
                qps=round(qps, 3),
                p99_ms=None if p99 is None else round(p99, 3),
                mean_batch=None
                if mean_batch is None or math.isnan(mean_batch)
                else round(mean_batch, 2),
                planned_batch=m.config.planned_batch,
                duty_cycle_ms=cycle_ms,
                planned_busy_ms=m.config.busy_ms,
                busy_ms=round(m.stats.busy_fraction() / lanes * cycle_ms, 3) if cycle_ms else None,
            )
        )
    return reports


def device_samples(registry: ModelRegistry) -> list[DeviceSample]:
    def busy(index: int) -> float:
        ex = registry.executors.get(index)
        return ex.utilisation() if ex is not None else 0.0

    samples = registry.telemetry.sample(busy, registry.memory_used_bytes)
    registry.metrics.set_devices(samples)
    return samples


__all__ = ["ModelReport", "device_samples", "model_reports"]
