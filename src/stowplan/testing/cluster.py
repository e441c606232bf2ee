"""An in-memory :class:`stowplan.operator.cluster.Cluster` for unit tests of the fleet pass.

:class:`FakeCluster` stores InferenceModels and GPUNodes as parsed API objects, Nodes as an
annotations map, placeholder pods by name, one Lease (:class:`.kube.FakeLeases`), the models'
Services and EndpointSlices, and records every call in :attr:`FakeCluster.calls`. Faults are
injected at any call, deterministically:

- ``cluster.fail("set_assignments", NotFound("gone", 404))`` raises on the next such call
  (``times=`` for more, ``when=`` to match arguments);
- ``cluster.before("set_assignments", hook)`` runs ``hook(*args)`` just before the call is
  served, e.g. to delete the GPUNode between the pass's list and its patch.

Writes behave as the API server's do for what the operator relies on: a patch of a missing
object raises ``NotFound``, creating an existing pod raises ``Conflict``. Imported by tests only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stowplan import api
from stowplan.api import gpunode as gn
from stowplan.api import inferencemodel as imapi
from stowplan.operator import autoscaling, inventory
from stowplan.operator.cluster import K8sNode
from stowplan.operator.endpoints import ModelRef, ModelSlice
from stowplan.operator.errors import Conflict, NotFound
from stowplan.operator.leadership import LeaseState
from stowplan.operator.reconcile import Event
from stowplan.testing.kube import FakeLeases


@dataclass
class _Fault:
    error: BaseException
    times: int
    when: Callable[..., bool] | None


class FakeCluster:
    def __init__(
        self,
        models: list[api.InferenceModel] | None = None,
        nodes: list[api.GPUNode] | None = None,
    ) -> None:
        self.models: dict[str, api.InferenceModel] = {
            inventory.model_key(m): m for m in models or []
        }
        self.nodes: dict[str, api.GPUNode] = {n.metadata.name: n for n in nodes or []}
        #: Kubernetes Nodes (name -> annotations); GPUNodes without one are "registered by hand"
        self.k8s_nodes: dict[str, dict[str, str]] = {}
        #: Kubernetes Nodes that are cordoned (``spec.unschedulable``)
        self.cordoned: set[str] = set()
        self.pods: set[str] = set()
        #: the models' Services ((namespace, name) -> owner uid) and EndpointSlices
        self.services: dict[ModelRef, str | None] = {}
        self.slices: dict[ModelRef, ModelSlice] = {}
        self.events: list[Event] = []
        self.leases = FakeLeases()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._faults: dict[str, list[_Fault]] = defaultdict(list)
        self._hooks: dict[str, list[Callable[..., None]]] = defaultdict(list)

    # -- fault injection ------------------------------------------------------------------------

    def fail(
        self,
        call: str,
        error: BaseException,
        *,
        times: int = 1,
        when: Callable[..., bool] | None = None,
    ) -> None:
        self._faults[call].append(_Fault(error, times, when))

    def before(self, call: str, hook: Callable[..., None]) -> None:
        self._hooks[call].append(hook)

    def _enter(self, call: str, *args: Any) -> None:
        self.calls.append((call, args))
        for hook in self._hooks[call]:
            hook(*args)
        for fault in self._faults[call]:
            if fault.times > 0 and (fault.when is None or fault.when(*args)):
                fault.times -= 1
                raise fault.error

    def count(self, call: str) -> int:
        return sum(1 for name, _ in self.calls if name == call)

    # -- the Cluster interface ----------------------------------------------------------------

    async def list_models(self) -> list[api.InferenceModel]:
        self._enter("list_models")
        return list(self.models.values())

    async def list_nodes(self) -> list[api.GPUNode]:
        self._enter("list_nodes")
        return list(self.nodes.values())

    async def set_assignments(self, node: str, assignments: list[gn.Assignment]) -> None:
        self._enter("set_assignments", node, assignments)
        if node not in self.nodes:
            raise NotFound(f"gpunodes/{node}", 404)
        old = self.nodes[node]
        spec = old.spec.model_copy(update={"assignments": list(assignments)})
        self.nodes[node] = old.model_copy(update={"spec": spec})

    async def set_model_status(
        self, namespace: str, name: str, status: imapi.InferenceModelStatus
    ) -> None:
        self._enter("set_model_status", namespace, name, status)
        key = f"{namespace}/{name}"
        if key not in self.models:
            raise NotFound(f"inferencemodels/{key}", 404)
        self.models[key] = self.models[key].model_copy(update={"status": status})

    async def post_event(self, event: Event, uid: str | None) -> None:
        self._enter("post_event", event, uid)
        self.events.append(event)

    async def list_capacity_pods(self, namespace: str) -> list[str]:
        self._enter("list_capacity_pods", namespace)
        return sorted(self.pods)

    async def create_pod(self, body: dict[str, Any]) -> None:
        self._enter("create_pod", body)
        name = body["metadata"]["name"]
        if name in self.pods:
            raise Conflict(f"pods/{name}", 409)
        self.pods.add(name)

    async def delete_pod(self, namespace: str, name: str) -> None:
        self._enter("delete_pod", namespace, name)
        if name not in self.pods:
            raise NotFound(f"pods/{name}", 404)
        self.pods.discard(name)

    async def list_k8s_nodes(self) -> dict[str, K8sNode]:
        self._enter("list_k8s_nodes")
        return {
            name: K8sNode(
                unschedulable=name in self.cordoned,
                protection=autoscaling.protection_of(annotations),
            )
            for name, annotations in self.k8s_nodes.items()
        }

    async def set_gpunode_conditions(self, node: str, conditions: list[api.Condition]) -> None:
        self._enter("set_gpunode_conditions", node, conditions)
        if node not in self.nodes:
            raise NotFound(f"gpunodes/{node}", 404)
        old = self.nodes[node]
        status = (old.status or gn.GPUNodeStatus()).model_copy(
            update={"conditions": list(conditions)}
        )
        self.nodes[node] = old.model_copy(update={"status": status})

    async def set_protection(self, node: str, protect: bool) -> bool:
        self._enter("set_protection", node, protect)
        if node not in self.k8s_nodes:
            return False
        annotations = self.k8s_nodes[node]
        patch = autoscaling.protection_patch(autoscaling.protection_of(annotations), protect)
        for key, value in patch.items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        return bool(patch)

    async def list_model_services(self) -> dict[ModelRef, str | None]:
        self._enter("list_model_services")
        return dict(self.services)

    async def create_model_service(self, namespace: str, name: str, owner_uid: str | None) -> None:
        self._enter("create_model_service", namespace, name, owner_uid)
        if (namespace, name) in self.services:
            raise Conflict(f"services/{namespace}/{name}", 409)
        self.services[(namespace, name)] = owner_uid

    async def list_model_slices(self) -> dict[ModelRef, ModelSlice]:
        self._enter("list_model_slices")
        return dict(self.slices)

    async def write_model_slice(
        self, namespace: str, name: str, slice_: ModelSlice, *, exists: bool
    ) -> None:
        self._enter("write_model_slice", namespace, name, slice_)
        there = (namespace, name) in self.slices
        if exists and not there:
            raise NotFound(f"endpointslices/{namespace}/{name}", 404)
        if not exists and there:
            raise Conflict(f"endpointslices/{namespace}/{name}", 409)
        owner = self.slices[(namespace, name)].owner_uid if there else slice_.owner_uid
        self.slices[(namespace, name)] = ModelSlice(slice_.port, slice_.endpoints, owner)

    def delete_model(self, namespace: str, name: str) -> None:
        """Delete an InferenceModel and what the garbage collector deletes with it."""
        im = self.models.pop(f"{namespace}/{name}")
        for objects in (self.services, self.slices):
            for key in [k for k, v in objects.items() if _uid(v) == im.metadata.uid]:
                del objects[key]

    async def read_lease(self, namespace: str, name: str) -> tuple[LeaseState | None, str | None]:
        self._enter("read_lease", namespace, name)
        return await self.leases.read(namespace, name)

    async def write_lease(
        self,
        namespace: str,
        name: str,
        *,
        holder: str,
        duration_s: float,
        now: datetime,
        resource_version: str | None,
        transition: bool,
    ) -> None:
        self._enter("write_lease", namespace, name)
        await self.leases.write(
            namespace, name, holder=holder, duration_s=duration_s, now=now,
            resource_version=resource_version, transition=transition,
        )  # fmt: skip


def _uid(value: str | ModelSlice | None) -> str | None:
    return value.owner_uid if isinstance(value, ModelSlice) else value


# -- builders of the API objects the fleet pass reads ----------------------------------------

MODEL_SPEC: dict[str, Any] = {
    "model": {"uri": "file:///m/a.onnx"},
    "replicas": 2,
    "slo": {"latencyMs": 50, "targetQPS": 400},
    "profile": {
        "latencyMs": {"base": 2, "perItem": 0.5},
        "memoryMiB": {"weights": 1000, "perItem": 10},
        "maxBatch": 64,
    },
}


def model(name: str = "a", ns: str = "ns", replicas: int = 2, **spec: Any) -> api.InferenceModel:
    """An InferenceModel of 1 GB weights that needs about half a T4 per replica."""
    return api.InferenceModel.model_validate(
        {
            "metadata": {"name": name, "namespace": ns, "generation": 1, "uid": f"uid-{name}"},
            "spec": {**MODEL_SPEC, "replicas": replicas, **spec},
        }
    )


def gpunode(
    name: str,
    gpus: int = 1,
    *,
    heartbeat: str | None = None,
    models: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    endpoint: str = "",
) -> api.GPUNode:
    """A GPUNode whose agent reports ``gpus`` T4s (16 GiB), serving at ``endpoint``."""
    status: dict[str, Any] = {
        "gpus": [{"index": i, "memoryTotalMiB": 16384, "name": "T4"} for i in range(gpus)],
        "models": models or [],
        "endpoint": endpoint,
    }
    if heartbeat is not None:
        status["heartbeat"] = heartbeat
    return api.GPUNode.model_validate(
        {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"assignments": []},
            "status": status,
        }
    )


def report(cluster: FakeCluster, node: str, state: str = "Ready") -> None:
    """Play the agent on ``node``: report every assigned replica in ``state``."""
    n = cluster.nodes[node]
    assert n.status is not None
    models = [
        gn.ResidentModel(model=a.model, replica=a.replica, gpu=a.gpu, state=state)
        for a in n.spec.assignments
    ]
    cluster.nodes[node] = n.model_copy(
        update={"status": n.status.model_copy(update={"models": models})}
    )
