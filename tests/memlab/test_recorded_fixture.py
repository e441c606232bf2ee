"""A log we recorded ourselves (tools/record_tf_memlog.py, TF 2.21 CPU with oneDNN, MobileNetV2
batch 8; a different process from the shared log of the same configuration): parsing, and a warm
start from the *other* run's profile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stowplan.memlab.alloc_trace import Trace
from stowplan.memlab.parser import load_trace
from stowplan.memlab.runner import check_targets, run_trace

FIXTURE = Path(__file__).parent / "fixtures" / "mobilenetv2_bs8_recorded.log.gz"


def test_fixture_parses_with_the_onednn_allocator_name() -> None:
    t = load_trace(FIXTURE)
    s = t.stats
    assert t.main_allocator() == "mklcpu"
    assert s.malformed_records == 0
    assert s.alloc_records == 2110 and s.dealloc_matched == 2110
    assert t.peak_live_bytes() == 96_901_656  # same model and batch as the shared log
    assert [p for p, _ in t.phases][-2:] == ["step 3", "teardown"]


def test_warm_profile_from_another_run_meets_the_targets(
    parsed: Callable[[str], Trace],
) -> None:
    other = parsed("mobilenetv2_infer_bs8.log.gz")
    run = run_trace(
        str(FIXTURE), ["bfc", "pytorch", "bestfit", "buddy", "stowplan-warm"], profile_from=other
    )
    c = check_targets(run, "stowplan-warm")
    assert c is not None
    assert c.within_5pct and c.excess_vs_best and c.calls_vs_pytorch and c.overhead_vs_pytorch
