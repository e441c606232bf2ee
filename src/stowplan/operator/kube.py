"""The operator's only door to the API server (besides kopf's own watches).

:class:`KubeCluster` implements :class:`stowplan.operator.cluster.Cluster`: it lists
InferenceModels and GPUNodes as parsed API types, writes ``GPUNode.spec.assignments`` and
``InferenceModel.status`` with JSON merge patches, posts core/v1 Events, keeps the
autoscalers' view (placeholder pods, the scale-down protection annotations on Nodes) in step
with the plan, keeps each model's Service and EndpointSlice (:mod:`.endpoints`), and reads/writes
the leader Lease. The blocking ``kubernetes`` client runs in worker
threads. Every request carries a timeout, and :func:`_call` is the one place where the client's
exceptions (``ApiException``, urllib3 and socket errors) become the operator's error tree
(:mod:`.errors`); nothing else catches them. Objects that do not parse (which the CRD schema
should make impossible) are logged and skipped, never fatal. What this module must not do:
decide (a 404 is reported as ``NotFound``; whether that matters is the caller's business).
Callers: :mod:`stowplan.operator.handlers` (builds one), then :mod:`.fleet` and
:mod:`.leadership` through the interface.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from stowplan import api
from stowplan.api import gpunode as gn
from stowplan.api import inferencemodel as imapi
from stowplan.operator import autoscaling, endpoints, errors, leadership, reconcile
from stowplan.operator.cluster import K8sNode
from stowplan.operator.endpoints import ModelRef, ModelSlice, SliceEndpoint
from stowplan.operator.errors import ApiUnavailable, NotFound

log = logging.getLogger(__name__)

GROUP, VERSION = api.GROUP, api.VERSION
_W = TypeVar("_W", bound=api.WireModel)


def api_client(connections: int = 16) -> kubernetes.client.ApiClient:
    """In-cluster credentials, else the kubeconfig (``$KUBECONFIG``); one client (one
    connection pool of ``connections``) serves every call."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    config.connection_pool_maxsize = connections
    return kubernetes.client.ApiClient(config)


def _parse_status(body: dict[str, Any]) -> dict[str, Any]:
    """Drop what other writers (e.g. kopf's progress storage) keep in status."""
    status = dict(body.get("status") or {})
    status.pop("kopf", None)
    return {**body, "status": status or None}


def parse_model(body: dict[str, Any]) -> api.InferenceModel | None:
    """An InferenceModel from a watch event's body; None (logged) when it does not parse or
    is being deleted."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    try:
        return api.InferenceModel.model_validate(_parse_status(body))
    except ValidationError as err:
        where = "/".join(filter(None, (meta.get("namespace"), meta.get("name"))))
        log.warning("skipping invalid InferenceModel %s: %s", where, err)
        return None


def _owner_uid(refs: list[dict[str, Any]] | None) -> str | None:
    return next((r.get("uid") for r in refs or [] if r.get("kind") == imapi.KIND), None)


def _model_meta(
    namespace: str, name: str, owner_uid: str | None, labels: dict[str, str]
) -> dict[str, Any]:
    """Metadata of an object that belongs to one InferenceModel (garbage-collected with it)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**labels, api.MODEL_LABEL: name},
    }
    if owner_uid:
        meta["ownerReferences"] = [{
            "apiVersion": f"{GROUP}/{VERSION}", "kind": imapi.KIND, "name": name,
            "uid": owner_uid, "controller": True,
        }]  # fmt: skip
    return meta


class KubeCluster:
    """The real API server; ``request_timeout_s`` bounds every request."""

    def __init__(self, client: kubernetes.client.ApiClient, *, request_timeout_s: float) -> None:
        self._custom = kubernetes.client.CustomObjectsApi(client)
        self._core = kubernetes.client.CoreV1Api(client)
        self._coordination = kubernetes.client.CoordinationV1Api(client)
        self._discovery = kubernetes.client.DiscoveryV1Api(client)
        self.request_timeout_s = request_timeout_s

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        what = getattr(fn, "__name__", str(fn))
        timeout = self.request_timeout_s
        kwargs["_request_timeout"] = (timeout, timeout)
        try:
            # the socket timeout ends the thread; wait_for frees the loop even if it does not
            return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), 2 * timeout + 1)
        except ApiException as err:
            raise errors.from_status(err.status or 0, f"{what}: {err.status} {err.reason}") from err
        except (TimeoutError, OSError, urllib3.exceptions.HTTPError) as err:
            raise ApiUnavailable(f"{what}: {type(err).__name__}: {err}") from err

    async def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """A write whose response body is not needed: read and dropped unparsed (the client's
        typed deserialization of a Service or an EndpointSlice costs more than the request)."""

        def drained(*a: Any, **kw: Any) -> None:
            response = fn(*a, _preload_content=False, **kw)
            response.read()
            response.release_conn()

        drained.__name__ = getattr(fn, "__name__", str(fn))
        await self._call(drained, *args, **kwargs)

    async def _json(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A read as plain JSON (no typed deserialization: lists of thousands stay cheap)."""

        def parsed(*a: Any, **kw: Any) -> Any:
            response = fn(*a, _preload_content=False, **kw)
            try:
                return json.loads(response.read())
            finally:
                response.release_conn()

        parsed.__name__ = getattr(fn, "__name__", str(fn))
        return await self._call(parsed, *args, **kwargs)

    async def _list(self, plural: str, kind: type[_W]) -> list[_W]:
        """Every object of ``plural`` that parses and is not being deleted (its replicas are
        released now); one that does not parse is logged and skipped."""
        raw = await self._json(self._custom.list_cluster_custom_object, GROUP, VERSION, plural)
        out = []
        for item in raw.get("items", []):
            meta = item.get("metadata", {})
            if meta.get("deletionTimestamp"):
                continue
            try:
                out.append(kind.model_validate(_parse_status(item)))
            except ValidationError as err:
                where = "/".join(filter(None, (meta.get("namespace"), meta.get("name"))))
                log.warning("skipping invalid %s %s: %s", kind.__name__, where, err)
        return out

    async def list_models(self) -> list[api.InferenceModel]:
        return await self._list(imapi.PLURAL, api.InferenceModel)

    async def list_nodes(self) -> list[api.GPUNode]:
        return await self._list(gn.PLURAL, api.GPUNode)

    async def set_assignments(self, node: str, assignments: list[gn.Assignment]) -> None:
        body = {"spec": {"assignments": [a.wire() for a in assignments]}}
        await self._write(
            self._custom.patch_cluster_custom_object, GROUP, VERSION, gn.PLURAL, node, body
        )

    async def set_model_status(
        self, namespace: str, name: str, status: imapi.InferenceModelStatus
    ) -> None:
        wire = status.wire()
        # merge patch: explicit nulls remove fields the new status no longer has
        for key in ("capacity", "observed"):
            wire.setdefault(key, None)
        await self._write(
            self._custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, namespace, imapi.PLURAL, name, {"status": wire},
        )  # fmt: skip

    async def post_event(self, event_: reconcile.Event, uid: str | None) -> None:
        ts = datetime.now(UTC)
        body = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{event_.name}."),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=imapi.KIND,
                name=event_.name,
                namespace=event_.namespace,
                uid=uid,
            ),
            reason=event_.reason,
            message=event_.message[:1024],
            type=event_.type,
            source=kubernetes.client.V1EventSource(component="stowplan-operator"),
            first_timestamp=ts,
            last_timestamp=ts,
            count=1,
            reporting_component="stowplan.io/operator",
            reporting_instance="stowplan-operator",
        )
        await self._write(self._core.create_namespaced_event, event_.namespace, body)

    async def list_capacity_pods(self, namespace: str) -> list[str]:
        pods = await self._call(
            self._core.list_namespaced_pod,
            namespace,
            label_selector=f"{autoscaling.CAPACITY_LABEL}=true",
        )
        return [p.metadata.name for p in pods.items]

    async def create_pod(self, body: dict[str, Any]) -> None:
        await self._call(self._core.create_namespaced_pod, body["metadata"]["namespace"], body)

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self._call(self._core.delete_namespaced_pod, name, namespace, grace_period_seconds=0)

    async def list_k8s_nodes(self) -> dict[str, K8sNode]:
        nodes = await self._json(self._core.list_node)
        return {
            n["metadata"]["name"]: K8sNode(
                unschedulable=bool((n.get("spec") or {}).get("unschedulable")),
                protection=autoscaling.protection_of(n["metadata"].get("annotations")),
            )
            for n in nodes.get("items") or []
        }

    async def set_gpunode_conditions(self, node: str, conditions: list[api.Condition]) -> None:
        body = {"status": {"conditions": [c.wire() for c in conditions]}}
        await self._call(
            self._custom.patch_cluster_custom_object_status, GROUP, VERSION, gn.PLURAL, node, body
        )

    async def set_protection(self, node: str, protect: bool) -> bool:
        """Reads first, so that an unchanged node is never written."""
        try:
            current = await self._call(self._core.read_node, node)
        except NotFound:
            return False  # a GPUNode registered by hand has no Node
        patch = autoscaling.protection_patch(
            autoscaling.protection_of(current.metadata.annotations), protect
        )
        if not patch:
            return False
        await self._call(self._core.patch_node, node, {"metadata": {"annotations": patch}})
        return True

    async def list_model_services(self) -> dict[ModelRef, str | None]:
        selector = f"{endpoints.MANAGED_BY_LABEL}={endpoints.MANAGED_BY}"
        raw = await self._json(self._core.list_service_for_all_namespaces, label_selector=selector)
        return {
            (s["metadata"]["namespace"], s["metadata"]["name"]): _owner_uid(
                s["metadata"].get("ownerReferences")
            )
            for s in raw.get("items") or []
        }

    async def create_model_service(self, namespace: str, name: str, owner_uid: str | None) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _model_meta(namespace, name, owner_uid, {
                endpoints.MANAGED_BY_LABEL: endpoints.MANAGED_BY,
            }),
            # no selector: the operator writes the EndpointSlice (the agents that hold the model)
            "spec": {
                "type": "ClusterIP",
                "ports": [{
                    "name": endpoints.PORT_NAME, "protocol": "TCP",
                    "port": endpoints.SERVICE_PORT, "targetPort": endpoints.SERVICE_PORT,
                }],
            },
        }  # fmt: skip
        await self._write(self._core.create_namespaced_service, namespace, body)

    async def list_model_slices(self) -> dict[ModelRef, ModelSlice]:
        selector = f"{endpoints.SLICE_MANAGED_BY_LABEL}={endpoints.SLICE_MANAGED_BY}"
        raw = await self._json(
            self._discovery.list_endpoint_slice_for_all_namespaces, label_selector=selector
        )
        out = {}
        for s in raw.get("items") or []:
            meta = s["metadata"]
            ports = s.get("ports") or []
            port = next((p["port"] for p in ports if p.get("port")), endpoints.SERVICE_PORT)
            out[(meta["namespace"], meta["name"])] = ModelSlice(
                port=port,
                endpoints=tuple(
                    SliceEndpoint(ip, e.get("nodeName") or "")
                    for e in s.get("endpoints") or []
                    for ip in e.get("addresses") or []
                ),
                owner_uid=_owner_uid(meta.get("ownerReferences")),
            )
        return out

    async def write_model_slice(
        self, namespace: str, name: str, slice_: ModelSlice, *, exists: bool
    ) -> None:
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": _model_meta(namespace, name, slice_.owner_uid, {
                endpoints.SLICE_MANAGED_BY_LABEL: endpoints.SLICE_MANAGED_BY,
                endpoints.SERVICE_NAME_LABEL: name,
            }),
            "addressType": "IPv4",
            "ports": [{"name": endpoints.PORT_NAME, "protocol": "TCP", "port": slice_.port}],
            "endpoints": [
                {"addresses": [e.ip], "nodeName": e.node, "conditions": {"ready": True}}
                for e in slice_.endpoints
            ],
        }  # fmt: skip
        if not exists:
            await self._write(self._discovery.create_namespaced_endpoint_slice, namespace, body)
            return
        patch = {"ports": body["ports"], "endpoints": body["endpoints"]}
        await self._write(
            self._discovery.patch_namespaced_endpoint_slice, name, namespace, patch,
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    async def read_lease(
        self, namespace: str, name: str
    ) -> tuple[leadership.LeaseState | None, str | None]:
        try:
            lease = await self._call(self._coordination.read_namespaced_lease, name, namespace)
        except NotFound:
            return None, None
        spec = lease.spec
        state = leadership.LeaseState(
            holder=spec.holder_identity,
            renewed=spec.renew_time,
            duration_s=float(spec.lease_duration_seconds or 0),
        )
        return state, lease.metadata.resource_version

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
        spec = kubernetes.client.V1LeaseSpec(
            holder_identity=holder,
            lease_duration_seconds=max(int(duration_s), 1),
            renew_time=now,
        )
        if resource_version is None:
            spec.acquire_time = now
            spec.lease_transitions = 0
            body = kubernetes.client.V1Lease(
                metadata=kubernetes.client.V1ObjectMeta(name=name, namespace=namespace), spec=spec
            )
            await self._call(self._coordination.create_namespaced_lease, namespace, body)
            return
        current = await self._call(self._coordination.read_namespaced_lease, name, namespace)
        spec.acquire_time = now if transition else current.spec.acquire_time
        spec.lease_transitions = (current.spec.lease_transitions or 0) + (1 if transition else 0)
        body = kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(
                name=name, namespace=namespace, resource_version=resource_version
            ),
            spec=spec,
        )
        await self._call(self._coordination.replace_namespaced_lease, name, namespace, body)
