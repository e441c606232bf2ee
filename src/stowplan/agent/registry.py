"""The agent's registry and lifecycle: which models are served, on which devices, and in which
state; load, unload and extra replicas; one executor per device; the residency hook-up.

``ModelRegistry.load`` opens a model (a failure marks that model Failed with its reason; the
others keep serving), gives it a batching lane on its device's executor, and registers it with
the device's residency pool. Every call into the residency pool (register, acquire/release
around a batch, unregister, is_resident) is in this module, in :meth:`ModelRegistry.residency`,
:meth:`ModelRegistry._attach`, :meth:`ModelRegistry._batch_fn`, :meth:`ModelRegistry.unload`
and :meth:`ModelRegistry.is_resident`.

Callers: :mod:`stowplan.agent.serving` (the ``Agent`` composes it with the data plane and the
reports), :mod:`stowplan.agent.gpunode_sync`, :mod:`stowplan.standalone`. Must not decode
requests, know HTTP, or import FastAPI, kubernetes or the placement engine.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from stowplan.agent import modelstore
from stowplan.agent.batching import BatchPolicy, make_policy
from stowplan.agent.config import AgentSettings, DeviceSpec, ModelConfig, Policy, ReplicaSlot
from stowplan.agent.errors import AgentError, ExecutionError, ModelNotFound, ModelNotReady
from stowplan.agent.executor import BatchRecord, DeviceExecutor
from stowplan.agent.memory import ResidencyManager
from stowplan.agent.metrics import AgentMetrics
from stowplan.agent.runtime import OnnxModel
from stowplan.agent.stats import ModelStats
from stowplan.agent.telemetry import SimulatedTelemetry, Telemetry

MIB = 1024 * 1024


class ModelState(StrEnum):
    LOADING = "Loading"
    READY = "Ready"
    FAILED = "Failed"
    UNLOADED = "Unloaded"


class Residency(Protocol):
    """What the agent needs from :class:`stowplan.agent.memory.ResidencyManager` (one per
    device; tests may plug in their own)."""

    def register(self, model: str, weights_bytes: int, workspace_bytes: int) -> None: ...

    def acquire(self, model: str) -> object: ...

    def release(self, model: str) -> None: ...

    def unregister(self, model: str) -> None: ...

    def is_resident(self, model: str) -> bool: ...


@dataclass
class ServedModel:
    config: ModelConfig
    state: ModelState = ModelState.LOADING
    reason: str = ""
    runtime: OnnxModel | None = None
    policy: BatchPolicy | None = None  # the first replica's (reported as the model's cap)
    stats: ModelStats = field(default_factory=ModelStats)
    #: device -> the batch policy of this model's lane there (one lane per replica/device)
    lanes: dict[int, BatchPolicy] = field(default_factory=dict)
    #: device -> ONNX Runtime session (simulated devices share the CPU session)
    runtimes: dict[int, OnnxModel] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def max_items(self) -> int:
        if self.runtime is not None and not self.runtime.batched:
            return 1
        return self.config.max_batch


def primary_slot(config: ModelConfig) -> ReplicaSlot:
    """The replica a config names first, as a slot like its extra replicas."""
    return ReplicaSlot(
        device=config.device,
        duty_cycle_ms=config.duty_cycle_ms,
        busy_ms=config.busy_ms,
        planned_memory_mib=config.planned_memory_mib,
        planned_batch=config.planned_batch,
    )


def reserved_bytes(
    config: ModelConfig, file_size_bytes: int, slot: ReplicaSlot | None = None
) -> tuple[int, int]:
    """(weights, workspace) bytes a replica takes in its device's pool: exactly what placement
    planned for it (split by ``weights_memory_mib``) when there is a plan, else the model
    file's size plus per-item memory at the largest batch."""
    planned = (slot or primary_slot(config)).planned_memory_mib
    if planned > 0:
        weights = int(config.weights_memory_mib * MIB)
        return weights, max(int(planned * MIB) - weights, 0)
    return file_size_bytes, int(config.per_item_memory_mib * config.max_batch * MIB)


class ModelRegistry:
    """Owns the models and the per-device executors of one node (or one standalone process)."""

    def __init__(
        self,
        settings: AgentSettings | None = None,
        telemetry: Telemetry | None = None,
        metrics: AgentMetrics | None = None,
        residency: Residency | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or AgentSettings()
        self.telemetry = telemetry or SimulatedTelemetry()
        self.metrics = metrics or AgentMetrics()
        self._residency_override = residency
        self._residency: dict[int, Residency] = {}
        self.clock = clock
        self.devices: dict[int, DeviceSpec] = {d.index: d for d in self.telemetry.devices()}
        self.executors: dict[int, DeviceExecutor] = {}
        self.models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()

    # -- devices -------------------------------------------------------------------------
    def executor(self, device: int) -> DeviceExecutor:
        with self._lock:
            ex = self.executors.get(device)
            if ex is None:
                ex = DeviceExecutor(
                    device, drop_expired=self.settings.drop_expired, clock=self.clock
                )
                ex.start()
                self.executors[device] = ex
            return ex

    def residency(self, device: int) -> Residency | None:
        """The device's model-memory pool (created on first use), or None when disabled."""
        if self._residency_override is not None:
            return self._residency_override
        fraction = self.settings.memory_pool_fraction
        spec = self.devices.get(device)
        if fraction <= 0 or spec is None:
            return None
        with self._lock:
            if device not in self._residency:
                pool = int(spec.memory_total_bytes * fraction)
                self._residency[device] = ResidencyManager(pool, clock=self.clock)
            return self._residency[device]

    def is_resident(self, served: ServedModel) -> bool | None:
        """Whether a Ready model sits in its device's pool (None: no pool, or not Ready)."""
        pool = self._residency.get(served.config.device) or self._residency_override
        if pool is None or served.state is not ModelState.READY:
            return None
        return pool.is_resident(served.name)

    def memory_used_bytes(self, device: int) -> int:
        pool = self._residency.get(device)
        if isinstance(pool, ResidencyManager):
            return pool.stats().used_bytes
        total = 0
        for m in list(self.models.values()):
            if m.runtime is not None and device in m.lanes:
                total += sum(reserved_bytes(m.config, m.runtime.size_bytes))
        return total

    def _is_gpu(self, device: int) -> bool:
        spec = self.devices.get(device)
        return spec is not None and not spec.simulated

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        for name in list(self.models):
            self.unload(name)
        for ex in self.executors.values():
            ex.stop()
        self.executors.clear()
        self.telemetry.close()

    def load(self, config: ModelConfig) -> ServedModel:
        """Load (or reload) a model. Never raises for a bad model: it is marked Failed."""
        if config.name in self.models:
            self.unload(config.name)
        served = ServedModel(config, stats=ModelStats(clock=self.clock))
        self.models[config.name] = served
        self.metrics.set_ready(config.name, False)
        try:
            path = modelstore.resolve_uri(config.uri, self.settings.cache_dir, config.base_dir)
            runtime = OnnxModel(
                path,
                config.device if self._is_gpu(config.device) else -1,
                self.settings.intra_op_threads,
            )
        except AgentError as exc:
            served.state, served.reason = ModelState.FAILED, str(exc)
            return served
        served.runtime = runtime
        served.runtimes[config.device] = runtime
        try:
            served.policy = self._attach(served, primary_slot(config))
        except (AgentError, ValueError) as exc:  # the model can never fit the device's pool
            served.state, served.reason = ModelState.FAILED, f"device memory: {exc}"
            return served
        served.state = ModelState.READY
        self.metrics.set_ready(config.name, True)
        for slot in config.replicas:
            try:
                self.add_replica(config.name, slot)
            except (AgentError, ValueError) as exc:  # the model still serves on its other lanes
                served.reason = f"replica on device {slot.device} not loaded: {exc}"
        return served

    def add_replica(self, name: str, slot: ReplicaSlot) -> None:
        """Serve a loaded model on one more device too (another replica on this machine);
        requests go to the replica with the fewest queued items. Raises AgentError."""
        device = slot.device
        served = self.get(name)
        if served.state is not ModelState.READY or served.runtime is None:
            raise ModelNotReady(f"model {name!r} is {served.state.value}")
        if device in served.lanes:
            return
        runtime = served.runtime
        if self._is_gpu(device):
            runtime = OnnxModel(served.runtime.path, device, self.settings.intra_op_threads)
        served.runtimes[device] = runtime
        self._attach(served, slot)

    def _attach(self, served: ServedModel, slot: ReplicaSlot) -> BatchPolicy:
        """Register the model in the device's memory pool and give it a lane there."""
        config = served.config
        device, duty_cycle_ms, busy_ms = slot.device, slot.duty_cycle_ms, slot.busy_ms
        runtime = served.runtimes[device]
        residency = self.residency(device)
        if residency is not None:
            residency.register(config.name, *reserved_bytes(config, runtime.size_bytes, slot))
        batching = config.batching
        if not runtime.batched and batching.policy is not Policy.NONE:
            batching = batching.model_copy(update={"policy": Policy.NONE})
        policy = make_policy(
            batching, served.max_items, config.slo_ms, duty_cycle_ms, busy_ms, slot.planned_batch
        )
        ex = self.executor(device)
        if duty_cycle_ms > 0:
            ex.set_cycle_ms(max(duty_cycle_ms, ex.cycle_ms))
        ex.add_lane(
            config.name,
            policy,
            config.slo_ms,
            self._batch_fn(served, device),
            self._observer(served),
            budget_ms=busy_ms,
            priority=config.priority,
            max_requests=self.settings.max_queue_requests,
        )
        served.lanes[device] = policy
        self.metrics.cap.labels(config.name, "1").set(policy.cap)
        return policy

    def unload(self, name: str) -> None:
        served = self.models.pop(name, None)
        if served is None:
            return
        for device in served.lanes or [served.config.device]:
            ex = self.executors.get(device)
            if ex is not None:
                ex.remove_lane(name)
            residency = self.residency(device)
            if residency is not None and served.runtime is not None:
                with contextlib.suppress(AgentError):  # never registered (it failed to fit)
                    residency.unregister(name)
        served.state = ModelState.UNLOADED
        self.metrics.set_ready(name, False)

    # -- look-up -------------------------------------------------------------------------
    def get(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        return served

    def ready(self) -> bool:
        return all(m.state is not ModelState.LOADING for m in list(self.models.values()))

    # -- what each lane runs on its executor thread -------------------------------------
    def _batch_fn(self, served: ServedModel, device: int) -> Callable[[list[Any]], Sequence[Any]]:
        runtime = served.runtimes[device]
        residency = self.residency(device)
        out_names = [o.name for o in runtime.outputs]

        def run(batch: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
            if residency is not None:
                residency.acquire(served.name)
            try:
                if len(batch) == 1:
                    return [runtime.run(batch[0])]
                feeds = {k: np.concatenate([r[k] for r in batch]) for k in batch[0]}
                outs = runtime.run(feeds)
            finally:
                if residency is not None:
                    residency.release(served.name)
            sizes = [next(iter(r.values())).shape[0] for r in batch]
            total = sum(sizes)
            for k in out_names:
                if outs[k].ndim == 0 or outs[k].shape[0] != total:
                    raise ExecutionError(f"output {k!r} has no batch dimension to split")
            bounds = np.cumsum(sizes)[:-1]
            split = {k: np.split(outs[k], bounds) for k in out_names}
            return [{k: split[k][i] for k in out_names} for i in range(len(batch))]

        return run

    def _observer(self, served: ServedModel) -> Callable[[BatchRecord], None]:
        def observe(rec: BatchRecord) -> None:
            served.stats.batch(rec.items)
            cap = served.policy.cap if served.policy is not None else 1
            self.metrics.observe_batch(served.name, rec.items, rec.latency_s, rec.queue_s, cap)

        return observe


__all__ = [
    "MIB",
    "ModelRegistry",
    "ModelState",
    "Residency",
    "ServedModel",
    "primary_slot",
    "reserved_bytes",
]
