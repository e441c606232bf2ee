"""Worked examples of the SLO -> capacity arithmetic (DESIGN §3), the numbers in comments."""

from __future__ import annotations

import math

import pytest

from stowplan.placement import replica_capacity
from stowplan.testing.placement_problems import make_model


@pytest.mark.parametrize(
    ("qps", "d", "batch", "busy", "mem"),
    [
        # ResNet-50 TF A100 TF32 fit: base 4.1, per_item 0.5; 400 qps at d = 20 ms:
        # b = ceil(400 * 20 / 1000) = 8; t = 4.1 + 0.5 * 8 = 8.1 ms; mem = 500 + 20 * 8 = 660
        pytest.param(400, 20.0, 8, 8.1, 660.0, id="resnet 400qps d20"),
        # 100 qps at d = 40: b = ceil(4.0) = 4 (exact, no float overshoot); t = 4.1 + 2 = 6.1
        pytest.param(100, 40.0, 4, 6.1, 580.0, id="exact multiple"),
        # qps 0: still batches of one; t = 4.1 + 0.5 = 4.6; weights + one item = 520
        pytest.param(0, 10.0, 1, 4.6, 520.0, id="idle replica batch 1"),
    ],
)
def test_capacity_at_duty_cycle(qps: float, d: float, batch: int, busy: float, mem: float) -> None:
    m = make_model("m", target_qps=qps, base_ms=4.1, per_item_ms=0.5)
    cap = replica_capacity(m, d)
    assert cap is not None
    assert cap.batch_size == batch
    assert math.isclose(cap.busy_ms, busy)
    assert math.isclose(cap.memory_mib, mem)
    assert math.isclose(cap.gpu_share, busy / d)


def test_slo_limits_duty_cycle() -> None:
    # SLO 50: d = 40 -> b = 16 at 400 qps, t = 4.1 + 8 = 12.1, d + t = 52.1 > 50 -> infeasible
    # d = 30 -> b = 12, t = 10.1, d + t = 40.1 <= 50 -> feasible
    m = make_model("m", target_qps=400, base_ms=4.1, per_item_ms=0.5, slo_ms=50)
    assert replica_capacity(m, 40.0) is None
    assert replica_capacity(m, 30.0) is not None


def test_max_batch_and_overfull_cycle() -> None:
    # 10,000 qps at d = 20: b = 200 > max_batch 128 -> None
    m = make_model("m", target_qps=10_000, max_batch=128)
    assert replica_capacity(m, 20.0) is None
    # 1,000 qps, per_item 2 ms at d = 10: b = 10, t = 4 + 20 = 24 > 10 (cycle overfull) -> None
    heavy = make_model("h", target_qps=1000, per_item_ms=2.0, slo_ms=1000)
    assert replica_capacity(heavy, 10.0) is None


def test_fixed_gpu_fraction() -> None:
    # gpu_milli 250: a quarter of any cycle, weights only, no batching
    m = make_model("pod", gpu_milli=250, weights_mib=1000)
    cap = replica_capacity(m, 40.0)
    assert cap is not None
    assert (cap.batch_size, cap.busy_ms, cap.memory_mib) == (0, 10.0, 1000.0)
