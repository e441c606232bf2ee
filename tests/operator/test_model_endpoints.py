"""An address per model (FakeCluster): every InferenceModel gets a Service of its name, owned by
it, and an EndpointSlice that lists an agent only while it holds a Ready replica; a copy that is
removed (scale-down, move, unload) leaves the slice, and only after ``endpoint_drain_s`` with
the slice listed without it is its agent told to stop serving it."""

from __future__ import annotations

from typing import Any

from stowplan.operator import endpoints, fleet
from stowplan.operator.errors import ApiUnavailable, Invalid
from stowplan.operator.settings import NodeSettings, OperatorSettings
from stowplan.testing.clock import FakeClock
from stowplan.testing.cluster import FakeCluster, gpunode, model, report

DRAIN_S = 5.0
SETTINGS = OperatorSettings(nodes=NodeSettings(endpoint_drain_s=DRAIN_S, move_timeout_s=60))
IPS = {"n1": "10.244.0.11", "n2": "10.244.0.12"}


def _node(name: str, **kw: Any) -> Any:
    return gpunode(name, endpoint=f"http://{IPS[name]}:8000", **kw)


def _ips(cluster: FakeCluster, name: str = "a") -> list[str]:
    return sorted(e.ip for e in cluster.slices[("ns", name)].endpoints)


def _where(cluster: FakeCluster) -> dict[str, list[tuple[str, int]]]:
    return {
        name: [(a.model, a.replica) for a in n.spec.assignments]
        for name, n in sorted(cluster.nodes.items())
    }


def _update_spec(cluster: FakeCluster, key: str = "ns/a", **update: Any) -> None:
    old = cluster.models[key]
    cluster.models[key] = old.model_copy(update={"spec": old.spec.model_copy(update=update)})


def _slice_at_every_unassign(cluster: FakeCluster) -> list[tuple[str, list[str], list[str]]]:
    """(node, the copies it loses, the slice's IPs) at the moment each removal is written."""
    seen: list[tuple[str, list[str], list[str]]] = []

    def hook(node: str, assignments: list[Any]) -> None:
        before = {(a.model, a.replica) for a in cluster.nodes[node].spec.assignments}
        lost = sorted(f"{m}#{r}" for m, r in before - {(a.model, a.replica) for a in assignments})
        if lost:
            seen.append((node, lost, _ips(cluster)))

    cluster.before("set_assignments", hook)
    return seen


def _stamp(clock: FakeClock) -> str:
    return clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_model_gets_a_service_and_its_agents_join_the_slice_only_when_ready():
    cluster = FakeCluster([model("a", replicas=2)], [_node("n1"), _node("n2")])
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    await loop.run_pass()
    assert cluster.services == {("ns", "a"): "uid-a"}  # owned: deleted with the model
    assert cluster.slices[("ns", "a")].owner_uid == "uid-a"
    assert _ips(cluster) == []  # assigned, not Ready: nobody to send requests to
    status = cluster.models["ns/a"].status
    assert status is not None and status.url == "http://a.ns.svc:8000/v2/models/a"
    placed = sorted({p.node for p in status.placements})
    for node in placed:
        report(cluster, node, "Loading")
    await loop.run_pass()
    assert _ips(cluster) == []
    report(cluster, placed[0])
    await loop.run_pass()
    assert _ips(cluster) == [IPS[placed[0]]]
    for node in placed:
        report(cluster, node)
    await loop.run_pass()
    assert _ips(cluster) == sorted(IPS[n] for n in placed)
    assert cluster.slices[("ns", "a")].port == 8000
    writes = cluster.count("write_model_slice")
    await loop.run_pass()  # nothing changed: nothing written
    assert cluster.count("write_model_slice") == writes
    assert cluster.count("create_model_service") == 1


async def test_a_scaled_down_replica_leaves_the_slice_before_its_agent_stops_serving_it():
    clock = FakeClock()
    cluster = FakeCluster([model("a", replicas=2)], [_node("n1"), _node("n2")])
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=clock)
    await loop.run_pass()
    for node in ("n1", "n2"):
        report(cluster, node)
    await loop.run_pass()
    assert _ips(cluster) == sorted(IPS.values())
    removals = _slice_at_every_unassign(cluster)
    going = next(n for n, where in _where(cluster).items() if ("ns/a", 1) in where)
    staying = next(n for n in IPS if n != going)

    _update_spec(cluster, replicas=1)
    result = await loop.run_pass()
    assert result is not None
    assert _ips(cluster) == [IPS[staying]]  # left the slice ...
    assert ("ns/a", 1) in _where(cluster)[going]  # ... while its agent still serves it
    assert result.next_stale_in_s is not None and result.next_stale_in_s <= DRAIN_S
    clock.advance(DRAIN_S / 2)
    await loop.run_pass()
    assert ("ns/a", 1) in _where(cluster)[going]  # drain not over
    clock.advance(DRAIN_S)
    await loop.run_pass()
    assert ("ns/a", 1) not in _where(cluster)[going]
    assert removals == [(going, ["ns/a#1"], [IPS[staying]])]


async def test_a_moved_replica_joins_where_it_is_ready_and_leaves_where_it_was_before_removal():
    clock = FakeClock()
    cluster = FakeCluster(
        [model("a", replicas=1, nodeSelector={"zone": "z1"})],
        [_node("n1", labels={"zone": "z1"}), _node("n2", labels={"zone": "z2"})],
    )
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=clock)
    await loop.run_pass()
    report(cluster, "n1")
    await loop.run_pass()
    assert _ips(cluster) == [IPS["n1"]]
    removals = _slice_at_every_unassign(cluster)

    _update_spec(cluster, node_selector={"zone": "z2"})
    await loop.run_pass()  # make before break: both assigned, only the old copy serves
    assert _where(cluster) == {"n1": [("ns/a", 0)], "n2": [("ns/a", 0)]}
    assert _ips(cluster) == [IPS["n1"]]
    report(cluster, "n2")
    await loop.run_pass()  # the new copy joins, the old one leaves, and still serves
    assert _ips(cluster) == [IPS["n2"]]
    assert _where(cluster)["n1"] == [("ns/a", 0)]
    clock.advance(DRAIN_S)
    await loop.run_pass()
    assert _where(cluster) == {"n1": [], "n2": [("ns/a", 0)]}
    assert removals == [("n1", ["ns/a#0"], [IPS["n2"]])]


async def test_a_stale_agent_leaves_the_slice_at_once():
    clock = FakeClock()
    cluster = FakeCluster(
        [model("a", replicas=2)],
        [_node("n1", heartbeat=_stamp(clock)), _node("n2", heartbeat=_stamp(clock))],
    )
    settings = OperatorSettings(nodes=NodeSettings(endpoint_drain_s=DRAIN_S, stale_after_s=60))
    loop = fleet.FleetLoop(settings, cluster, clock=clock)
    await loop.run_pass()
    for node in ("n1", "n2"):
        report(cluster, node)
    await loop.run_pass()
    assert _ips(cluster) == sorted(IPS.values())
    clock.advance(61)
    n1 = cluster.nodes["n1"]
    assert n1.status is not None  # n1's agent heartbeats, n2's does not
    cluster.nodes["n1"] = n1.model_copy(
        update={"status": n1.status.model_copy(update={"heartbeat": _stamp(clock)})}
    )
    await loop.run_pass()
    assert _ips(cluster) == [IPS["n1"]]  # out at once: a dead agent serves nothing to drain


async def test_a_deleted_model_goes_with_its_service_and_slice_and_is_unloaded_at_once():
    cluster = FakeCluster([model("a", replicas=1), model("b", replicas=1)], [_node("n1")])
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    await loop.run_pass()
    report(cluster, "n1")
    await loop.run_pass()
    assert set(cluster.services) == {("ns", "a"), ("ns", "b")} and _ips(cluster) == [IPS["n1"]]
    cluster.models.pop("ns/a")  # deleted; the garbage collector has not caught up yet
    await loop.run_pass()
    assert _where(cluster) == {"n1": [("ns/b", 0)]}  # no address left to drain: unloaded
    cluster.delete_model("ns", "b")  # what the garbage collector does with the ownerReferences
    assert ("ns", "b") not in cluster.services and ("ns", "b") not in cluster.slices


async def test_a_name_that_is_no_service_name_gets_no_service_and_no_url():
    cluster = FakeCluster([model("resnet.v2", replicas=1)], [_node("n1")])
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    await loop.run_pass()
    assert cluster.services == {} and cluster.slices == {}
    status = cluster.models["ns/resnet.v2"].status
    assert status is not None and status.url == "" and status.replicas == 1


def test_agent_addresses_are_ipv4_from_the_gpunode_endpoint():
    assert endpoints.agent_address(_node("n1")) == (IPS["n1"], 8000)
    other = gpunode("x", endpoint="http://10.0.0.9:9000")
    assert endpoints.agent_address(other) == ("10.0.0.9", 9000)
    assert endpoints.agent_address(gpunode("x", endpoint="http://agent.local:8000")) is None
    assert endpoints.agent_address(gpunode("x")) is None
    assert endpoints.service_name_ok("mlp-wide-static")
    assert not endpoints.service_name_ok("9lives") and not endpoints.service_name_ok("a" * 64)


def test_loopback_and_link_local_agents_are_in_no_slice():
    for addr in ("127.0.0.1", "169.254.1.1", "0.0.0.0"):
        assert endpoints.agent_address(gpunode("x", endpoint=f"http://{addr}:8000")) is None


async def test_a_refused_slice_is_logged_and_the_pass_still_places(caplog):
    cluster = FakeCluster([model("a", replicas=1)], [_node("n1")])
    cluster.fail("write_model_slice", Invalid("endpointslices: 422 Unprocessable", 422), times=9)
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    result = await loop.run_pass()
    assert result is not None and result.replicas_placed == 1
    assert loop.failures_in_a_row == 0
    assert "EndpointSlice ns/a refused" in caplog.text


async def test_a_service_the_api_server_refuses_leaves_no_address_and_the_pass_still_places(caplog):
    # the local control plane's /24 Service range ran out at the 255th model: every pass failed
    cluster = FakeCluster([model(f"m{i}", replicas=1) for i in range(3)], [_node("n1", gpus=3)])
    full = ApiUnavailable("create_namespaced_service: 500 Internal Server Error", 500)
    cluster.fail("create_model_service", full, times=2)
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    result = await loop.run_pass()
    assert result is not None and result.replicas_placed == 3 and loop.failures_in_a_row == 0
    assert all(m.status is not None for m in cluster.models.values())
    assert "2 Services could not be created" in caplog.text
    assert len(cluster.services) == 1


async def test_new_models_statuses_are_written_before_their_services():
    cluster = FakeCluster([model("a", replicas=1)], [_node("n1")])
    await fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock()).run_pass()
    order = [name for name, _ in cluster.calls]
    assert order.index("set_model_status") < order.index("create_model_service")
    assert order.index("set_assignments") < order.index("set_model_status")
