"""Parser robustness: malformed records are counted with line numbers, other lines skipped,
gzip and plain files, and the compact format round-trips."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from stowplan.memlab.alloc_trace import ALLOC, FREE, load_compact, save_compact
from stowplan.memlab.errors import TraceFileError
from stowplan.memlab.parser import load_trace, parse_lines

P = "I0000 00:00:1.0 1 log_memory.cc:34] __LOG_MEMORY__ "


def alloc(aid: int, size: int, step: int = 7, name: str = "cpu") -> str:
    return (
        P + "MemoryLogTensorAllocation { goo.gle/debugstr    step_id: "
        f'{step} kernel_name: "k{aid}" tensor {{ dtype: DT_FLOAT shape {{ }} '
        f"allocation_description {{ requested_bytes: {size} allocated_bytes: {size} "
        f'allocator_name: "{name}" allocation_id: {aid} ptr: 64 }} }} }}'
    )


def free(aid: int, name: str = "cpu") -> str:
    return (
        P + "MemoryLogTensorDeallocation { goo.gle/debugproto allocation_id: "
        f'{aid} allocator_name: "{name}" }}'
    )


LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "#### tftrace phase step 1 begin",
    alloc(1, 100),
    alloc(2, 50),
    "random noise line",
    free(1),
    P + "MemoryLogTensorAllocation { goo.gle/debugstr step_id: 7 kernel_name: ",  # truncated
    P + 'MemoryLogTensorDeallocation { allocator_name: "cpu" }',  # no id
    free(99),  # never allocated: counted, skipped
    alloc(3, 30, name="GPU_0_bfc"),
    free(2),
    free(3, name="GPU_0_bfc"),
]


def test_malformed_records_are_counted_with_line_numbers() -> None:
    t = parse_lines(LINES, source="x.log")
    s = t.stats
    assert s.malformed_records == 2
    assert [n for n, _ in s.malformed_examples] == [7, 8]
    assert s.alloc_records == 3 and s.dealloc_records == 4
    assert s.dealloc_matched == 3 and s.dealloc_unmatched == 1
    assert s.peak_live_bytes_by_allocator == {"cpu": 150, "GPU_0_bfc": 30}
    assert t.phases == (("step 1", 0),)


def test_replay_filters_one_allocator_name() -> None:
    t = parse_lines(LINES)
    assert t.main_allocator() == "cpu"
    ops, sizes = t.replay_ops()
    assert [sizes[o] if o >= 0 else -sizes[~o] for o in ops if o > -(1 << 60)] == [
        100,
        50,
        -100,
        -50,
    ]
    assert t.peak_live_bytes("GPU_0_bfc") == 30


def test_plain_and_gzip_files_parse_the_same(tmp_path: Path) -> None:
    plain = tmp_path / "a.log"
    plain.write_text("\n".join(LINES) + "\n")
    gz = tmp_path / "a.log.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write("\n".join(LINES) + "\n")
    a, b = load_trace(plain), load_trace(gz)
    assert a.stats == b.stats
    assert np.array_equal(a.kinds, b.kinds) and np.array_equal(a.sizes, b.sizes)


def test_compact_round_trip(tmp_path: Path) -> None:
    t = parse_lines(LINES, source="x.log")
    out = tmp_path / "x.stwtrace.npz"
    save_compact(t, out)
    back = load_trace(out)
    assert back.stats == t.stats and back.source == "x.log"
    assert back.allocator_names == t.allocator_names and back.phases == t.phases
    for field in ("kinds", "slots", "sizes", "allocated", "slot_allocator", "slot_step"):
        assert np.array_equal(getattr(back, field), getattr(t, field))
    assert set(back.kinds.tolist()) <= {ALLOC, FREE, 4}


def test_missing_and_corrupt_files_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match="no such file"):
        load_trace(tmp_path / "missing.log")
    bad = tmp_path / "bad.stwtrace.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TraceFileError, match=r"bad\.stwtrace\.npz"):
        load_compact(bad)
    broken = tmp_path / "broken.log.gz"
    broken.write_bytes(gzip.compress("\n".join(LINES * 50).encode())[:200])
    with pytest.raises(TraceFileError, match=r"broken\.log\.gz"):
        load_trace(broken)
