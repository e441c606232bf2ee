"""The agent's registry and lifecycle: which models are served, on which devices, and in which
state; load, unload and extra replicas; one executor per device; the residency hook-up.

``ModelRegistry.load`` opens a model (a failure marks that model Failed with its reason; the
others keep serving), gives it a batching lane on its device's executor, and registers it with
the device's residency pool. Every call into the residency pool (register, acquire/release
around a batch, offload, unregister, is_resident) is in this module, in
:meth:`ModelRegistry.residency`, :meth:`ModelRegistry._attach`, :meth:`ModelRegistry._batch_fn`,
:meth:`ModelRegistry.offload`, :meth:`ModelRegistry.unload` and
:meth:`ModelRegistry.is_resident`.

The books and the memory move together. Each device with a pool gets one
:class:`stowplan.agent.runtime.DeviceArena` (every CPU-backed device of the process shares the
CPU one) that its sessions carve from. What ``acquire`` returns is applied before the batch
runs: the sessions of the models it offloaded are released (their bytes stay in host memory)
and the arena gives the memory back; the model itself, if its session was released, is
rebuilt from host memory (timed: ``stowplan_model_prefetch_seconds``). A model the books leave
offloaded at load has its session released at once, so ``resident`` (hence ``Offloaded`` in
GPUNode.status) is the session's state, not only the books'. When the pool is full of busy
models the batch waits for a release up to its model's SLO, then fails with a 503 naming the
memory it waited for; ``relocated`` models need nothing on the CPU (the arena places blocks
where the system allocator puts them; offsets are books only).

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
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stowplan.agent import modelstore
from stowplan.agent.batching import BatchPolicy, make_policy
from stowplan.agent.config import AgentSettings, DeviceSpec, ModelConfig, Policy, ReplicaSlot
from stowplan.agent.errors import (
    AgentError,
    AmbiguousModelName,
    ExecutionError,
    ModelNotFound,
    ModelNotReady,
)
from stowplan.agent.executor import BatchRecord, DeviceExecutor
from stowplan.agent.memory import MemoryPoolExhausted, ResidencyManager
from stowplan.agent.metrics import AgentMetrics
from stowplan.agent.runtime import DeviceArena, DeviceMemoryExhausted, OnnxModel
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

    def offload(self, model: str) -> bool: ...


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
    #: device -> ONNX Runtime session (one per replica; they share the model's host bytes)
    runtimes: dict[int, OnnxModel] = field(default_factory=dict)
    #: sessions released to host memory / rebuilt from it (first loads not counted)
    offloads: int = 0
    prefetches: int = 0
    prefetch_s: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def max_items(self) -> int:
        if self.runtime is not None and not self.runtime.batched:
            return 1
        return self.config.max_batch


def bare_name(full: str) -> str | None:
    """``name`` of a served name ``namespace.name`` (a namespace never has a dot; a name may);
    None for a name without a namespace part."""
    namespace, dot, name = full.partition(".")
    return name if namespace and dot and name else None


def primary_slot(config: ModelConfig) -> ReplicaSlot:
    """The replica a config names first, as a slot like its extra replicas."""
    return ReplicaSlot(
        device=config.device,
        duty_cycle_ms=config.duty_cycle_ms,
        busy_ms=config.busy_ms,
        planned_memory_mib=config.planned_memory_mib,
        planned_batch=config.planned_batch,
        batching=config.batching,
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
        self.arenas: dict[int, DeviceArena] = {}
        self._memory_freed = threading.Condition()
        self._memory_waiters = 0  # batches waiting in _acquire (under _memory_freed)
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
            with self._lock:
                if device not in self.arenas and device in self.devices:
                    self._arena_for(device, int(getattr(self._residency_override, "pool_bytes", 0)))
            return self._residency_override
        fraction = self.settings.memory_pool_fraction
        spec = self.devices.get(device)
        if fraction <= 0 or spec is None:
            return None
        with self._lock:
            if device not in self._residency:
                pool = int(spec.memory_total_bytes * fraction)
                record = self.settings.residency_trace_dir is not None
                self._residency[device] = ResidencyManager(pool, clock=self.clock, record=record)
                self._arena_for(device, pool)
            return self._residency[device]

    def _arena_for(self, device: int, pool: int) -> None:
        """Reserve the device's arena at start of use: a GPU gets its own; the CPU-backed
        devices share one capped at the sum of their pools (called under ``self._lock``)."""
        if self._is_gpu(device):
            self.arenas[device] = DeviceArena(device, pool, gpu=True)
            return
        sim = [i for i, d in self.devices.items() if d.simulated]
        if self._residency_override is not None:
            total = pool  # one pool for every device: its arena is capped at that pool
        else:
            fraction = self.settings.memory_pool_fraction
            total = sum(int(self.devices[i].memory_total_bytes * fraction) for i in sim)
        shared = next((a for i, a in self.arenas.items() if i in sim), None)
        if shared is None:
            shared = DeviceArena(-1, total)
        self.arenas[device] = shared

    def arena(self, device: int) -> DeviceArena | None:
        """The arena the device's sessions carve from (None: no pool, sessions keep their own)."""
        if self.residency(device) is None:
            return None
        return self.arenas.get(device)

    def is_resident(self, served: ServedModel) -> bool | None:
        """Whether a Ready model's memory is in its device's pool: the books say so *and* its
        session is loaded (None: no pool, or not Ready)."""
        pool = self._residency.get(served.config.device) or self._residency_override
        if pool is None or served.state is not ModelState.READY:
            return None
        runtime = served.runtimes.get(served.config.device, served.runtime)
        loaded = runtime is None or runtime.loaded
        return pool.is_resident(served.name) and loaded

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
        self.write_residency_traces()

    def write_residency_traces(self) -> list[Path]:
        """With ``residency_trace_dir``: each device pool's recorded sequence so far, written
        to ``DIR/device-N.stwres.json`` (the paths written; none without the setting)."""
        out = self.settings.residency_trace_dir
        if out is None:
            return []
        return [
            pool.write_trace(out / f"device-{device}.stwres.json")
            for device, pool in sorted(self._residency.items())
            if isinstance(pool, ResidencyManager)
        ]

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
                self.arena(config.device),
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
            self._give_back(config.device, [runtime])
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
        runtime = OnnxModel(  # its own session: each replica's memory is its device's
            served.runtime.path,
            device if self._is_gpu(device) else -1,
            self.settings.intra_op_threads,
            self.arena(device),
            served.runtime.model_bytes,
        )
        served.runtimes[device] = runtime
        try:
            self._attach(served, slot)
        except BaseException:
            served.runtimes.pop(device, None)
            self._give_back(device, [runtime])
            raise

    def _attach(self, served: ServedModel, slot: ReplicaSlot) -> BatchPolicy:
        """Register the model in the device's memory pool and give it a lane there."""
        config = served.config
        device, duty_cycle_ms, busy_ms = slot.device, slot.duty_cycle_ms, slot.busy_ms
        runtime = served.runtimes[device]
        residency = self.residency(device)
        if residency is not None:
            residency.register(config.name, *reserved_bytes(config, runtime.size_bytes, slot))
            if not residency.is_resident(config.name):  # the books keep it in host memory
                self._give_back(device, [runtime])
        batching = slot.batching or config.batching  # the replica's own plan
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
        self.metrics.set_cap(config.name, policy.cap)
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
            runtime = served.runtimes.get(device)
            if runtime is not None:
                runtime.close()  # a stale reference (the executor's last batch) keeps no bytes
                self._give_back(device, [])
        if served.runtime is not None and served.runtime.loaded:  # it never got a lane
            served.runtime.close()
            self._give_back(served.config.device, [])
        served.state = ModelState.UNLOADED
        self.metrics.set_ready(name, False)

    # -- memory that moves ---------------------------------------------------------------
    def offload(self, name: str, device: int | None = None) -> bool:
        """Move an idle model's memory to host now (books and session); False if it is busy,
        not resident or has no pool. Call it between batches (the device's batches never run
        while ``acquire`` hands out memory, so the session is never released mid-run)."""
        served = self.get(name)
        dev = served.config.device if device is None else device
        residency = self.residency(dev)
        runtime = served.runtimes.get(dev)
        if residency is None or runtime is None or not residency.offload(name):
            return False
        self._give_back(dev, [runtime])
        served.offloads += 1
        return True

    def _give_back(self, device: int, runtimes: Sequence[OnnxModel]) -> None:
        """Release sessions and hand the freed memory back to the system."""
        for runtime in runtimes:
            runtime.release()
        arena = self.arenas.get(device)
        if arena is not None:
            arena.give_back()
        self._notify_freed()

    def _acquire(self, served: ServedModel, device: int, residency: Residency) -> object:
        """``acquire``, waiting up to the model's SLO while busy models hold the pool."""
        try:
            return residency.acquire(served.name)
        except MemoryPoolExhausted:
            pass
        deadline = time.monotonic() + served.config.slo_ms / 1000.0
        with self._memory_freed:
            # counted before each retry, under the lock a releaser notifies under: a release
            # after a failed retry finds the count and wakes this wait
            self._memory_waiters += 1
            try:
                while True:
                    try:
                        return residency.acquire(served.name)
                    except MemoryPoolExhausted as exc:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise MemoryPoolExhausted(
                                f"device {device} memory: waited {served.config.slo_ms:.0f} ms "
                                f"(the model's SLO) for room to prefetch {served.name}: {exc}"
                            ) from exc
                        self._memory_freed.wait(min(left, 0.02))
            finally:
                self._memory_waiters -= 1

    def _notify_freed(self) -> None:
        """Wake the batches waiting in :meth:`_acquire` (none: nothing to do, no lock)."""
        if self._memory_waiters:
            with self._memory_freed:
                self._memory_freed.notify_all()

    def _make_resident(
        self, served: ServedModel, device: int, runtime: OnnxModel, residency: Residency
    ) -> None:
        """Apply what ``acquire`` did: release the victims, rebuild this model's session."""
        got = self._acquire(served, device, residency)
        try:
            victims = []
            for name in getattr(got, "offloaded", ()):
                other = self.models.get(name)
                victim = other.runtimes.get(device) if other is not None else None
                if other is not None and victim is not None and victim.loaded:
                    victims.append(victim)
                    other.offloads += 1
            if victims:
                self._give_back(device, victims)
            if not runtime.loaded:
                seconds = runtime.restore()
                served.prefetches += 1
                served.prefetch_s.append(seconds)
                del served.prefetch_s[:-1000]
                self.metrics.observe_prefetch(served.name, seconds)
        except BaseException as exc:
            residency.release(served.name)
            if not runtime.loaded:  # the books must not keep a block the session never took
                residency.offload(served.name)
            if isinstance(exc, AgentError) and not isinstance(exc, DeviceMemoryExhausted):
                raise DeviceMemoryExhausted(f"prefetch of {served.name} failed: {exc}") from exc
            raise

    # -- look-up -------------------------------------------------------------------------
    def get(self, name: str) -> ServedModel:
        """The served model a client names: by its full name (``namespace.name`` on a cluster
        node, as :func:`stowplan.agent.gpunode_sync.served_name` writes it; the name as given
        standalone), or by the bare ``name`` when exactly one served model here has that name,
        in whatever namespace (the name a model's Service URL uses). ModelNotFound when none
        does; AmbiguousModelName, naming every full name, when models of two namespaces share
        the name on this agent."""
        served = self.models.get(name)
        if served is not None:
            return served
        matches = sorted(full for full in list(self.models) if bare_name(full) == name)
        if len(matches) == 1:
            return self.models[matches[0]]
        if matches:
            raise AmbiguousModelName(
                f"model name {name!r} is ambiguous on this server: it serves "
                + " and ".join(repr(m) for m in matches)
                + f"; ask for NAMESPACE.NAME (e.g. {matches[0]!r})"
            )
        raise ModelNotFound(f"model {name!r} is not served here")

    def ready(self) -> bool:
        return all(m.state is not ModelState.LOADING for m in list(self.models.values()))

    # -- what each lane runs on its executor thread -------------------------------------
    def _batch_fn(self, served: ServedModel, device: int) -> Callable[[list[Any]], Sequence[Any]]:
        runtime = served.runtimes[device]
        residency = self.residency(device)
        out_names = [o.name for o in runtime.outputs]

        def run(batch: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
            if residency is not None:
                self._make_resident(served, device, runtime, residency)
            try:
                if len(batch) == 1:
                    return [runtime.run(batch[0])]
                feeds = {k: np.concatenate([r[k] for r in batch]) for k in batch[0]}
                outs = runtime.run(feeds)
            finally:
                if residency is not None:
                    residency.release(served.name)
                    self._notify_freed()
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
            served.stats.batch(rec.items, rec.latency_s, rec.queue_s)
            cap = served.policy.cap if served.policy is not None else 1
            self.metrics.observe_batch(served.name, rec.items, rec.latency_s, rec.queue_s, cap)
            self.metrics.observe_wait(served.name, rec.wait_s, rec.cycle_s)

        return observe


__all__ = [
    "MIB",
    "ModelRegistry",
    "ModelState",
    "Residency",
    "ServedModel",
    "bare_name",
    "primary_slot",
    "reserved_bytes",
]
