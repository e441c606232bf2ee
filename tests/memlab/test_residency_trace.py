"""The agent's residency sequence replayed by the lab (``memsim --residency``, ``.stwres.json``).

The agent's pool and the lab's replay are one implementation (``memlab.pool.ResidencyPool``);
these tests check that a recorded sequence replays to the very same blocks and offsets, that the
trace file round-trips, and that the lab's measurement picks the policy the agent runs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from stowplan.agent.memory import MemoryPoolExhausted, ResidencyManager
from stowplan.commands.memsim import command
from stowplan.memlab.errors import TraceFileError
from stowplan.memlab.pool import AGENT_POLICY, POLICIES, replay
from stowplan.memlab.residency import (
    ResidencyTraceError,
    load_residency,
    replay_policies,
    residency_ops,
)
from stowplan.memlab.simulate import replay_ops

MIB = 1 << 20


def _busy_workload(policy: str | None = None, seed: int = 7) -> ResidencyManager:
    """Ten models in a pool that holds about half of them, up to three busy at once (pinned
    blocks), explicit offloads and a re-registration: every path of the placement runs."""
    rng = random.Random(seed)
    ticks = iter(range(1 << 30))
    pool = ResidencyManager(
        1000 * MIB, clock=lambda: float(next(ticks)), record=True, policy=policy
    )
    sizes = {f"m{i}": rng.randrange(40, 260) * MIB + rng.randrange(0, 4096) for i in range(10)}
    for name, size in sizes.items():
        pool.register(name, size, rng.randrange(0, 8) * MIB)
    busy: list[str] = []
    for _ in range(600):
        r = rng.random()
        if busy and (r < 0.45 or len(busy) >= 3):
            pool.release(busy.pop(rng.randrange(len(busy))))
        elif r < 0.5:
            pool.offload(rng.choice(list(sizes)))
        elif r < 0.52:
            name = rng.choice([n for n in sizes if n not in busy])
            pool.register(name, rng.randrange(40, 260) * MIB, 0)
        else:
            name = rng.choice(list(sizes))
            try:
                pool.acquire(name)
            except MemoryPoolExhausted:
                continue
            busy.append(name)
    return pool


def test_the_lab_replays_the_agents_sequence_to_the_same_offsets_and_peak() -> None:
    agent = _busy_workload()
    trace = agent.trace()
    stats = agent.stats()
    assert stats.offloads > 50 and stats.prefetches > 50 and stats.relocations > 0
    lab = replay(trace.requests, trace.pool_bytes, trace.alignment_bytes, trace.policy)
    assert lab.events == agent.events  # every block, in order, at the same offset
    agent_offsets = {r.name: r.offset for r in agent.snapshot()}
    assert {b.name: b.offset for b in lab.blocks()} == agent_offsets
    assert (lab.offloads, lab.prefetches, lab.relocations, lab.loads) == (
        stats.offloads,
        stats.prefetches,
        stats.relocations,
        stats.loads,
    )
    assert lab.free_bytes() == stats.free_bytes
    assert residency_ops(lab.events)[2] == residency_ops(trace.events)[2]
    rows = {r.policy: r for r in replay_policies(trace)}
    assert rows[AGENT_POLICY].same_as_recorded is True
    assert all(rows[p].same_as_recorded is None for p in POLICIES if p != AGENT_POLICY)


def test_every_policy_replays_what_it_recorded() -> None:
    for policy in POLICIES:
        trace = _busy_workload(policy, seed=3).trace()
        assert trace.policy == policy
        row = next(r for r in replay_policies(trace) if r.policy == policy)
        assert row.same_as_recorded is True


def test_the_agent_runs_the_policy_the_lab_measures_best() -> None:
    from stowplan.commands.memsim import _demo_trace

    demo = _demo_trace()
    assert demo.policy == AGENT_POLICY
    ranked = replay_policies(demo)
    assert ranked[0].policy == AGENT_POLICY
    # relocating idle models saves prefetches: best fit alone brings back more bytes
    by = {r.policy: r for r in ranked}
    assert by["bestfit"].prefetched_bytes > by[AGENT_POLICY].prefetched_bytes
    assert by[AGENT_POLICY].relocations > 0 and by["bestfit"].relocations == 0


def test_the_trace_file_round_trips(tmp_path: Path) -> None:
    agent = _busy_workload()
    path = agent.write_trace(tmp_path / "pool.stwres.json")
    assert load_residency(path) == agent.trace()
    (tmp_path / "bad.stwres.json").write_text('{"format": "something else"}')
    with pytest.raises(TraceFileError, match=r"bad\.stwres\.json"):
        load_residency(tmp_path / "bad.stwres.json")


def test_the_managers_log_replays_through_the_growing_allocators() -> None:
    ticks = iter(range(1000))
    pool = ResidencyManager(300 * MIB, clock=lambda: float(next(ticks)), record=True)
    for name in ("a", "b", "c"):
        pool.register(name, 120 * MIB, 0)  # c does not fit next to a and b
    for name in ("c", "a", "b", "c"):
        pool.acquire(name)
        pool.release(name)
    assert pool.events is not None
    stats = pool.stats()
    frees = sum(1 for kind, *_ in pool.events if kind == "free")
    allocs = len(pool.events) - frees
    assert frees == stats.offloads + stats.relocations
    assert allocs == stats.loads + stats.prefetches + stats.relocations
    ops, sizes, peak = residency_ops(pool.events)
    assert peak <= 300 * MIB and peak == 240 * MIB
    best = replay_ops("bestfit", ops, sizes, peak, check=True, repeats=1)
    assert best.peak_reserved_bytes >= peak


def test_a_free_without_a_block_is_refused() -> None:
    with pytest.raises(ResidencyTraceError):
        residency_ops([("free", "x", 10, 0)])


def test_memsim_residency_json() -> None:
    out = CliRunner().invoke(command, ["--residency", "--json", "--allocator", "bestfit,pytorch"])
    assert out.exit_code == 0, out.output
    (data,) = json.loads(out.output)["residency"]
    best = data["policies"][0]
    assert best["policy"] == AGENT_POLICY and best["same_as_recorded"] is True
    assert best["offloads"] > 0 and best["prefetches"] > 0
    assert [r["allocator"] for r in data["results"]] == ["bestfit", "pytorch"]
    assert all(r["peak_reserved_bytes"] >= data["peak_live_bytes"] for r in data["results"])


def test_memsim_report_has_the_residency_section(tmp_path: Path) -> None:
    agent = _busy_workload()
    path = agent.write_trace(tmp_path / "pool.stwres.json")
    out = CliRunner().invoke(
        command, [str(path), "--allocator", "pytorch", "--report", str(tmp_path / "r")]
    )
    assert out.exit_code == 0, out.output
    text = (tmp_path / "r" / "README.md").read_text()
    section = text.split("## Residency traces")[1]
    assert "**pool.stwres.json** (residency)" in section
    assert f"| {AGENT_POLICY} (best) |" in section or f"| {AGENT_POLICY} |" in section
    row = next(line for line in section.splitlines() if line.startswith(f"| {AGENT_POLICY}"))
    assert row.rstrip().endswith("| yes |")  # the lab replays the agent's own offsets
    assert "| pytorch |" in section
