"""Worked examples where the online mode's fragmentation-aware choice (``fragscore``) differs
from best fit and places more: a GPU fraction on one node, and a whole GPU beside gangs.

Fixed demands only (no batching, no GPU memory). The best-fit side runs the engine's own
best-fit (``bestfit.best_fit``) on the same running placement, which is what
``place_arrivals`` did before it used the fragmentation score.
"""

from __future__ import annotations

from stowplan.placement import Problem, check_plan, place_arrivals
from stowplan.placement.bestfit import best_fit, decreasing_order
from stowplan.placement.models import Assignment, ModelDemand, NodeResources
from stowplan.placement.online import _state_from_current
from stowplan.placement.packindex import PackIndex
from stowplan.testing.placement_problems import make_gpus, make_model


def _fixed(name: str, milli: int, replicas: int = 1, gpus: int = 1) -> ModelDemand:
    return make_model(
        name,
        replicas=replicas,
        weights_mib=0,
        per_item_mib=0,
        target_qps=0,
        gpu_milli=milli,
        gpus_per_replica=gpus,
    )


def _running(model: str, node: str, gpu: int, milli: int) -> Assignment:
    return Assignment(
        model=model,
        replica=0,
        node=node,
        gpu=gpu,
        batch_size=0,
        duty_cycle_ms=100.0,
        busy_ms=milli / 10.0,
        memory_mib=0.0,
    )


def _best_fit_online(problem: Problem) -> tuple[list[Assignment], int]:
    """(assignments, replicas left over) of plain best fit on ``problem``'s new replicas."""
    index = PackIndex.build(problem)
    state = _state_from_current(index, problem)
    todo = [(mi, r) for mi, m in enumerate(index.models) for r in range(m.replicas)]
    left = best_fit(state, decreasing_order(index, [t for t in todo if t not in state.where]))
    return state.assignments(), len(left)


def _gpu_of(assignments: tuple[Assignment, ...] | list[Assignment], model: str) -> list[int]:
    return sorted(a.gpu for a in assignments if a.model == model)


def test_fraction_goes_where_the_expected_600_milli_pods_still_fit() -> None:
    # One node, two GPUs: GPU 0 runs a 300-milli pod (700 free), GPU 1 a 100-milli pod (900
    # free). A 300-milli pod arrives; two 600-milli pods are expected next. Distribution
    # (by replicas): 300 x2, 100 x1, 600 x2, weights 2/5, 1/5, 2/5.
    # Fragmentation of a node = sum over kinds of weight x (idle milli the kind cannot use:
    # GPUs with less free than the kind needs, or everything when it fits no GPU).
    #   before [700, 900]: every kind fits on both GPUs -> 0.
    #   300 on GPU 0 -> [400, 900]: 600 cannot use the 400 -> 2/5 x 400 = 160; decrease -160,
    #     score int(100 / (1 + e^(160/150))) = int(25.6) = 25.
    #   300 on GPU 1 -> [700, 600]: every kind still fits both -> 0; score int(100/2) = 50.
    # So the engine takes GPU 1. Best fit takes the tighter GPU 0 (load 0.6 vs 0.4).
    gpus = make_gpus(2, per_node=2)
    a, b, c = _fixed("a", 300), _fixed("b", 100), _fixed("c", 300)
    d = _fixed("d", 600, replicas=2)
    running = (_running("a", "n0", 0, 300), _running("b", "n0", 1, 100))
    first = Problem(gpus=gpus, models=(a, b, c), current=running)
    out = place_arrivals(first, workload=(a, b, c, d))
    assert check_plan(first, out) == [] and out.moves == 0
    assert _gpu_of(out.assignments, "c") == [1]
    bf, _ = _best_fit_online(first)
    assert _gpu_of(bf, "c") == [0]
    # the two 600-milli pods (one per GPU): [700, 600] takes both (100 and 0 left); best
    # fit's [400, 900] takes one (on GPU 1) and has no GPU with 600 for the other
    second = Problem(gpus=gpus, models=(a, b, c, d), current=out.assignments)
    out2 = place_arrivals(second)
    assert check_plan(second, out2) == [] and out2.moves == 0
    assert _gpu_of(out2.assignments, "d") == [0, 1] and out2.unplaced == ()
    bf_second = second.model_copy(update={"current": tuple(bf)})
    bf2, bf_left = _best_fit_online(bf_second)
    assert _gpu_of(bf2, "d") == [1] and bf_left == 1


def test_whole_gpu_keeps_an_empty_pair_for_the_gang() -> None:
    # Two nodes of two GPUs. n1's GPU 1 runs a 300-milli pod. A one-GPU pod arrives, then a
    # two-GPU gang. Distribution (by replicas): 300, whole x1, gang x2, 1/3 each; the gang
    # carries 2,000 of 3,300 milli requested (>= 25 %), so whole GPUs use FGD's scale 1,000.
    #   n0 [1000, 1000]: before 0 (every kind fits). After [0, 1000]: the gang fits nowhere,
    #     1/3 x 1,000 = 333.3; decrease -333.3, score int(100 / (1 + e^(1/3))) = 41.
    #   n1 [1000, 700]: before: the whole pod fits but cannot use the 700 (1/3 x 700), the
    #     gang fits nowhere (1/3 x 1,700): 800. After [0, 700]: neither whole kind fits
    #     (1/3 x 700 each): 466.7; decrease +333.3, score int(100 / (1 + e^(-1/3))) = 58.
    # So the engine takes n1 GPU 0; best fit opens the first empty GPU, n0 GPU 0, and the
    # gang then finds no node with two empty GPUs.
    gpus = make_gpus(4, per_node=2)
    nodes = tuple(NodeResources(node=f"n{k}", cpu_milli=64000, memory_mib=1 << 20) for k in (0, 1))
    small, whole = _fixed("small", 300), _fixed("whole", 1000)
    gang = _fixed("gang", 1000, gpus=2)
    running = (_running("small", "n1", 1, 300),)
    first = Problem(gpus=gpus, models=(small, whole), current=running, nodes=nodes)
    out = place_arrivals(first, workload=(small, whole, gang))
    assert check_plan(first, out) == []
    assert [(x.node, x.gpu) for x in out.assignments if x.model == "whole"] == [("n1", 0)]
    bf, _ = _best_fit_online(first)
    assert [(x.node, x.gpu) for x in bf if x.model == "whole"] == [("n0", 0)]
    second = Problem(gpus=gpus, models=(small, whole, gang), current=out.assignments, nodes=nodes)
    out2 = place_arrivals(second)
    assert check_plan(second, out2) == [] and out2.unplaced == ()
    [g] = [x for x in out2.assignments if x.model == "gang"]
    assert (g.node, sorted((g.gpu, *g.extra_gpus))) == ("n0", [0, 1])
    _, bf_left = _best_fit_online(second.model_copy(update={"current": tuple(bf)}))
    assert bf_left == 1
