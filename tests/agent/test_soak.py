"""The soak test of issue 12 item 4, shortened for CI (about a minute; the 10-minute one is
``stowplan bench soak --minutes 10``): the real agent (``stowplan up`` on the example
manifests, real ONNX Runtime, loopback only) under mixed load with bursts on every model while
a second process contends the CPUs, then a quiet spell, then one sequential client per model.

Afterwards every model answers its lone client with no refusal and no error, its median within
the model's SLO, and its metrics show no request refused while its queue was empty. (The p99 is
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
    assert {p.model for p in report.probes} == {"mlp", "convnet", "mlp-wide", "lexicon"}
    for p in report.probes:
        assert (p.refused, p.errors, p.ok) == (0, 0, p.sent), p
        assert p.pct(50) <= p.slo_ms, p.model
    for model, m in report.metrics.items():
        assert m.refused_queue_empty == 0, model
        assert m.batches > 0, model
