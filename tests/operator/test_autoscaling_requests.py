"""Capacity requests and scale-down protection derived from a plan (pure)."""

from __future__ import annotations

from stowplan import placement
from stowplan.operator import autoscaling

R = placement.UnplacedReason


def _plan(unplaced, nodes=("a",)):
    assignments = tuple(
        placement.Assignment(
            model="ns/m",
            replica=i,
            node=n,
            gpu=0,
            batch_size=1,
            duty_cycle_ms=10,
            busy_ms=1,
            memory_mib=10,
        )
        for i, n in enumerate(nodes)
    )
    return placement.Plan(
        assignments=assignments,
        unplaced=tuple(
            placement.Unplaced(model="ns/m", replica=r, reason=why) for r, why in unplaced
        ),
        gpus_used=len(nodes),
        lower_bound=1,
        solve_seconds=0,
    )


def _problem():
    demand = placement.ModelDemand(
        name="ns/m", replicas=4, slo_ms=50, target_qps=10,
        latency=placement.LatencyProfile(base_ms=1, per_item_ms=1),
        memory=placement.MemoryProfile(weights_mib=10, per_item_mib=0),
        max_batch=8, node_selector={"pool": "a100"},
    )  # fmt: skip
    return placement.Problem(gpus=(), models=(demand,))


def test_only_replicas_that_more_nodes_would_help_become_requests():
    plan = _plan([(1, R.NO_CAPACITY), (2, R.SLO_BELOW_BASE_LATENCY), (3, R.NO_MATCHING_NODE)])
    requests = autoscaling.capacity_requests(_problem(), plan)
    assert [(r.replica, dict(r.node_selector)) for r in requests] == [
        (1, {"pool": "a100"}),
        (3, {"pool": "a100"}),
    ]


def test_pod_names_are_stable_and_diffing_creates_and_deletes_the_difference():
    requests = autoscaling.capacity_requests(_problem(), _plan([(1, R.NO_CAPACITY)]))
    again = autoscaling.capacity_requests(_problem(), _plan([(1, R.NO_CAPACITY)]))
    assert requests[0].pod_name == again[0].pod_name
    create, delete = autoscaling.diff_pods(requests, ["capacity-stale"])
    assert create == requests and delete == ["capacity-stale"]
    assert autoscaling.diff_pods(requests, [requests[0].pod_name]) == ([], [])


def test_placeholder_pod_asks_for_one_gpu_and_is_restricted():
    request = autoscaling.capacity_requests(_problem(), _plan([(1, R.NO_CAPACITY)]))[0]
    pod = autoscaling.placeholder_pod(request, "stowplan-system")
    container = pod["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.present": "true",
        "stowplan.io/gpu-node": "true",
        "pool": "a100",
    }
    assert {"key": "stowplan.io/gpu-node", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "spec"
    ]["tolerations"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_busy_nodes_are_those_hosting_replicas():
    assert autoscaling.busy_nodes(_plan([], nodes=("a", "b", "a"))) == {"a", "b"}


def test_a_busy_node_gets_both_autoscalers_protection_and_an_idle_one_loses_both():
    none = autoscaling.protection_of({})
    assert autoscaling.protection_patch(none, protect=True) == {
        "cluster-autoscaler.kubernetes.io/scale-down-disabled": "true",
        "karpenter.sh/do-not-disrupt": "true",
    }
    assert autoscaling.protection_patch(none, protect=False) == {}
    both = autoscaling.protection_of(
        {"cluster-autoscaler.kubernetes.io/scale-down-disabled": "true",
         "karpenter.sh/do-not-disrupt": "true", "other": "true"}
    )  # fmt: skip
    assert autoscaling.protection_patch(both, protect=True) == {}
    assert autoscaling.protection_patch(both, protect=False) == {
        "cluster-autoscaler.kubernetes.io/scale-down-disabled": None,
        "karpenter.sh/do-not-disrupt": None,
    }


def test_a_node_protected_by_the_cluster_autoscalers_convention_alone_gains_karpenters():
    old = autoscaling.protection_of(
        {"cluster-autoscaler.kubernetes.io/scale-down-disabled": "true"}
    )
    assert autoscaling.protection_patch(old, protect=True) == {
        "karpenter.sh/do-not-disrupt": "true"
    }
    assert autoscaling.protection_patch(old, protect=False) == {
        "cluster-autoscaler.kubernetes.io/scale-down-disabled": None
    }


def test_an_annotation_that_does_not_read_true_is_left_to_whoever_set_it():
    theirs = autoscaling.protection_of({"karpenter.sh/do-not-disrupt": "false"})
    assert theirs == frozenset()
    assert autoscaling.protection_patch(theirs, protect=False) == {}
