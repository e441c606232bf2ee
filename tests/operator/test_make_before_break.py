"""Moves never leave a replica nowhere: a pass cut off between its two patches is recovered, a
moved replica's old copy serves until the new one is Ready (or a timeout, with an event), and
the model's Ready count does not drop meanwhile."""

from __future__ import annotations

from stowplan import api
from stowplan.operator import fleet, inventory
from stowplan.operator.settings import NodeSettings, OperatorSettings
from stowplan.testing.clock import FakeClock
from stowplan.testing.cluster import FakeCluster, gpunode, model, report

SETTINGS = OperatorSettings(nodes=NodeSettings(move_timeout_s=60))


def _where(cluster: FakeCluster) -> dict[str, list[tuple[str, int]]]:
    return {
        name: [(a.model, a.replica) for a in n.spec.assignments]
        for name, n in sorted(cluster.nodes.items())
    }


def _ready(cluster: FakeCluster, key: str = "ns/a") -> int:
    status = cluster.models[key].status
    assert status is not None
    return status.ready_replicas


def _move_to(cluster: FakeCluster, zone: str) -> None:
    old = cluster.models["ns/a"]
    spec = old.spec.model_copy(update={"node_selector": {"zone": zone}})
    cluster.models["ns/a"] = old.model_copy(update={"spec": spec})


async def test_a_moved_replica_serves_from_its_old_gpu_until_the_new_copy_is_ready():
    cluster = FakeCluster(
        [model("a", replicas=1)],
        [gpunode("n1", labels={"zone": "z1"}), gpunode("n2", labels={"zone": "z2"})],
    )
    _move_to(cluster, "z1")
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    await loop.run_pass()
    report(cluster, "n1")
    await loop.run_pass()
    assert _where(cluster) == {"n1": [("ns/a", 0)], "n2": []} and _ready(cluster) == 1

    _move_to(cluster, "z2")  # the user moves the model: make before break
    await loop.run_pass()
    assert _where(cluster) == {"n1": [("ns/a", 0)], "n2": [("ns/a", 0)]}
    assert _ready(cluster) == 1  # the old copy still serves
    report(cluster, "n2", "Loading")
    await loop.run_pass()
    assert _where(cluster)["n1"] == [("ns/a", 0)] and _ready(cluster) == 1
    report(cluster, "n2")  # the new copy is Ready: break the old one
    await loop.run_pass()
    assert _where(cluster) == {"n1": [], "n2": [("ns/a", 0)]} and _ready(cluster) == 1
    assert cluster.models["ns/a"].status.placements[0].node == "n2"  # type: ignore[union-attr]


async def test_a_move_that_never_gets_ready_times_out_with_an_event():
    cluster = FakeCluster(
        [model("a", replicas=1)],
        [gpunode("n1", labels={"zone": "z1"}), gpunode("n2", labels={"zone": "z2"})],
    )
    clock = FakeClock()
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=clock)
    _move_to(cluster, "z1")
    await loop.run_pass()
    report(cluster, "n1")
    _move_to(cluster, "z2")
    await loop.run_pass()
    assert _where(cluster)["n1"] == [("ns/a", 0)]
    clock.advance(61)
    await loop.run_pass()
    assert _where(cluster) == {"n1": [], "n2": [("ns/a", 0)]}
    assert [e.reason for e in cluster.events if e.type == "Warning"] == ["MoveTimedOut"]


def _assignment(node_gpu: int = 0) -> dict:
    return {
        "model": "ns/a", "replica": 0, "gpu": node_gpu, "source": {"uri": "file:///m/a.onnx"},
        "batchSize": 4, "maxBatch": 64, "dutyCycleMs": 20, "busyMs": 4, "memoryMiB": 1040,
        "sloMs": 50,
    }  # fmt: skip


def _half_applied(status_on: str | None, ready_on: str | None) -> FakeCluster:
    """Replica 0 of ns/a listed by both n1 and n2: the operator died between the two patches."""
    nodes = []
    for name in ("n1", "n2"):
        n = gpunode(
            name,
            models=[{"model": "ns/a", "replica": 0, "gpu": 0, "state": "Ready"}]
            if name == ready_on
            else [],
        )
        spec = n.spec.model_copy(
            update={"assignments": [api.gpunode.Assignment.model_validate(_assignment())]}
        )
        nodes.append(n.model_copy(update={"spec": spec}))
    im = model("a", replicas=1)
    if status_on is not None:
        status = api.inferencemodel.InferenceModelStatus.model_validate(
            {"placements": [{"replica": 0, "node": status_on, "gpu": 0}]}
        )
        im = im.model_copy(update={"status": status})
    return FakeCluster([im], nodes)


def test_a_replica_listed_twice_is_counted_once_where_the_status_agrees():
    cluster = _half_applied(status_on="n2", ready_on="n1")
    problem = inventory.problem(cluster.models.values(), cluster.nodes.values())
    assert [(a.node, a.replica) for a in problem.current] == [("n2", 0)]
    held = {g.node: g.memory_mib for g in problem.gpus}
    assert held == {"n1": 16384 - 1040, "n2": 16384}  # the other copy's memory stays held
    # without a status, the copy the agent reports Ready wins
    cluster = _half_applied(status_on=None, ready_on="n1")
    problem = inventory.problem(cluster.models.values(), cluster.nodes.values())
    assert [(a.node, a.replica) for a in problem.current] == [("n1", 0)]


async def test_a_half_applied_move_converges_without_failing_a_pass():
    cluster = _half_applied(status_on="n2", ready_on="n1")
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    assert await loop.run_pass() is not None
    # n1's copy still serves, n2's is not Ready yet: both stay
    assert _where(cluster) == {"n1": [("ns/a", 0)], "n2": [("ns/a", 0)]} and _ready(cluster) == 1
    report(cluster, "n2")
    await loop.run_pass()
    assert _where(cluster) == {"n1": [], "n2": [("ns/a", 0)]}
    assert loop.metrics.failures.labels("bug")._value.get() == 0


async def test_a_pass_writes_the_node_that_gains_before_the_node_that_loses():
    cluster = FakeCluster(
        [model("a", replicas=1)],
        [gpunode("n2", labels={"zone": "z1"}), gpunode("n1", labels={"zone": "z2"})],
    )
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    _move_to(cluster, "z1")
    await loop.run_pass()  # on n2; not Ready, so a move does not wait for it
    _move_to(cluster, "z2")
    cluster.calls.clear()
    await loop.run_pass()
    order = [args[0] for call, args in cluster.calls if call == "set_assignments"]
    assert order == ["n1", "n2"]
