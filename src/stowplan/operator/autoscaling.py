"""What a cluster autoscaler should see, derived from a plan (pure).

A cluster autoscaler (the Kubernetes Cluster Autoscaler, or Karpenter) adds nodes for pods that
cannot be scheduled and removes nodes that are under-used or empty. stowplan's replicas are not
pods (the agent runs them), so the operator speaks the autoscalers' language instead (DESIGN §6):

- every replica left unplaced for lack of capacity (``NoCapacity`` or ``NoMatchingNode``)
  becomes one *capacity request*: a pending placeholder pod that asks for one GPU of
  stowplan's node pool (its label, its taint tolerated) with the model's node selector; the
  agents hold every GPU of the pool's nodes through the same resource, so it fits no node
  there is already; the autoscaler scales a GPU node group up for it; once the replica is
  placed the pod is deleted;
- every node that hosts a replica is protected from scale-down with both autoscalers'
  annotations, the Cluster Autoscaler's ``cluster-autoscaler.kubernetes.io/scale-down-disabled``
  and Karpenter's ``karpenter.sh/do-not-disrupt``; a node that no longer hosts any loses both,
  so consolidation can remove it.

Callers: :mod:`stowplan.operator.fleet`. No I/O: :mod:`.kube` turns these into API objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stowplan import placement
from stowplan.api.gpunode import POOL_LABEL

SCALE_DOWN_DISABLED = "cluster-autoscaler.kubernetes.io/scale-down-disabled"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
#: the Node annotations (value "true") that keep a node hosting replicas from being removed
PROTECTION = (SCALE_DOWN_DISABLED, DO_NOT_DISRUPT)
CAPACITY_LABEL = "stowplan.io/capacity-request"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
PRIORITY_CLASS = "stowplan-capacity-request"

_NEEDS_NODES = {placement.UnplacedReason.NO_CAPACITY, placement.UnplacedReason.NO_MATCHING_NODE}


@dataclass(frozen=True)
class CapacityRequest:
    """One GPU that an unplaced replica is waiting for."""

    model: str
    replica: int
    node_selector: Mapping[str, str]

    @property
    def pod_name(self) -> str:
        digest = hashlib.sha256(f"{self.model}#{self.replica}".encode()).hexdigest()[:10]
        return f"capacity-{digest}"


def capacity_requests(problem: placement.Problem, plan: placement.Plan) -> list[CapacityRequest]:
    selectors = {m.name: m.node_selector for m in problem.models}
    return sorted(
        (
            CapacityRequest(u.model, u.replica, dict(selectors.get(u.model, {})))
            for u in plan.unplaced
            if u.reason in _NEEDS_NODES
        ),
        key=lambda r: (r.model, r.replica),
    )


def busy_nodes(plan: placement.Plan) -> set[str]:
    """Nodes that host at least one replica (to be protected from scale-down)."""
    return {a.node for a in plan.assignments}


def protection_of(annotations: Mapping[str, str] | None) -> frozenset[str]:
    """Which of :data:`PROTECTION` a Node's annotations set to "true"."""
    annotations = annotations or {}
    return frozenset(a for a in PROTECTION if annotations.get(a) == "true")


def protection_patch(current: frozenset[str], protect: bool) -> dict[str, str | None]:
    """The annotations patch (merge-patch: None removes) that protects a node, or unprotects it;
    empty when the node is already so. Unprotecting removes only what reads "true" (an
    annotation set to anything else belongs to someone else)."""
    if protect:
        return {a: "true" for a in PROTECTION if a not in current}
    return {a: None for a in PROTECTION if a in current}


def placeholder_pod(request: CapacityRequest, namespace: str) -> dict[str, Any]:
    """A pending pod that asks the autoscaler for one GPU node; compliant with the restricted
    Pod Security Standard; low priority and never preempting, so it only ever waits."""
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": request.pod_name,
            "namespace": namespace,
            "labels": {CAPACITY_LABEL: "true", "app.kubernetes.io/part-of": "stowplan"},
            "annotations": {
                "stowplan.io/model": request.model,
                "stowplan.io/replica": str(request.replica),
            },
        },
        "spec": {
            "priorityClassName": PRIORITY_CLASS,
            # stowplan's own node pool: its label, and its taint tolerated (no other pod does)
            "nodeSelector": {GPU_NODE_LABEL: "true", POOL_LABEL: "true", **request.node_selector},
            "tolerations": [
                {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
                {"key": POOL_LABEL, "operator": "Exists", "effect": "NoSchedule"},
            ],
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65535,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "reserve-gpu",
                    "image": PAUSE_IMAGE,
                    "resources": {
                        "requests": {GPU_RESOURCE: "1", "cpu": "10m", "memory": "16Mi"},
                        "limits": {GPU_RESOURCE: "1", "memory": "16Mi"},
                    },
                    "securityContext": restricted,
                }
            ],
        },
    }


def diff_pods(
    wanted: Sequence[CapacityRequest], existing: Sequence[str]
) -> tuple[list[CapacityRequest], list[str]]:
    """(requests to create, pod names to delete)."""
    want = {r.pod_name: r for r in wanted}
    have = set(existing)
    return [r for name, r in sorted(want.items()) if name not in have], sorted(have - set(want))
