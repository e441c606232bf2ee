"""What the operator and the agent call on the API server, as RBAC would name it.

Each Kubernetes client method the code calls maps to the ``(apiGroup, resource, verb,
namespace)`` permissions it needs (namespace ``None``: cluster-wide); kopf's own needs are
listed apart. ``tests/operator/test_rbac_least_privilege.py`` checks these tables against the
source and against ``manifests/base/*-rbac.yaml``; ``tests/cluster/test_rbac_on_apiserver.py``
asks the real API server (SubjectAccessReview) for every verb on every resource named here.
Imported by tests only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Permission = tuple[str, str, str, str | None]  # (apiGroup, resource, verb, namespace)

SP = "stowplan.io"
OPERATOR_NS = "stowplan-system"
DISCOVERY = "discovery.k8s.io"

#: client method (in operator/kube.py) -> what it needs
OPERATOR_CALLS: Mapping[str, tuple[Permission, ...]] = {
    # list_models / list_nodes
    "list_cluster_custom_object": ((SP, "inferencemodels", "list", None),
                                   (SP, "gpunodes", "list", None)),
    "patch_cluster_custom_object": ((SP, "gpunodes", "patch", None),),
    "patch_namespaced_custom_object_status": ((SP, "inferencemodels/status", "patch", None),),
    "patch_cluster_custom_object_status": ((SP, "gpunodes/status", "patch", None),),
    "create_namespaced_event": (("", "events", "create", None),),
    "list_namespaced_pod": (("", "pods", "list", OPERATOR_NS),),
    "create_namespaced_pod": (("", "pods", "create", OPERATOR_NS),),
    "delete_namespaced_pod": (("", "pods", "delete", OPERATOR_NS),),
    "read_node": (("", "nodes", "get", None),),
    "patch_node": (("", "nodes", "patch", None),),
    "list_node": (("", "nodes", "list", None),),
    "read_namespaced_lease": (("coordination.k8s.io", "leases", "get", OPERATOR_NS),),
    "create_namespaced_lease": (("coordination.k8s.io", "leases", "create", OPERATOR_NS),),
    "replace_namespaced_lease": (("coordination.k8s.io", "leases", "update", OPERATOR_NS),),
    # each model's Service and EndpointSlice, in the model's namespace (deleted with the model
    # by the garbage collector: no delete)
    "list_service_for_all_namespaces": (("", "services", "list", None),),
    "create_namespaced_service": (("", "services", "create", None),),
    "list_endpoint_slice_for_all_namespaces": ((DISCOVERY, "endpointslices", "list", None),),
    "create_namespaced_endpoint_slice": ((DISCOVERY, "endpointslices", "create", None),),
    "patch_namespaced_endpoint_slice": ((DISCOVERY, "endpointslices", "patch", None),),
}  # fmt: skip

#: kopf: the watches behind the on.event handlers, and its own resource/namespace discovery
KOPF: tuple[Permission, ...] = (
    (SP, "inferencemodels", "list", None),
    (SP, "inferencemodels", "watch", None),
    (SP, "gpunodes", "list", None),
    (SP, "gpunodes", "watch", None),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list", None),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch", None),
    ("", "namespaces", "list", None),
    ("", "namespaces", "watch", None),
)

#: client method (``self.api.<method>`` in the agent's GPUNode sync) -> what it needs
AGENT_CALLS: Mapping[str, tuple[Permission, ...]] = {
    "get_cluster_custom_object": ((SP, "gpunodes", "get", None),),
    "create_cluster_custom_object": ((SP, "gpunodes", "create", None),),
    "patch_cluster_custom_object_status": ((SP, "gpunodes/status", "patch", None),),
    # the watch: kubernetes.watch.Watch().stream(list_cluster_custom_object, ...)
    "list_cluster_custom_object": ((SP, "gpunodes", "list", None), (SP, "gpunodes", "watch", None)),
}

OPERATOR: frozenset[Permission] = frozenset(
    {p for ps in OPERATOR_CALLS.values() for p in ps} | set(KOPF)
)
AGENT: frozenset[Permission] = frozenset({p for ps in AGENT_CALLS.values() for p in ps})

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


def granted(docs: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """Every permission the (Cluster)Roles among ``docs`` grant, expanded rule by rule."""
    out: set[Permission] = set()
    for doc in docs:
        if doc.get("kind") not in ("ClusterRole", "Role"):
            continue
        namespace = doc["metadata"].get("namespace") if doc["kind"] == "Role" else None
        for rule in doc.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        out.add((group, resource, verb, namespace))
    return out
