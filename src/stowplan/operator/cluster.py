"""What the operator needs from the API server, as an interface (a Protocol).

:class:`stowplan.operator.kube.KubeCluster` implements it against a real API server;
``stowplan.testing.cluster.FakeCluster`` implements it in memory (with errors injectable at any
call) so that unit tests drive :func:`stowplan.operator.fleet.reconcile_once` without a server.
The model Services and EndpointSlices: :mod:`.endpoints`.
Every method raises only :class:`stowplan.operator.errors.ApiError` subclasses. Callers:
:mod:`.fleet`, :mod:`.leadership` (the two Lease methods), :mod:`.handlers` (builds one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from stowplan import api
from stowplan.api import gpunode as gn
from stowplan.api import inferencemodel as imapi
from stowplan.operator.endpoints import ModelRef, ModelSlice
from stowplan.operator.leadership import LeaseState
from stowplan.operator.reconcile import Event


@dataclass(frozen=True)
class K8sNode:
    """What the operator reads of a Kubernetes Node."""

    unschedulable: bool  # cordoned
    protection: frozenset[str]  # the autoscalers' annotations that read "true" (autoscaling.py)


class Cluster(Protocol):
    async def list_models(self) -> list[api.InferenceModel]:
        """Every InferenceModel that parses and is not being deleted."""
        ...

    async def list_nodes(self) -> list[api.GPUNode]:
        """Every GPUNode that parses and is not being deleted."""
        ...

    async def set_assignments(self, node: str, assignments: list[gn.Assignment]) -> None:
        """Replace ``GPUNode.spec.assignments`` (NotFound when the GPUNode is gone)."""
        ...

    async def set_model_status(
        self, namespace: str, name: str, status: imapi.InferenceModelStatus
    ) -> None:
        """Replace ``InferenceModel.status`` (NotFound when the model is gone)."""
        ...

    async def post_event(self, event: Event, uid: str | None) -> None:
        """Post a core/v1 Event about an InferenceModel."""
        ...

    async def list_capacity_pods(self, namespace: str) -> list[str]: ...

    async def create_pod(self, body: dict[str, Any]) -> None:
        """Create a placeholder pod (Conflict when it exists)."""
        ...

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a placeholder pod (NotFound when it is gone)."""
        ...

    async def list_k8s_nodes(self) -> dict[str, K8sNode]:
        """Every Kubernetes Node by name (one list call per pass)."""
        ...

    async def set_gpunode_conditions(self, node: str, conditions: list[api.Condition]) -> None:
        """Replace ``GPUNode.status.conditions`` (the operator does it only for a node whose
        agent stopped heartbeating; NotFound when the GPUNode is gone)."""
        ...

    async def set_protection(self, node: str, protect: bool) -> bool:
        """Set or clear the autoscalers' scale-down protection annotations on a Node; False
        when nothing was written (the Node does not exist or already has the values)."""
        ...

    async def list_model_services(self) -> dict[ModelRef, str | None]:
        """The Services the operator created (by its managed-by label), every namespace:
        (namespace, name) -> the uid of the InferenceModel that owns it."""
        ...

    async def create_model_service(self, namespace: str, name: str, owner_uid: str | None) -> None:
        """Create a model's Service (Conflict when one of that name exists)."""
        ...

    async def list_model_slices(self) -> dict[ModelRef, ModelSlice]:
        """The EndpointSlices the operator manages (by its managed-by label), every namespace."""
        ...

    async def write_model_slice(
        self, namespace: str, name: str, slice_: ModelSlice, *, exists: bool
    ) -> None:
        """Create (``exists`` False) or replace the endpoints and ports of a model's
        EndpointSlice (NotFound when it is gone, Conflict when it appeared meanwhile)."""
        ...

    async def read_lease(self, namespace: str, name: str) -> tuple[LeaseState | None, str | None]:
        """The Lease's state and resourceVersion, or (None, None) when there is none."""
        ...

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
        """Create the Lease, or replace it at ``resource_version`` (Conflict when someone was
        faster)."""
        ...
