"""The parser's counts match ../shared/data/tf-memlogs/README.md exactly, for every shipped log."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stowplan.memlab.alloc_trace import Trace

# file: (alloc w/ buffer, w/o buffer, dealloc, matched, unmatched, output, other,
#        total requested, peak live, distinct sizes, distinct kernel names)
README = {
    "resnet50_infer_bs1.log.gz": (
        6087, 159, 7160, 6087, 1073, 5323, {}, 245_234_276, 110_577_384, 35, 487,
    ),
    "resnet50_infer_bs32.log.gz": (
        6086, 159, 7159, 6086, 1073, 5323, {}, 4_646_555_244, 353_352_520, 36, 487,
    ),
    "mobilenetv2_infer_bs8.log.gz": (
        2370, 0, 3319, 2370, 949, 3766, {}, 857_409_936, 96_901_656, 62, 427,
    ),
    "bert_base_infer_bs8.log.gz": (
        8290, 0, 9356, 8290, 1066, 4192, {}, 3_634_196_116, 465_452_520, 14, 519,
    ),
    "format_sample_session_matmul.log.gz": (
        20, 0, 20, 20, 0, 8, {"RawAllocation": 2, "RawDeallocation": 2, "Step": 2},
        49_220, 16_388, 2, 3,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(README))
def test_counts_match_readme(name: str, parsed: Callable[[str], Trace]) -> None:
    t = parsed(name)
    s = t.stats
    got = (
        s.alloc_records,
        s.alloc_records_without_buffer,
        s.dealloc_records,
        s.dealloc_matched,
        s.dealloc_unmatched,
        s.output_records,
        s.other_records,
        s.total_requested_bytes,
        s.peak_live_bytes_by_allocator["cpu"],
        s.distinct_sizes,
        s.distinct_kernel_names,
    )
    assert got == README[name]
    assert s.malformed_records == 0
    assert t.peak_live_bytes() == README[name][8]  # the replayed trace agrees with the stats


def test_phase_markers_and_step_hints(parsed: Callable[[str], Trace]) -> None:
    t = parsed("resnet50_infer_bs1.log.gz")
    names = [p for p, _ in t.phases]
    assert names[:4] == ["build_model", "rematerialise_weights", "make_input", "step 1"]
    assert "step 3" in names and "teardown" in names
    ops, _ = t.replay_ops()
    from stowplan.memlab.alloc_trace import STEP_OP

    assert ops.count(STEP_OP) == 5  # rematerialise, make_input, steps 1-3 (tf.function runs)


def test_raw_allocations_are_kept_but_not_replayed_by_default(
    parsed: Callable[[str], Trace],
) -> None:
    t = parsed("format_sample_session_matmul.log.gz")
    assert t.peak_live_bytes() == 16_388
    assert t.peak_live_bytes(include_raw=True) == 32_772  # as the README says
