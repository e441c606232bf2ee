"""ResidencyManager: pool carving, LRU offload of idle models, prefetch, refcounts, errors."""

from __future__ import annotations

import random
import threading
from itertools import pairwise

import pytest

from stowplan.agent.errors import AgentError
from stowplan.agent.memory import (
    MemoryPoolExhausted,
    ModelBusyError,
    ResidencyError,
    ResidencyManager,
    UnknownModelError,
)
from stowplan.testing.clock import TickingClock

MIB = 1 << 20


def make(pool_mib: int = 100) -> tuple[ResidencyManager, TickingClock]:
    clock = TickingClock(start=101.0)
    return ResidencyManager(pool_mib * MIB, clock=clock), clock


def states(rm: ResidencyManager) -> dict[str, str]:
    return {r.name: r.state for r in rm.snapshot()}


def test_register_places_model_when_it_fits() -> None:
    rm, _ = make()
    rm.register("a", 30 * MIB, 10 * MIB)
    rm.register("b", 50 * MIB, 0)
    assert states(rm) == {"a": "resident", "b": "resident"}
    s = rm.stats()
    assert s.reserved_bytes == 100 * MIB
    assert s.used_bytes == 90 * MIB
    assert s.free_bytes == 10 * MIB
    assert s.largest_free_block_bytes == 10 * MIB
    assert s.loads == 2 and s.offloads == 0 and s.prefetches == 0


def test_register_does_not_evict_and_rejects_oversized_model() -> None:
    rm, _ = make()
    rm.register("a", 80 * MIB, 0)
    rm.register("b", 40 * MIB, 0)  # does not fit now: stays offloaded, nothing evicted
    assert states(rm) == {"a": "resident", "b": "offloaded"}
    with pytest.raises(MemoryPoolExhausted) as exc:
        rm.register("huge", 90 * MIB, 20 * MIB)
    assert isinstance(exc.value, ResidencyError) and isinstance(exc.value, AgentError)


def test_acquire_offloads_least_recently_used_idle_model_and_prefetches_back() -> None:
    rm, _ = make()
    for name in ("a", "b", "c"):
        rm.register(name, 30 * MIB, 0)
    for name in ("b", "a", "c"):  # LRU order after this: b, a, c
        rm.acquire(name)
        rm.release(name)
    rm.register("d", 30 * MIB, 0)
    assert states(rm)["d"] == "offloaded"
    res = rm.acquire("d")
    assert res.prefetched and res.offloaded == ("b",)
    assert states(rm) == {"a": "resident", "b": "offloaded", "c": "resident", "d": "resident"}
    rm.release("d")
    back = rm.acquire("b")  # b comes back, a (now LRU) goes
    assert back.prefetched and back.offloaded == ("a",)
    s = rm.stats()
    assert s.offloads == 2 and s.prefetches == 1 and s.loads == 4


def test_busy_models_are_never_offloaded_and_exhaustion_changes_nothing() -> None:
    rm, _ = make()
    rm.register("a", 60 * MIB, 0)
    rm.register("b", 30 * MIB, 0)
    rm.register("c", 50 * MIB, 0)
    rm.acquire("a")
    before = rm.snapshot()
    with pytest.raises(MemoryPoolExhausted):
        rm.acquire("c")  # a is busy: even offloading b leaves 40 MiB
    assert rm.snapshot() == before
    rm.release("a")
    res = rm.acquire("c")
    assert set(res.offloaded) <= {"a", "b"} and rm.is_resident("c")


def test_refcount_allows_concurrent_acquire_and_blocks_unregister() -> None:
    rm, _ = make()
    rm.register("a", 10 * MIB, 5 * MIB)
    r1 = rm.acquire("a")
    r2 = rm.acquire("a")
    assert r1.offset == r2.offset and not r2.prefetched
    assert rm.snapshot()[0].refcount == 2
    with pytest.raises(ModelBusyError):
        rm.unregister("a")
    with pytest.raises(ModelBusyError):
        rm.register("a", 1, 1)
    rm.release("a")
    rm.release("a")
    with pytest.raises(ResidencyError):
        rm.release("a")
    rm.unregister("a")
    assert rm.snapshot() == [] and rm.stats().free_bytes == 100 * MIB


def test_unknown_model_errors() -> None:
    rm, _ = make()
    for call in (rm.acquire, rm.release, rm.unregister):
        with pytest.raises(UnknownModelError):
            call("nope")


def test_snapshot_fields_and_last_used_from_injected_clock() -> None:
    rm, clock = make()
    rm.register("a", 10 * MIB, 2 * MIB)
    rm.register("b", 200, 0)
    row = next(r for r in rm.snapshot() if r.name == "a")
    assert row.last_used is None and row.offset == 0 and row.weights_bytes == 10 * MIB
    rm.acquire("a")
    rm.release("a")
    row = next(r for r in rm.snapshot() if r.name == "a")
    assert row.last_used == clock.last
    b = next(r for r in rm.snapshot() if r.name == "b")
    assert b.offset is not None and b.offset % 256 == 0  # aligned carve


def fragmented(relocate: bool) -> ResidencyManager:
    """a, b, c, d of 25 MiB each; a and c gone: 50 MiB free in two 25 MiB holes."""
    rm = ResidencyManager(100 * MIB, clock=TickingClock(start=101.0), relocate=relocate)
    for name in ("a", "b", "c", "d"):
        rm.register(name, 25 * MIB, 0)
    rm.unregister("a")
    rm.unregister("c")
    rm.register("e", 50 * MIB, 0)
    assert not rm.is_resident("e")
    return rm


def test_fragmented_pool_relocates_an_idle_model_instead_of_offloading() -> None:
    rm = fragmented(relocate=True)
    res = rm.acquire("e")
    assert res.offloaded == () and res.relocated == ("b",)
    assert states(rm) == {"b": "resident", "d": "resident", "e": "resident"}
    s = rm.stats()
    assert s.relocations == 1 and s.offloads == 0 and s.free_bytes == 0


def test_without_relocation_the_lru_idle_model_is_offloaded_to_merge_holes() -> None:
    rm = fragmented(relocate=False)
    res = rm.acquire("e")
    assert res.offloaded == ("b",) and res.relocated == ()
    assert rm.stats().largest_free_block_bytes == 25 * MIB  # what is left of the merged hole


def test_busy_models_are_never_relocated() -> None:
    rm = fragmented(relocate=True)
    rm.acquire("b")  # pinned at [25, 50) MiB: the only window is [50, 100), where d sits
    res = rm.acquire("e")
    assert res.relocated == ("d",) and res.offloaded == ()  # d moves into the [0, 25) hole
    rm.acquire("d")
    rm.register("f", 10 * MIB, 0)  # everything busy, the pool is full: f cannot come in
    with pytest.raises(MemoryPoolExhausted):
        rm.acquire("f")
    assert next(r for r in rm.snapshot() if r.name == "b").offset == 25 * MIB


def test_offload_explicitly() -> None:
    rm, _ = make()
    rm.register("a", 10 * MIB, 0)
    rm.acquire("a")
    assert rm.offload("a") is False
    rm.release("a")
    assert rm.offload("a") is True and not rm.is_resident("a")
    assert rm.offload("a") is False


@pytest.mark.parametrize("relocate", [True, False])
def test_random_operations_keep_the_books_consistent(relocate: bool) -> None:
    rng = random.Random(7)
    rm = ResidencyManager(256 * MIB, clock=TickingClock(start=101.0), relocate=relocate)
    sizes = {f"m{i}": rng.randint(1, 90) * MIB for i in range(12)}
    for name, size in sizes.items():
        rm.register(name, size, rng.randint(0, 8) * MIB)
    held: dict[str, int] = {}
    for _ in range(2000):
        name = rng.choice(list(sizes))
        if held.get(name) and rng.random() < 0.6:
            rm.release(name)
            held[name] -= 1
        else:
            pinned = {r.name: r.offset for r in rm.snapshot() if held.get(r.name)}
            try:
                rm.acquire(name)
                held[name] = held.get(name, 0) + 1
            except MemoryPoolExhausted:
                pass
            after = {r.name: r.offset for r in rm.snapshot()}
            assert all(after[n] == off for n, off in pinned.items())  # busy models never move
        rows = [r for r in rm.snapshot() if r.state == "resident"]
        spans = sorted(
            (r.offset or 0, (r.offset or 0) + r.weights_bytes + r.workspace_bytes) for r in rows
        )
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start  # resident blocks never overlap
        assert all(end <= 256 * MIB for _, end in spans)
        for r in rm.snapshot():
            if held.get(r.name):
                assert r.state == "resident"  # busy models stay put
        s = rm.stats()
        assert s.used_bytes + s.free_bytes == s.reserved_bytes
        used = sum(r.weights_bytes + r.workspace_bytes for r in rows)
        assert s.used_bytes >= used  # carves are aligned up, never smaller


def test_thread_safety_of_acquire_release() -> None:
    rm, _ = make(64)
    for i in range(4):
        rm.register(f"m{i}", 20 * MIB, 0)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                name = f"m{rng.randrange(4)}"
                try:
                    rm.acquire(name)
                except MemoryPoolExhausted:
                    continue
                rm.release(name)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r.refcount == 0 for r in rm.snapshot())
