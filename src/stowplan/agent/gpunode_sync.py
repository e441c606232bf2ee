"""The GPUNode sync (cluster mode): keep this node's ``GPUNode`` in step with the agent.

* **register**: create the cluster-scoped ``GPUNode`` named after the node if it is missing
  (labels copied from the Node when the agent may read it); never touch ``spec`` otherwise.
* **watch**: stream ONLY that object (``fieldSelector=metadata.name=<node>``) and, on every
  change, load / reload / unload models so the agent serves exactly ``spec.assignments``.
* **status**: every few seconds patch ``status`` (GPUs, utilisation, per-model state, qps, p99,
  batch size, heartbeat, and the CPU / host memory the node offers replicas) through the status
  subresource. The agent never writes ``spec``.

The translation (:func:`desired_configs`, through :func:`stowplan.agent.config.model_config`,
the same function standalone mode uses; :func:`reconcile`, :func:`allocatable`,
:func:`build_status`) is pure and
unit-tested; :class:`GpuNodeSync` is the only code that talks to the API server, through the
``kubernetes`` client's CustomObjectsApi (or a test double with the same methods). Callers:
:mod:`stowplan.agent.__main__`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import stowplan
from stowplan import models
from stowplan.agent.config import ModelConfig, model_config
from stowplan.agent.registry import ModelState
from stowplan.agent.serving import Agent
from stowplan.agent.telemetry import DeviceSample
from stowplan.api import gpunode, quantity
from stowplan.api.gpunode import GpuInfo, GPUNodeSpec, GPUNodeStatus, ResidentModel
from stowplan.api.inferencemodel import GROUP, VERSION, ResourceQuantities
from stowplan.api.meta import Condition

log = logging.getLogger("stowplan.agent.gpunode_sync")
MIB = 1024 * 1024


class CustomObjects(Protocol):
    """The subset of ``kubernetes.client.CustomObjectsApi`` the agent uses."""

    def get_cluster_custom_object(
        self, group: str, version: str, plural: str, name: str
    ) -> Any: ...

    def create_cluster_custom_object(
        self, group: str, version: str, plural: str, body: Any
    ) -> Any: ...

    def patch_cluster_custom_object_status(
        self, group: str, version: str, plural: str, name: str, body: Any
    ) -> Any: ...

    def list_cluster_custom_object(
        self, group: str, version: str, plural: str, **kw: Any
    ) -> Any: ...


def served_name(model: str) -> str:
    """OIP model name for ``namespace/name``: ``namespace.name`` (one URL path segment); clients
    may ask for the bare ``name`` too (:meth:`stowplan.agent.registry.ModelRegistry.get`)."""
    return model.replace("/", ".")


def desired_configs(
    spec: GPUNodeSpec, cache_dir: Path | None = None
) -> dict[str, tuple[ModelConfig, list[gpunode.Assignment]]]:
    """What the agent should serve for ``spec``, keyed by served name, each with its
    assignments: :func:`stowplan.agent.config.model_config` of each model's assignments.
    Several replicas of one model on this node are one served model with a lane per GPU (the
    lowest replica's GPU is primary); requests go to the least-queued lane."""
    grouped: dict[str, list[gpunode.Assignment]] = {}
    for a in sorted(spec.assignments, key=lambda a: (a.model, a.replica)):
        grouped.setdefault(a.model, []).append(a)
    out: dict[str, tuple[ModelConfig, list[gpunode.Assignment]]] = {}
    for model, replicas in grouped.items():
        cfg = model_config(served_name(model), replicas, cache_dir)
        out[cfg.name] = (cfg, replicas)
    return out


def reconcile(
    current: dict[str, ModelConfig], desired: Iterable[ModelConfig]
) -> tuple[list[ModelConfig], list[str]]:
    """(configs to load or reload, names to unload) so that current becomes desired."""
    want = {c.name: c for c in desired}
    load = [c for name, c in want.items() if current.get(name) != c]
    unload = [name for name in current if name not in want]
    return load, unload


def allocatable(
    cpu: str | None,
    memory: str | None,
    reserved_cpu: str | None = None,
    reserved_memory: str | None = None,
) -> ResourceQuantities | None:
    """What this node offers stowplan's replicas: ``cpu`` / ``memory`` (the agent container's
    limits, from the Downward API) less what the agent keeps for itself, never below zero, as
    canonical quantities (``"7500m"``, ``"31Gi"``). A budget left out stays out (no limit);
    None when both are (the field is then absent). Raises ``ValueError`` for a bad quantity."""
    if cpu is None and memory is None:
        return None
    return ResourceQuantities(
        cpu=None
        if cpu is None
        else quantity.format_cpu(
            max(0, quantity.cpu_milli(cpu, round_up=False) - quantity.cpu_milli(reserved_cpu))
        ),
        memory=None
        if memory is None
        else quantity.format_memory(
            max(
                0,
                quantity.memory_mib(memory, round_up=False) - quantity.memory_mib(reserved_memory),
            )
        ),
    )


def session_threads(offered: ResourceQuantities | None) -> int:
    """ONNX Runtime intra-op threads for the CPU budget ``offered``: its whole CPUs (at least
    1), so sessions do not spawn a thread per core of a machine whose CPUs the container may
    not use; 0 (ONNX Runtime's default) without a CPU budget."""
    if offered is None or offered.cpu is None:
        return 0
    return max(1, quantity.cpu_milli(offered.cpu, round_up=False) // 1000)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_status(
    agent: Agent,
    assignments: dict[str, list[gpunode.Assignment]],
    samples: list[DeviceSample],
    endpoint: str,
    now: str | None = None,
    previous: Condition | None = None,
    offered: ResourceQuantities | None = None,
) -> GPUNodeStatus:
    """The GPUNode status the agent reports (pure given its inputs)."""
    gpus = [
        GpuInfo(
            index=max(s.index, 0),
            uuid=s.uuid,
            name=s.name,
            memory_total_mib=s.memory_total_bytes // MIB,
            memory_used_mib=s.memory_used_bytes // MIB,
            utilization_percent=round(min(100.0, s.utilization * 100.0), 1),
            simulated=s.simulated,
        )
        for s in samples
    ]
    reports = {r.name: r for r in agent.model_reports()}
    models = []
    pairs = sorted(
        ((n, a) for n, group in assignments.items() for a in group),
        key=lambda pair: (pair[0], pair[1].replica),
    )
    for name, a in pairs:
        served = agent.models.get(name)
        share = 1 / max(1, len(assignments[name]))  # stats are per model; split across replicas
        row = reports.get(name)
        state = (
            "Loading"
            if served is None
            else {
                ModelState.READY: "Ready",
                ModelState.FAILED: "Failed",
                ModelState.LOADING: "Loading",
                ModelState.UNLOADED: "Loading",
            }[served.state]
        )
        reason = served.reason if served else ""
        if state == "Ready" and served is not None and a.gpu not in served.lanes:
            state = "Failed"  # this replica's lane could not be added (see reason)
        elif state == "Ready" and row is not None and row.resident is False:
            state = "Offloaded"  # registered but evicted to host memory; back on next request
        models.append(
            ResidentModel(
                model=a.model,
                replica=a.replica,
                gpu=a.gpu,
                state=state,
                reason=reason,
                qps=round((row.qps if row is not None else 0.0) * share, 3),
                p99_ms=row.p99_ms if row is not None else None,
                batch_size=row.mean_batch if row is not None else None,
                planned_batch_size=a.batch_size,
                planned_busy_ms=a.busy_ms,
                busy_ms=row.busy_ms if row is not None else None,
            )
        )
    ready = sum(1 for m in models if m.state == "Ready")
    at = now or _now()
    cond = Condition(
        type="Ready",
        status="True" if ready == len(models) else "False",
        reason="AllModelsReady" if ready == len(models) else "ModelsNotReady",
        message=f"{ready}/{len(models)} assigned replicas ready",
        last_transition_time=at,
    )
    if previous is not None and previous.status == cond.status:
        # metav1.Condition: the transition time moves only when the status does
        cond = cond.model_copy(update={"last_transition_time": previous.last_transition_time})
    return GPUNodeStatus(
        gpus=gpus,
        gpu_count=len(gpus),
        models=models,
        ready_models=ready,
        heartbeat=at,
        agent_version=stowplan.__version__,
        endpoint=endpoint,
        conditions=[cond],
        allocatable=offered,
    )


class GpuNodeSync:
    """Registers, watches and reports this node's GPUNode. Runs in background threads."""

    def __init__(
        self,
        agent: Agent,
        api: CustomObjects,
        node: str,
        endpoint: str,
        cache_dir: Path | None = None,
        status_interval_s: float = 10.0,
        node_labels: Callable[[], dict[str, str]] | None = None,
        offered: ResourceQuantities | None = None,
    ) -> None:
        self.agent = agent
        self.api = api
        self.node = node
        self.endpoint = endpoint
        self.cache_dir = cache_dir
        self.status_interval_s = status_interval_s
        self.node_labels = node_labels or dict
        self.offered = offered  # GPUNode.status.allocatable (see allocatable())
        self.assignments: dict[str, list[gpunode.Assignment]] = {}
        self._configs: dict[str, ModelConfig] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._condition: Condition | None = None

    # -- pieces (each callable from tests) -----------------------------------------------
    def register(self) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = self.api.get_cluster_custom_object(
                GROUP, VERSION, gpunode.PLURAL, self.node
            )
            return obj
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": gpunode.KIND,
            "metadata": {"name": self.node, "labels": self.node_labels()},
            "spec": {"assignments": []},
        }
        log.info("creating GPUNode %s", self.node)
        created: dict[str, Any] = self.api.create_cluster_custom_object(
            GROUP, VERSION, gpunode.PLURAL, body
        )
        return created

    def apply(self, obj: dict[str, Any]) -> None:
        """Make the agent serve what ``obj['spec']`` assigns. Loads run here, synchronously (in
        the watch thread); status reports go on meanwhile and show new replicas as Loading.
        A spec this agent cannot parse is logged and ignored (the operator owns spec)."""
        try:
            spec = GPUNodeSpec.model_validate(obj.get("spec") or {})
        except ValueError as exc:
            log.error("ignoring GPUNode %s spec: %s", self.node, exc)
            return
        desired = desired_configs(spec, self.cache_dir)
        with self._lock:
            self.assignments = {name: group for name, (_, group) in desired.items()}
        load, unload = reconcile(self._configs, [c for c, _ in desired.values()])
        for name in unload:
            log.info("unloading %s", name)
            self.agent.unload(name)
            self._configs.pop(name, None)
        for cfg in load:
            log.info("loading %s from %s on device %d", cfg.name, cfg.uri, cfg.device)
            self.agent.load(self._materialize(cfg))
            self._configs[cfg.name] = cfg  # as assigned, so the next diff compares like with like

    def _materialize(self, cfg: ModelConfig) -> ModelConfig:
        """Relative ``file://`` URIs resolve against the models dir; the shipped example models
        are built there when missing, so the examples also run on a fresh cluster."""
        if self.cache_dir is None:
            return cfg
        try:
            uri, built = models.materialize(cfg.uri, self.cache_dir, self.cache_dir)
        except OSError as exc:  # read-only or full models dir: let the load report the file
            log.warning("cannot build example model for %s: %s", cfg.name, exc)
            return cfg
        if built is not None:
            log.info("built example model %s", built)
        return cfg.model_copy(update={"uri": uri}) if uri != cfg.uri else cfg

    def report(self) -> GPUNodeStatus:
        with self._lock:
            assignments = dict(self.assignments)
        status = build_status(
            self.agent,
            assignments,
            self.agent.device_samples(),
            self.endpoint,
            previous=self._condition,
            offered=self.offered,
        )
        self._condition = status.conditions[0] if status.conditions else None
        body = status.wire()
        # a merge patch keeps what it does not mention: an agent restarted without a budget
        # (or without half of it) must remove what it reported before; null deletes a key
        offered = status.allocatable
        body["allocatable"] = offered.model_dump(by_alias=True, mode="json") if offered else None
        self.api.patch_cluster_custom_object_status(
            GROUP, VERSION, gpunode.PLURAL, self.node, {"status": body}
        )
        return status

    # -- loops ---------------------------------------------------------------------------
    def start(self) -> None:
        self.apply(self.register())
        self.report()
        for target, name in ((self._watch_loop, "watch"), (self._status_loop, "status")):
            t = threading.Thread(target=target, name=f"gpunode-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)

    def _status_loop(self) -> None:
        while not self._stop.wait(self.status_interval_s):
            try:
                self.report()
            except Exception:  # the API server being away must not kill the agent
                log.exception("status update failed; retrying")

    def _watch_loop(self) -> None:
        from kubernetes import watch  # the kubernetes client is loaded only in cluster mode

        backoff = 1.0
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    self.api.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    gpunode.PLURAL,
                    field_selector=f"metadata.name={self.node}",
                    timeout_seconds=60,
                ):
                    if self._stop.is_set():
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.apply(event["object"])
                    elif event["type"] == "DELETED":
                        self.apply(self.register())
                backoff = 1.0
            except Exception:
                log.exception("watch of GPUNode %s failed; retrying in %.0f s", self.node, backoff)
                self._stop.wait(backoff)
                backoff = min(30.0, backoff * 2)
            finally:
                w.stop()


def kube_api(
    kubeconfig: str | None = None,
) -> tuple[CustomObjects, Callable[[str], dict[str, str]]]:
    """A CustomObjectsApi from in-cluster config or ``kubeconfig``, and a Node-label reader."""
    from kubernetes import client, config

    if kubeconfig:
        config.load_kube_config(kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    core = client.CoreV1Api()

    def labels(node: str) -> dict[str, str]:
        try:
            meta = core.read_node(node).metadata
            return dict(meta.labels or {}) if meta is not None else {}
        except Exception:  # no Node (tests) or no RBAC for nodes: register without labels
            return {}

    api = cast(CustomObjects, client.CustomObjectsApi())
    return api, labels
