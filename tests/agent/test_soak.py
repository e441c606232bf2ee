"""The soak test of issue 12 item 4, shortened for CI (about a minute; the 10-minute one is
``stowplan bench soak --minutes 10``): the real agent (``stowplan up`` on the example
manifests, real ONNX Runtime, loopback only): one sequential client per model, then mixed load
with bursts on every model while a second process contends the CPUs, a quiet spell, and the
sequential client again.

Before the load and afterwards every model answers its lone client with no refusal and no
error, afterwards its median within the model's SLO, and its metrics show no request refused
while its queue was empty: :func:`stowplan.agentbench.soak.criteria`'s rules. (The p99 is
printed, not asserted: on a machine shared with other jobs a descheduled thread alone can
exceed a 10 ms SLO.) Shedding during the load phase is allowed and must carry ``Retry-After``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stowplan.agentbench import soak

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="manifests/examples not present")
def test_after_a_contended_soak_every_model_answers_a_lone_client() -> None:
    report = soak.run(
        EXAMPLES,
        load_s=25.0,
        quiet_s=8.0,
        probe_s=4.0,
        scale=0.5,  # the short run shares a 2-core CI machine: a second process and half load
        contenders=1,
        burst_every_s=10.0,
    )
    print(soak.table(report))
    assert {r.model for r in report.load} == {"mlp", "convnet", "mlp-wide", "lexicon"}
    for r in report.load:  # shedding is allowed under the bursts; failing is not
        assert r.ok > 0 and r.refused_without_retry_after == 0 and r.errors == 0, r
    names = {"mlp", "convnet", "mlp-wide", "lexicon"}
    assert {p.model for p in report.probes} == names
    assert {p.model for p in report.before} == names
    for p in [*report.before, *report.probes]:
        assert (p.refused, p.errors, p.ok) == (0, 0, p.sent), p
    for p in report.probes:
        assert p.pct(50) <= p.slo_ms, p.model
    for model, m in report.metrics.items():
        assert m.refused_queue_empty == 0, model
        assert m.batches > 0, model
    # every criterion but the p99 one (printed, not asserted here: see the module docstring)
    judged = [c for c in soak.criteria(report) if "p99" not in c.rule]
    assert [c for c in judged if c.verdict != soak.PASS] == []
    assert [s.phase for s in report.snapshots] == [
        "ready", "warm-up", "before-probe", "load", "quiet", "after-probe"
    ]  # fmt: skip
    assert all(s.rss_mib > 0 and s.threads > 0 for s in report.snapshots)


# -- the criteria and the report, on constructed results (fast) ----------------------------
def _probe(model: str, p99_ms: float, refused: int = 0, slo_ms: float = 10.0) -> soak.ProbeResult:
    """100 answers: 98 at 2 ms, two at ``p99_ms`` (so the 99th percentile is ``p99_ms``)."""
    lat = [2.0] * 98 + [p99_ms] * 2
    return soak.ProbeResult(model, slo_ms, 100 + refused, 100, refused, 0, lat, 1.0)


def _metrics(queue_empty: float = 0.0) -> soak.ModelMetrics:
    return soak.ModelMetrics({"deadline": 5.0}, queue_empty, 1000.0, 0.0, 0.006)


def _report(
    before: list[soak.ProbeResult], after: list[soak.ProbeResult], queue_empty: float = 0.0
) -> soak.SoakReport:
    report = soak.SoakReport(600.0, 60.0, True, before=before, probes=after)
    report.load = [soak.LoadResult("mlp", 100, 0, 95, 5, 0, 0, 0)]
    report.metrics = {"mlp": _metrics(queue_empty)}
    return report


def _verdicts(report: soak.SoakReport, rule: str) -> list[str]:
    return [c.verdict for c in soak.criteria(report) if rule in c.rule]


def test_an_after_probe_p99_over_the_slo_fails_when_the_before_probe_met_it() -> None:
    report = _report([_probe("mlp", 5.0)], [_probe("mlp", 30.0)])
    assert _verdicts(report, "p99 within SLO") == [soak.FAIL]
    assert [c.model for c in soak.failed(report)] == ["mlp"]


def test_an_after_probe_miss_is_the_machines_when_the_before_probe_missed_too() -> None:
    report = _report([_probe("mlp", 25.0)], [_probe("mlp", 30.0)])
    assert _verdicts(report, "p99 within SLO") == [soak.MACHINE]
    assert soak.failed(report) == []
    assert "missed before the load as well" in soak.table(report)


def test_without_a_before_probe_an_after_probe_miss_fails() -> None:
    report = _report([], [_probe("mlp", 30.0)])
    assert _verdicts(report, "p99 within SLO") == [soak.FAIL]


def test_a_refused_lone_client_or_a_refusal_with_an_empty_queue_fails() -> None:
    refused = _report([_probe("mlp", 5.0)], [_probe("mlp", 5.0, refused=3)])
    assert _verdicts(refused, "after the soak is never refused") == [soak.FAIL]
    assert _verdicts(refused, "before the load is never refused") == [soak.PASS]
    empty = _report([_probe("mlp", 5.0)], [_probe("mlp", 5.0)], queue_empty=1.0)
    assert _verdicts(empty, "queue was empty") == [soak.FAIL]
    clean = _report([_probe("mlp", 5.0)], [_probe("mlp", 5.0)])
    assert soak.failed(clean) == []
    assert all(c.verdict == soak.PASS for c in soak.criteria(clean))


def test_the_table_prints_both_probes_and_their_difference() -> None:
    text = soak.table(_report([_probe("mlp", 5.0)], [_probe("mlp", 8.0)]))
    assert "Sequential client before the load" in text
    assert "| mlp | +0.00 | +3.00 | +3.00 | +0.0 pts | +0 |" in text
    assert "Result: pass" in text


def test_the_agents_process_is_read_from_proc() -> None:
    import os

    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc")
    rss_mib, threads, cpu_s = soak._proc_stats(os.getpid())
    assert rss_mib > 10 and threads >= 1 and cpu_s > 0
