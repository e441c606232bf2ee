"""The agent's residency sequence replayed by the lab (``memsim --residency``)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from stowplan.agent.memory import ResidencyManager
from stowplan.commands.memsim import command
from stowplan.memlab.residency import ResidencyTraceError, residency_ops
from stowplan.memlab.simulate import replay_ops

MIB = 1 << 20


def test_the_managers_log_replays_as_a_trace_with_its_offloads_and_prefetches() -> None:
    ticks = iter(range(1000))
    pool = ResidencyManager(300 * MIB, clock=lambda: float(next(ticks)), record=True)
    for name in ("a", "b", "c"):
        pool.register(name, 120 * MIB, 0)  # c does not fit next to a and b
    for name in ("c", "a", "b", "c"):
        pool.acquire(name)
        pool.release(name)
    assert pool.events is not None
    stats = pool.stats()
    frees = sum(1 for kind, _, _ in pool.events if kind == "free")
    allocs = len(pool.events) - frees
    assert frees == stats.offloads + 2 * stats.relocations
    assert allocs == stats.loads + stats.prefetches + stats.relocations
    ops, sizes, peak = residency_ops(pool.events)
    assert peak <= 300 * MIB and peak == 240 * MIB
    best = replay_ops("bestfit", ops, sizes, peak, check=True, repeats=1)
    assert best.peak_reserved_bytes >= peak


def test_a_free_without_a_block_is_refused() -> None:
    with pytest.raises(ResidencyTraceError):
        residency_ops([("free", "x", 10)])


def test_memsim_residency_json() -> None:
    out = CliRunner().invoke(command, ["--residency", "--json", "--allocator", "bestfit,pytorch"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["offloads"] > 0 and data["prefetches"] > 0
    assert [r["allocator"] for r in data["results"]] == ["bestfit", "pytorch"]
    assert all(r["peak_reserved_bytes"] >= data["peak_live_bytes"] for r in data["results"])
