"""The agent: its model registry (:mod:`stowplan.agent.registry`: load, unload, replicas,
residency) with its data plane (:mod:`stowplan.agent.dataplane`: decode -> route -> submit ->
encode), its front ends' admission bound (:mod:`stowplan.agent.admission`) and its reports
(:mod:`stowplan.agent.reports`) on top, as one object per process.

Callers: :mod:`stowplan.agent.server` (HTTP), :mod:`stowplan.agent.gpunode_sync`,
:mod:`stowplan.standalone`. Composition only: no logic of its own. Must not import FastAPI,
kubernetes or the placement engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from stowplan.agent.admission import Admission
from stowplan.agent.config import AgentSettings
from stowplan.agent.dataplane import DataPlane, Prediction
from stowplan.agent.metrics import AgentMetrics
from stowplan.agent.protocol import InferenceRequest, InferenceResponse
from stowplan.agent.registry import (
    ModelRegistry,
    Residency,
)
from stowplan.agent.reports import ModelReport, device_samples, model_reports
from stowplan.agent.telemetry import DeviceSample, Telemetry


class Agent(ModelRegistry):
    """The registry of one node (or one standalone process), its data plane and its reports."""

    def __init__(
        self,
        settings: AgentSettings | None = None,
        telemetry: Telemetry | None = None,
        metrics: AgentMetrics | None = None,
        residency: Residency | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings, telemetry, metrics, residency, clock)
        self.dataplane = DataPlane(self)
        #: the front ends' bound on requests in flight (HTTP and gRPC share it)
        self.admission = Admission(
            self.settings.max_inflight_requests, self.settings.max_inflight_bytes
        )
        self.metrics.watch_admission(lambda: self.admission.requests, lambda: self.admission.bytes)

    async def infer(self, name: str, request: InferenceRequest) -> InferenceResponse:
        return await self.dataplane.infer(name, request)

    async def predict(
        self,
        name: str,
        request: InferenceRequest,
        raw: Mapping[str, bytes | memoryview] | None = None,
    ) -> Prediction:
        return await self.dataplane.predict(name, request, raw)

    def model_reports(self) -> list[ModelReport]:
        return model_reports(self)

    def model_rows(self) -> list[dict[str, Any]]:
        """The reports as plain dicts (kept for callers that index rows by key)."""
        return [r.model_dump() for r in model_reports(self)]

    def device_samples(self) -> list[DeviceSample]:
        return device_samples(self)


__all__ = ["Agent"]
