"""stowplan's trace-aware allocator: the planner, steady-state behaviour, robustness when a step
differs, and the issue's targets on the shipped logs (warm profile)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from stowplan.memlab.alloc_trace import STEP_OP, Trace
from stowplan.memlab.allocators.stowplan import StowplanAllocator
from stowplan.memlab.device import SimDevice
from stowplan.memlab.planner import plan_offsets, step_peak
from stowplan.memlab.runner import check_targets, run_trace
from stowplan.memlab.simulate import learn_profile, replay, replay_ops


def test_planner_never_overlaps_live_tensors_and_respects_the_lower_bound() -> None:
    rng = random.Random(5)
    n = 300
    firsts = [rng.randrange(1000) for _ in range(n)]
    lasts = [f + rng.randrange(1, 80) for f in firsts]
    sizes = [rng.choice([256, 4096, 65536, 1 << 20]) * rng.randint(1, 4) for _ in range(n)]
    offsets, arena = plan_offsets(sizes, firsts, lasts, 256)
    assert arena >= step_peak(sizes, firsts, lasts)
    for i in range(n):
        for j in range(i + 1, n):
            if firsts[i] <= lasts[j] and firsts[j] <= lasts[i]:
                assert offsets[i] + sizes[i] <= offsets[j] or offsets[j] + sizes[j] <= offsets[i]
    assert arena <= 1.25 * step_peak(sizes, firsts, lasts)


def identical_steps(n_steps: int) -> tuple[list[int], list[int]]:
    pattern = [300_000, 100_000, 5000, 200_000, 70_000, 16]  # one 2 MiB segment holds a step
    sizes: list[int] = [10 << 20]
    ops: list[int] = [0]  # a weight
    for _ in range(n_steps):
        ops.append(STEP_OP)
        slots = []
        for k, s in enumerate(pattern):
            sizes.append(s)
            slots.append(len(sizes) - 1)
            ops.append(len(sizes) - 1)
            if k >= 2:
                ops.append(~slots[k - 2])
        ops.extend(~s for s in slots[-2:])
    ops.append(~0)
    return ops, sizes


def test_cold_steady_state_makes_no_device_calls_and_repeats_addresses() -> None:
    ops, sizes = identical_steps(6)
    dev = SimDevice()
    alloc = StowplanAllocator(dev)
    addrs = [0] * len(sizes)
    calls_after_learning = None
    for op in ops:
        if op == STEP_OP:
            alloc.step()
            if alloc.plans_made and calls_after_learning is None:
                calls_after_learning = dev.malloc_calls + dev.free_calls
        elif op >= 0:
            addrs[op] = alloc.malloc(sizes[op])
        else:
            alloc.free(addrs[~op])
    assert calls_after_learning is not None
    assert dev.malloc_calls + dev.free_calls == calls_after_learning
    assert alloc.planned_misses == 0 and alloc.planned_hits > 0
    r = replay_ops("stowplan", ops, sizes, 1, repeats=1)
    assert r.step_repeat_rate is not None and r.step_repeat_rate >= 0.6


def perturbed(ops: list[int], sizes: list[int], seed: int) -> tuple[list[int], list[int]]:
    """Same program, but some sizes change and some frees come later (a step that differs)."""
    rng = random.Random(seed)
    sizes = [s if rng.random() > 0.1 else max(1, s + rng.randint(-4096, 4096)) for s in sizes]
    out = list(ops)
    for _ in range(len(out) // 20):
        i = rng.randrange(len(out) - 1)
        a, b = out[i], out[i + 1]
        if a < 0 and a != STEP_OP and b >= 0:  # move a free after the next allocation
            out[i], out[i + 1] = b, a
    return out, sizes


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_correct_when_steps_differ_from_the_profile(
    seed: int, parsed: Callable[[str], Trace]
) -> None:
    t = parsed("mobilenetv2_infer_bs8.log.gz")
    ops, sizes = t.replay_ops()
    profile = learn_profile(ops, sizes)
    ops2, sizes2 = perturbed(ops, sizes, seed)
    for name in ("stowplan", "stowplan-warm"):
        r = replay_ops(name, ops2, sizes2, 1, check=True, profile=profile, repeats=1)
        assert r.peak_reserved_bytes > 0


def test_profile_from_another_batch_size_stays_correct(parsed: Callable[[str], Trace]) -> None:
    small = parsed("resnet50_infer_bs1.log.gz")
    big = parsed("resnet50_infer_bs32.log.gz")
    p_ops, p_sizes = small.replay_ops()
    profile = learn_profile(p_ops, p_sizes)
    r = replay(big, "stowplan-warm", profile=profile, check=True, repeats=1)
    assert r.peak_reserved_bytes >= big.peak_live_bytes()


@pytest.mark.parametrize("name", ["resnet50_infer_bs1.log.gz", "mobilenetv2_infer_bs8.log.gz"])
def test_warm_stowplan_meets_the_space_and_call_targets(
    name: str, logs_dir: object, parsed: Callable[[str], Trace]
) -> None:
    run = run_trace(
        str(parsed(name).source),
        ["bfc", "pytorch", "bestfit", "buddy", "stowplan-warm"],
    )
    c = check_targets(run, "stowplan-warm")
    assert c is not None
    assert c.within_5pct and c.excess_vs_best and c.calls_vs_pytorch and c.overhead_vs_pytorch


def test_align_repeated_steps_keeps_the_plan_valid_and_repeats_offsets() -> None:
    from stowplan.memlab.planner import _overlaps, align_repeated_steps

    rng = random.Random(11)
    pattern = [rng.choice([256, 4096, 65536, 1 << 20]) for _ in range(40)]
    durations = [rng.randint(1, 6) for _ in pattern]  # identical steps
    sizes: list[int] = []
    firsts: list[int] = []
    lasts: list[int] = []
    steps: list[list[int]] = []
    t = 0
    for _ in range(3):
        idx = []
        for s, dur in zip(pattern, durations, strict=True):
            sizes.append(s)
            firsts.append(t)
            lasts.append(t + dur)
            idx.append(len(sizes) - 1)
            t += 1
        t += 10  # steps do not overlap in time
        steps.append(idx)
    offsets, arena = plan_offsets(sizes, firsts, lasts, 256)
    align_repeated_steps(offsets, sizes, firsts, lasts, steps, 256)
    nb = _overlaps(firsts, lasts)
    for i, js in enumerate(nb):
        for j in js:
            assert offsets[i] + sizes[i] <= offsets[j] or offsets[j] + sizes[j] <= offsets[i]
    assert max(o + s for o, s in zip(offsets, sizes, strict=True)) <= arena
    assert [offsets[i] for i in steps[0]] == [offsets[i] for i in steps[1]]
    assert [offsets[i] for i in steps[1]] == [offsets[i] for i in steps[2]]
