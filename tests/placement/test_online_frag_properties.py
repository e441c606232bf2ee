"""Property: the online mode keeps plans valid on random small mixes of SLO models, GPU
fractions, whole GPUs and gangs, with and without node CPU/memory limits, through arrivals
(``place_arrivals`` on a grown problem moves nothing) and ``defragment``."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowplan.placement import Problem, check_plan, defragment, place_arrivals
from stowplan.placement.models import NodeResources
from stowplan.testing.placement_problems import make_model, small_problems


@st.composite
def online_mixes(draw: st.DrawFn) -> Problem:
    """``small_problems`` plus, sometimes, node CPU/memory limits, CPU requests and gangs."""
    base = draw(small_problems(max_gpus=8, max_models=6))
    models = list(base.models)
    if draw(st.booleans()):  # fixed demands with node requests and 2-GPU gangs
        for j in range(draw(st.integers(1, 3))):
            gang = draw(st.booleans())
            models.append(
                make_model(
                    f"f{j}",
                    replicas=draw(st.integers(1, 3)),
                    weights_mib=draw(st.sampled_from([0, 4000])),
                    per_item_mib=0,
                    target_qps=0,
                    gpu_milli=1000 if gang else draw(st.sampled_from([100, 450, 700, 1000])),
                    gpus_per_replica=2 if gang else 1,
                    cpu_milli=draw(st.sampled_from([0, 2000, 6000])),
                    host_memory_mib=draw(st.sampled_from([0, 8192])),
                )
            )
    nodes: tuple[NodeResources, ...] = ()
    if draw(st.booleans()):
        names = sorted({g.node for g in base.gpus})
        nodes = tuple(
            NodeResources(
                node=n,
                cpu_milli=draw(st.sampled_from([4000, 8000, 64000])),
                memory_mib=draw(st.sampled_from([16384, 1 << 20])),
            )
            for n in names
        )
    return base.model_copy(update={"models": tuple(models), "nodes": nodes})


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(problem=online_mixes(), grow=st.lists(st.integers(0, 3), min_size=9, max_size=9))
def test_online_plans_stay_valid_through_arrivals_and_defrag(
    problem: Problem, grow: list[int]
) -> None:
    first = place_arrivals(problem)
    assert check_plan(problem, first) == []
    assert first.moves == 0
    # more replicas arrive; the running ones stay where they are
    models = tuple(
        m.model_copy(update={"replicas": m.replicas + grow[i % len(grow)]})
        for i, m in enumerate(problem.models)
    )
    grown = problem.model_copy(update={"models": models, "current": first.assignments})
    second = place_arrivals(grown)
    assert check_plan(grown, second) == []
    assert second.moves == 0
    kept = {a.replica_key: a.placement_key for a in first.assignments}
    assert all(
        kept[a.replica_key] == a.placement_key for a in second.assignments if a.replica_key in kept
    )
    compact = defragment(grown, 3)
    assert check_plan(grown, compact) == []
    assert compact.moves <= 3
