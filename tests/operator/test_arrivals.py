"""A new model is placed by an arrivals pass into what the last full pass wrote: no list, only
the GPUNodes that gain, nothing moved, the same result a full pass then confirms; anything
else (a poke, a model that does not fit the slice, a name created again) runs a full pass."""

from __future__ import annotations

from stowplan import placement
from stowplan.operator import fleet
from stowplan.operator.settings import OperatorSettings
from stowplan.operator.wakeups import Wakeups
from stowplan.testing.clock import FakeClock
from stowplan.testing.cluster import FakeCluster, gpunode, model
from stowplan.testing.placement_problems import make_gpus, make_model

SETTINGS = OperatorSettings()
LISTS = ("list_models", "list_nodes", "list_k8s_nodes", "list_model_services")


def _where(cluster: FakeCluster) -> dict[tuple[str, int], tuple[str, int]]:
    return {
        (a.model, a.replica): (name, a.gpu)
        for name, n in cluster.nodes.items()
        for a in n.spec.assignments
    }


async def _placed_fleet() -> tuple[FakeCluster, fleet.FleetLoop]:
    cluster = FakeCluster(
        [model(f"m{i}", replicas=2) for i in range(4)], [gpunode(f"n{i}", gpus=2) for i in range(4)]
    )
    loop = fleet.FleetLoop(SETTINGS, cluster, clock=FakeClock())
    first = await loop.run_pass()
    assert first is not None and first.kind == "full" and first.view is not None
    return cluster, loop


async def test_a_new_model_is_placed_without_a_list_and_a_full_pass_then_writes_nothing():
    cluster, loop = await _placed_fleet()
    before = _where(cluster)
    new = model("new", replicas=2)
    cluster.models["ns/new"] = new
    cluster.calls.clear()
    loop.arrived(new)
    result = await loop.run_pass()
    assert result is not None and result.kind == "arrivals" and result.replicas_placed == 2
    assert not any(cluster.count(call) for call in LISTS)
    after = _where(cluster)
    assert {k: v for k, v in after.items() if k[0] != "ns/new"} == before  # nothing moved
    assert {r for m, r in after if m == "ns/new"} == {0, 1}
    status = cluster.models["ns/new"].status
    assert status is not None and status.conditions[0].status == "True"
    assert cluster.count("set_assignments") == len(
        {n for k, (n, _) in after.items() if k[0] == "ns/new"}
    )
    assert cluster.count("create_model_service") == 1 and cluster.events[-1].reason == "Placed"
    loop.poke()
    full = await loop.run_pass()
    assert full is not None and full.kind == "full"
    assert (full.nodes_patched, full.models_patched) == (0, 0)  # the full pass agrees


async def test_a_poke_or_a_resync_runs_a_full_pass_even_with_arrivals_waiting():
    cluster, loop = await _placed_fleet()
    new = model("new", replicas=1)
    cluster.models["ns/new"] = new
    loop.arrived(new)
    loop.poke()  # e.g. an agent's report came in as well
    result = await loop.run_pass()
    assert result is not None and result.kind == "full" and result.replicas_placed == 9


async def test_a_model_that_does_not_fit_the_slice_goes_to_a_full_pass():
    cluster, loop = await _placed_fleet()
    huge = model("huge", replicas=50)  # more replicas than GPUs: some stay unplaced
    cluster.models["ns/huge"] = huge
    loop.arrived(huge)
    result = await loop.run_pass()
    assert result is not None and result.kind == "full" and result.replicas_unplaced > 0
    assert result.view is None  # with replicas unplaced, the next new model waits for a full pass


async def test_a_name_created_again_is_not_taken_for_the_model_the_view_knows():
    cluster, loop = await _placed_fleet()
    again = model("m0", replicas=2).model_copy(deep=True)
    again = again.model_copy(
        update={"metadata": again.metadata.model_copy(update={"uid": "other"})}
    )
    cluster.models["ns/m0"] = again
    loop.arrived(again)
    result = await loop.run_pass()
    assert result is not None and result.kind == "full"


async def test_the_operators_own_assignment_writes_wake_no_pass():
    wakeups = Wakeups()
    cluster = FakeCluster([model("a", replicas=1)], [gpunode("n1")])
    node = cluster.nodes["n1"]
    assert wakeups.changed("node", "ADDED", node.wire())
    loop = fleet.FleetLoop(
        SETTINGS, cluster, clock=FakeClock(), on_assignments=wakeups.expect_assignments
    )
    await loop.run_pass()
    echoed = cluster.nodes["n1"].wire()
    assert echoed["spec"]["assignments"]
    assert not wakeups.changed("node", "MODIFIED", echoed)  # our own write coming back
    echoed["spec"]["assignments"][0]["gpu"] = 0
    echoed["spec"]["assignments"][0]["batchSize"] = 999
    assert wakeups.changed("node", "MODIFIED", echoed)  # someone else's edit


def test_place_models_places_only_the_named_models_and_moves_nothing():
    gpus = make_gpus(3)
    old, new = make_model("old", replicas=3), make_model("new", replicas=2)
    running = placement.plan(placement.Problem(gpus=gpus, models=(old,)))
    kept = tuple(a for a in running.assignments if a.replica < 2)  # replica 2 runs elsewhere
    problem = placement.Problem(gpus=gpus, models=(new, old), current=kept)
    plan = placement.place_models(problem, {"new"})
    assert {a.replica_key for a in plan.assignments} == {
        ("old", 0), ("old", 1), ("new", 0), ("new", 1)
    }  # fmt: skip
    assert {a.replica_key: a.gpu_key for a in plan.assignments if a.model == "old"} == {
        a.replica_key: a.gpu_key for a in kept
    }
    assert not plan.unplaced


async def test_a_routine_full_pass_gives_way_to_a_new_model_before_writing_anything():
    cluster, loop = await _placed_fleet()
    new = model("new", replicas=1)

    def arrives(*_: object) -> None:  # the model is created while the resync pass lists
        if "ns/new" not in cluster.models:
            cluster.models["ns/new"] = new
            loop.arrived(new)

    cluster.before("list_model_slices", arrives)
    loop._full = "resync"
    result = await loop.run_pass()
    assert result is not None and result.kind == "arrivals" and result.replicas_placed == 1
    assert loop._full == "resync" and loop._wake.is_set()  # the full pass comes next
    full = await loop.run_pass()
    assert (
        full is not None
        and full.kind == "full"
        and (full.nodes_patched, full.models_patched) == (0, 0)
    )


async def test_after_a_change_new_models_wait_for_the_full_pass():
    cluster, loop = await _placed_fleet()
    new = model("new", replicas=1)
    cluster.models["ns/new"] = new
    loop.poke()  # e.g. a GPUNode was cordoned: the view may be wrong
    loop.arrived(new)
    result = await loop.run_pass()
    assert result is not None and result.kind == "full" and result.replicas_placed == 9
