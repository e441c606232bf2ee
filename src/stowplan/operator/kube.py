"""The operator's only door to the API server (besides kopf's own watches).

Callers: :mod:`stowplan.operator.fleet`. Lists InferenceModels and GPUNodes as parsed API types,
writes ``GPUNode.spec.assignments`` and ``InferenceModel.status`` with JSON merge patches,
posts core/v1 Events, and keeps the Cluster Autoscaler's view (placeholder pods, the
scale-down-disabled annotation on Nodes) in step with the plan. The blocking ``kubernetes``
client runs in worker threads. Objects that do not parse (which the CRD schema should make
impossible) are logged and skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from stowplan import api
from stowplan.api import gpunode as gn
from stowplan.api import inferencemodel as imapi
from stowplan.operator import autoscaling, leadership, reconcile
from stowplan.operator.errors import ApiUnavailable

log = logging.getLogger(__name__)

GROUP, VERSION = api.GROUP, api.VERSION
_W = TypeVar("_W", bound=api.WireModel)


_client: kubernetes.client.ApiClient | None = None


def login() -> None:
    """Load in-cluster credentials, else the kubeconfig (``$KUBECONFIG``); one shared client
    (one connection pool) serves every call."""
    global _client
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    _client = kubernetes.client.ApiClient()


def _custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(_client)


def _core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(_client)


def _coordination() -> kubernetes.client.CoordinationV1Api:
    return kubernetes.client.CoordinationV1Api(_client)


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except ApiException as err:
        if err.status in (409, 404):
            raise
        raise ApiUnavailable(f"{getattr(fn, '__name__', fn)}: {err.status} {err.reason}") from err
    except OSError as err:
        raise ApiUnavailable(str(err)) from err


def _parse_status(body: dict[str, Any]) -> dict[str, Any]:
    """Drop what other writers (e.g. kopf's progress storage) keep in status."""
    status = dict(body.get("status") or {})
    status.pop("kopf", None)
    return {**body, "status": status or None}


async def _list(plural: str, kind: type[_W]) -> list[_W]:
    """Every object of ``plural`` that parses and is not being deleted (its replicas are
    released now); one that does not parse is logged and skipped."""
    raw = await _call(_custom().list_cluster_custom_object, GROUP, VERSION, plural)
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


async def list_models() -> list[api.InferenceModel]:
    return await _list(imapi.PLURAL, api.InferenceModel)


async def list_nodes() -> list[api.GPUNode]:
    return await _list(gn.PLURAL, api.GPUNode)


async def set_assignments(node: str, assignments: list[gn.Assignment]) -> None:
    body = {"spec": {"assignments": [a.wire() for a in assignments]}}
    await _call(_custom().patch_cluster_custom_object, GROUP, VERSION, gn.PLURAL, node, body)


async def set_model_status(namespace: str, name: str, status: imapi.InferenceModelStatus) -> None:
    wire = status.wire()
    # merge patch: explicit nulls remove fields the new status no longer has
    for key in ("capacity", "observed"):
        wire.setdefault(key, None)
    try:
        await _call(
            _custom().patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            imapi.PLURAL,
            name,
            {"status": wire},
        )
    except ApiException as err:
        if err.status != 404:  # deleted meanwhile: nothing to report on
            raise


async def post_event(event_: reconcile.Event, uid: str | None) -> None:
    """Post a core/v1 Event about an InferenceModel (best effort: failures are logged)."""
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
    try:
        await _call(_core().create_namespaced_event, event_.namespace, body)
    except (ApiException, ApiUnavailable) as err:
        log.warning(
            "could not post event %s on %s/%s: %s",
            event_.reason,
            event_.namespace,
            event_.name,
            err,
        )


async def list_capacity_pods(namespace: str) -> list[str]:
    pods = await _call(
        _core().list_namespaced_pod,
        namespace,
        label_selector=f"{autoscaling.CAPACITY_LABEL}=true",
    )
    return [p.metadata.name for p in pods.items]


async def create_pod(body: dict[str, Any]) -> None:
    try:
        await _call(
            _core().create_namespaced_pod,
            body["metadata"]["namespace"],
            body,
        )
    except ApiException as err:
        if err.status != 409:  # already there
            raise ApiUnavailable(f"create pod: {err.status} {err.reason}: {err.body}") from err


async def delete_pod(namespace: str, name: str) -> None:
    try:
        await _call(
            _core().delete_namespaced_pod, name, namespace,
            grace_period_seconds=0,
        )  # fmt: skip
    except ApiException as err:
        if err.status != 404:
            raise


async def set_scale_down_disabled(node: str, disabled: bool) -> bool:
    """Set or clear the autoscaler's scale-down-disabled annotation on a Node.

    Returns False when the Node does not exist (a GPUNode registered by hand) or already has the
    wanted value; reads first so that an unchanged node is never written."""
    try:
        current = await _call(_core().read_node, node)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    annotations = current.metadata.annotations or {}
    has = annotations.get(autoscaling.SCALE_DOWN_DISABLED) == "true"
    if has == disabled:
        return False
    value = "true" if disabled else None
    body = {"metadata": {"annotations": {autoscaling.SCALE_DOWN_DISABLED: value}}}
    await _call(_core().patch_node, node, body)
    return True


async def read_lease(namespace: str, name: str) -> tuple[leadership.LeaseState | None, str | None]:
    """The Lease's state and resourceVersion, or (None, None) when there is none."""
    try:
        lease = await _call(_coordination().read_namespaced_lease, name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None, None
        raise
    spec = lease.spec
    state = leadership.LeaseState(
        holder=spec.holder_identity,
        renewed=spec.renew_time,
        duration_s=float(spec.lease_duration_seconds or 0),
    )
    return state, lease.metadata.resource_version


async def write_lease(
    namespace: str,
    name: str,
    *,
    holder: str,
    duration_s: float,
    now: datetime,
    resource_version: str | None,
    transition: bool,
) -> None:
    """Create the Lease, or replace it at ``resource_version`` (409 when someone was faster)."""
    api_ = _coordination()
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
        await _call(api_.create_namespaced_lease, namespace, body)
        return
    current = await _call(api_.read_namespaced_lease, name, namespace)
    spec.acquire_time = now if transition else current.spec.acquire_time
    spec.lease_transitions = (current.spec.lease_transitions or 0) + (1 if transition else 0)
    body = kubernetes.client.V1Lease(
        metadata=kubernetes.client.V1ObjectMeta(
            name=name, namespace=namespace, resource_version=resource_version
        ),
        spec=spec,
    )
    await _call(api_.replace_namespaced_lease, name, namespace, body)
