"""The operator's settings: one frozen object, read once from the environment at start-up.

Laid out like kopf's ``OperatorSettings``: one group per concern (``placement``, ``nodes``,
``loop``, ``leader``, ``api``, ``metrics``, ``autoscaling``), each field with its unit in its
name and the environment variable that sets it (``ENV`` below; the table in operator/README.md).
:func:`OperatorSettings.from_env` is called once by :mod:`stowplan.operator.handlers`; every
other module receives the object (or one group of it) as a parameter and reads no environment.
Invalid values fail start-up with the variable's name (a pydantic ``ValidationError``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlacementSettings(_Group):
    #: CP-SAT / price-and-branch search budget per pass; 0 = best-fit only.
    solver_time_limit_s: float = Field(default=0.0, ge=0)
    #: Memory kept free on every GPU.
    memory_reserve_mib: int = Field(default=0, ge=0)


class NodeSettings(_Group):
    #: A GPUNode whose agent heartbeat is older offers no GPUs; its replicas are re-placed.
    stale_after_s: float = Field(default=120.0, gt=0)
    #: A moved replica's old copy is removed after this long even if the new one is not Ready.
    move_timeout_s: float = Field(default=300.0, gt=0)
    #: A copy about to be removed leaves its model's EndpointSlice at least this long before
    #: its agent is told to stop serving it (kube-proxy's time to drop the address).
    endpoint_drain_s: float = Field(default=5.0, ge=0)


class LoopSettings(_Group):
    #: Periodic pass even without watch events.
    resync_s: float = Field(default=30.0, gt=0)
    #: Quiet time after a watch event before the pass starts (coalesces bursts).
    debounce_s: float = Field(default=0.2, ge=0)
    #: Delays after consecutive failed passes; the last one repeats (kopf's ``error_delays``).
    retry_backoff_s: tuple[float, ...] = Field(default=(1.0, 2.0, 5.0, 10.0, 20.0, 30.0))
    #: The liveness probe fails when no pass succeeded for this many resync periods.
    liveness_resyncs: int = Field(default=5, ge=1)

    @field_validator("retry_backoff_s")
    @classmethod
    def _non_empty(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(d < 0 for d in v):
            raise ValueError("a non-empty sequence of non-negative seconds")
        return v


class LeaderSettings(_Group):
    lease_name: str = "stowplan-operator"
    #: This replica's name in the Lease (the pod's name in the Deployment).
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: A Lease not renewed for this long is taken over by a standby.
    lease_duration_s: float = Field(default=15.0, gt=0)
    #: How often the holder renews (and a standby looks).
    renew_s: float = Field(default=5.0, gt=0)


class ApiSettings(_Group):
    #: Every API request (connect + read) gives up after this long (ApiUnavailable).
    request_timeout_s: float = Field(default=10.0, gt=0)
    #: Writes of one pass (GPUNode assignments, model statuses, events) in flight at once.
    max_concurrent_writes: int = Field(default=8, ge=1, le=64)


class MetricsSettings(_Group):
    #: Serve Prometheus metrics on this port (0: off; the Deployment sets 9090).
    port: int = Field(default=0, ge=0, le=65535)


class AutoscalingSettings(_Group):
    #: Placeholder pods and the scale-down-disabled annotation on/off.
    enabled: bool = True
    #: Where placeholder pods and the leader Lease live.
    namespace: str = "stowplan-system"
    #: At most this many placeholder pods at once (the first unplaced replicas by name), so that
    #: a model scaled to thousands of replicas that cannot fit does not stall passes on writes.
    max_capacity_requests: int = Field(default=64, ge=0)


#: (group, field) -> environment variable. Every field of every group is listed.
ENV: dict[tuple[str, str], str] = {
    ("placement", "solver_time_limit_s"): "STOWPLAN_SOLVER_TIME_LIMIT_S",
    ("placement", "memory_reserve_mib"): "STOWPLAN_MEMORY_RESERVE_MIB",
    ("nodes", "stale_after_s"): "STOWPLAN_NODE_STALE_AFTER_S",
    ("nodes", "move_timeout_s"): "STOWPLAN_MOVE_TIMEOUT_S",
    ("nodes", "endpoint_drain_s"): "STOWPLAN_ENDPOINT_DRAIN_S",
    ("loop", "resync_s"): "STOWPLAN_RESYNC_S",
    ("loop", "debounce_s"): "STOWPLAN_DEBOUNCE_S",
    ("loop", "retry_backoff_s"): "STOWPLAN_RETRY_BACKOFF_S",
    ("loop", "liveness_resyncs"): "STOWPLAN_LIVENESS_RESYNCS",
    ("leader", "lease_name"): "STOWPLAN_LEASE_NAME",
    ("leader", "identity"): "POD_NAME",
    ("leader", "lease_duration_s"): "STOWPLAN_LEASE_DURATION_S",
    ("leader", "renew_s"): "STOWPLAN_LEASE_RENEW_S",
    ("api", "request_timeout_s"): "STOWPLAN_API_TIMEOUT_S",
    ("api", "max_concurrent_writes"): "STOWPLAN_API_CONCURRENT_WRITES",
    ("metrics", "port"): "STOWPLAN_METRICS_PORT",
    ("autoscaling", "enabled"): "STOWPLAN_AUTOSCALING",
    ("autoscaling", "namespace"): "STOWPLAN_NAMESPACE",
    ("autoscaling", "max_capacity_requests"): "STOWPLAN_MAX_CAPACITY_REQUESTS",
}


class OperatorSettings(_Group):
    """Everything the operator can be told; see each group for units and defaults."""

    placement: PlacementSettings = PlacementSettings()
    nodes: NodeSettings = NodeSettings()
    loop: LoopSettings = LoopSettings()
    leader: LeaderSettings = Field(default_factory=LeaderSettings)
    api: ApiSettings = ApiSettings()
    metrics: MetricsSettings = MetricsSettings()
    autoscaling: AutoscalingSettings = AutoscalingSettings()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """The settings from ``environ`` (default ``os.environ``); unset variables keep their
        defaults, empty ones too. ``STOWPLAN_RETRY_BACKOFF_S`` is comma-separated."""
        environ = os.environ if environ is None else environ
        groups: dict[str, dict[str, Any]] = {}
        for (group, name), var in ENV.items():
            raw = environ.get(var, "").strip()
            if not raw:
                continue
            value: Any = raw
            if name == "retry_backoff_s":
                value = tuple(part.strip() for part in raw.split(",") if part.strip())
            groups.setdefault(group, {})[name] = value
        try:
            return cls.model_validate(groups)
        except ValidationError as err:
            wrong = []
            for e in err.errors():
                group, name = (str(part) for part in e["loc"][:2])
                wrong.append(f"{ENV.get((group, name), f'{group}.{name}')}: {e['msg']}")
            raise ValueError("invalid operator settings: " + "; ".join(wrong)) from err
