"""Node and agent faults through the fleet pass: a silent agent's GPUNode goes Ready=False and
its replicas are re-placed; a cordoned or deleted Node is evacuated and gets nothing new; an
agent that restarts in time moves nothing."""

from __future__ import annotations

from datetime import timedelta

from stowplan.operator import fleet, health
from stowplan.operator.settings import NodeSettings, OperatorSettings
from stowplan.testing.clock import FakeClock
from stowplan.testing.cluster import FakeCluster, gpunode, model, report

SETTINGS = OperatorSettings(nodes=NodeSettings(stale_after_s=10))


def _stamp(clock: FakeClock, ago_s: float = 0) -> str:
    return (clock.now() - timedelta(seconds=ago_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _beat(cluster: FakeCluster, clock: FakeClock, *names: str) -> None:
    for name in names:
        n = cluster.nodes[name]
        assert n.status is not None
        status = n.status.model_copy(update={"heartbeat": _stamp(clock)})
        cluster.nodes[name] = n.model_copy(update={"status": status})


def _hosts(cluster: FakeCluster) -> set[str]:
    return {name for name, n in cluster.nodes.items() if n.spec.assignments}


async def test_a_silent_agent_is_marked_not_ready_and_its_replicas_move():
    clock = FakeClock()
    cluster = FakeCluster([model("a", replicas=1)], [gpunode("n1"), gpunode("n2")])
    _beat(cluster, clock, "n1", "n2")
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=clock)
    result = await loop.run_pass()
    assert result is not None and result.next_stale_in_s == 10
    (host,) = _hosts(cluster)
    report(cluster, host)
    other = ({"n1", "n2"} - {host}).pop()
    clock.advance(11)
    _beat(cluster, clock, other)  # only the other agent is alive
    await loop.run_pass()
    assert _hosts(cluster) == {other}
    cond = cluster.nodes[host].status.conditions[0]  # type: ignore[union-attr]
    assert (cond.type, cond.status, cond.reason) == ("Ready", "False", health.STALE)
    writes = cluster.count("set_gpunode_conditions")
    await loop.run_pass()
    assert cluster.count("set_gpunode_conditions") == writes  # marked once


async def test_a_cordoned_node_is_evacuated_and_gets_nothing_new():
    cluster = FakeCluster([model("a", replicas=1)], [gpunode("n1"), gpunode("n2")])
    cluster.k8s_nodes = {"n1": {}, "n2": {}}
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    await loop.run_pass()
    (host,) = _hosts(cluster)
    cluster.cordoned.add(host)
    await loop.run_pass()
    assert _hosts(cluster) == {"n1", "n2"} - {host}
    cluster.models["ns/b"] = model("b", replicas=1)
    await loop.run_pass()
    assert not cluster.nodes[host].spec.assignments


async def test_a_deleted_node_is_evacuated_but_a_hand_registered_gpunode_is_not():
    cluster = FakeCluster([model("a", replicas=2)], [gpunode("n1"), gpunode("n2", gpus=2)])
    cluster.k8s_nodes = {"n1": {}}  # n2 never had a Node: registered by hand
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    await loop.run_pass()
    assert _hosts(cluster) == {"n1", "n2"}
    del cluster.k8s_nodes["n1"]  # scaled down; its GPUNode lingers
    await loop.run_pass()
    assert _hosts(cluster) == {"n2"}
    assert len(cluster.nodes["n2"].spec.assignments) == 2


async def test_an_agent_that_restarts_within_stale_after_moves_nothing():
    clock = FakeClock()
    cluster = FakeCluster([model("a", replicas=2)], [gpunode("n1"), gpunode("n2")])
    _beat(cluster, clock, "n1", "n2")
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=clock)
    await loop.run_pass()
    report(cluster, "n1")
    report(cluster, "n2")
    await loop.run_pass()
    before = {n: list(v.spec.assignments) for n, v in cluster.nodes.items()}
    clock.advance(8)  # the agent on n1 was down 8 s, then reports again (Loading, then Ready)
    _beat(cluster, clock, "n1", "n2")
    report(cluster, "n1", "Loading")
    await loop.run_pass()
    report(cluster, "n1")
    await loop.run_pass()
    assert {n: list(v.spec.assignments) for n, v in cluster.nodes.items()} == before
    assert cluster.count("set_assignments") == 2  # the first pass's writes only


async def test_hosting_nodes_carry_both_autoscalers_protection_until_they_host_nothing():
    cluster = FakeCluster([model("a", replicas=1)], [gpunode("n1"), gpunode("n2")])
    cluster.k8s_nodes = {"n1": {}, "n2": {}}
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    await loop.run_pass()
    (host,) = _hosts(cluster)
    (idle,) = {"n1", "n2"} - {host}
    assert cluster.k8s_nodes[host] == {
        "cluster-autoscaler.kubernetes.io/scale-down-disabled": "true",
        "karpenter.sh/do-not-disrupt": "true",
    }
    assert cluster.k8s_nodes[idle] == {}
    writes = cluster.count("set_protection")
    await loop.run_pass()
    assert cluster.count("set_protection") == writes  # nothing changed: nothing written
    del cluster.models["ns/a"]
    await loop.run_pass()
    assert cluster.k8s_nodes[host] == {}
