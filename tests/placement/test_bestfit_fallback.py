"""When the compiled kernel cannot load (numba finds no writable cache directory on a read-only
root filesystem, or any import failure), best-fit still plans, on the numpy path; and
``warm_up`` loads the kernels before the first plan."""

from __future__ import annotations

import sys

import pytest

import stowplan.placement as placement_pkg
from stowplan.placement import (
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    Problem,
    bestfit,
    colgen_kernel,
    plan,
)


def _problem() -> Problem:
    models = tuple(
        ModelDemand(
            name=f"m{i}",
            replicas=1 + i % 3,
            slo_ms=30.0 + 10 * (i % 5),
            target_qps=20.0 * (1 + i % 7),
            latency=LatencyProfile(base_ms=1.0 + i % 4, per_item_ms=0.2),
            memory=MemoryProfile(weights_mib=500.0, per_item_mib=5.0),
            max_batch=64,
        )
        for i in range(40)
    )
    gpus = tuple(Gpu(node=f"n{i // 8}", index=i % 8, memory_mib=81920) for i in range(64))
    return Problem(gpus=gpus, models=models)


def test_plan_survives_a_kernel_that_cannot_load(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = _problem()
    reference = plan(problem, use_kernel=False)
    # what numba's "cannot cache function ...: no locator available" looks like to us: the
    # module import fails
    monkeypatch.setattr(bestfit, "_KERNEL_ERROR", None)
    monkeypatch.delattr(placement_pkg, "bestfit_kernel", raising=False)
    monkeypatch.setitem(sys.modules, "stowplan.placement.bestfit_kernel", None)
    fallback = plan(problem)
    assert fallback.assignments == reference.assignments
    assert fallback.gpus_used == reference.gpus_used
    if bestfit._kernel_ok():  # numba installed: the status names the failure
        assert "did not load" in bestfit.kernel_status()


def test_warm_up_loads_the_kernels_before_the_first_plan() -> None:
    # what the operator runs at startup: afterwards best-fit takes the compiled path (numba is
    # pinned) and the column-generation pricing kernels hold a compiled signature
    placement_pkg.warm_up(search=True)
    assert bestfit.kernel_status().startswith("compiled kernel")
    if colgen_kernel.COMPILED:
        assert getattr(colgen_kernel.price_kernel, "signatures", None)
        assert getattr(colgen_kernel.upper_kernel, "signatures", None)
