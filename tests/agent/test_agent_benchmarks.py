"""Smoke runs of the agent benchmarks (``--quick``) and ``stowplan profile``: they finish, print
a Markdown table, and the simulated numbers have the shape the README claims."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from stowplan.agent.batching import AimdController, FixedPolicy
from stowplan.agentbench.data import data_dir
from stowplan.agentbench.simulate import SimModel, max_goodput_per_s, poisson_arrivals, simulate
from stowplan.cli import main

needs_data = pytest.mark.skipif(
    not (data_dir() / "gpu-inference-latency").is_dir(), reason="shared data not present"
)


def test_simulated_batching_beats_no_batching_and_aimd_tracks_static() -> None:
    base, per, slo = 4.0, 2.0, 100.0  # capacity: b=23 -> 2*(4+46)=100 -> 460 req/s
    cap = max_goodput_per_s(base, per, slo, 64)
    arr = poisson_arrivals(0.7 * cap, 10.0, seed=1)

    def run(make: object) -> float:
        m = SimModel("m", base, per, slo, arr, make)  # type: ignore[arg-type]
        return simulate([m])["m"].goodput

    none = run(lambda: FixedPolicy(1, 0.0))
    best_static = max(run(lambda b=b: FixedPolicy(b, 0.005)) for b in (4, 8, 12, 16, 20))
    aimd = run(lambda: AimdController(64, slo / 2, max_wait_s=0.005))
    assert aimd >= 0.95 * best_static
    assert aimd > 1.5 * none


def test_time_slicing_beats_contending_threads() -> None:
    def model(name: str, slo: float, rate: float, seed: int) -> SimModel:
        return SimModel(
            name,
            1.0,
            0.3,
            slo,
            poisson_arrivals(rate, 5.0, seed),
            lambda: AimdController(32, slo / 3, max_wait_s=0.001),
        )

    models = [model("tight", 15, 800, 1), model("loose", 60, 400, 2)]
    sliced = simulate(models, "sliced")
    threads = simulate(models, "threads", interference=0.1)
    assert sliced["tight"].attainment > threads["tight"].attainment


@needs_data
@pytest.mark.parametrize("bench", ["batching", "timeslice"])
def test_simulated_benchmarks_quick(bench: str) -> None:
    res = CliRunner().invoke(main, ["bench", bench, "--quick"])
    assert res.exit_code == 0, res.output
    assert "| --- " not in res.output and "|---" in res.output


@pytest.mark.slow
def test_http_benchmark_quick() -> None:
    res = CliRunner().invoke(main, ["bench", "http", "--quick"])
    assert res.exit_code == 0, res.output
    assert "| aimd | 100 |" in res.output and "overhead per request" in res.output


def test_profile_prints_a_profile_block(model_dir: Path) -> None:
    res = CliRunner().invoke(
        main,
        ["profile", str(model_dir / "mlp.onnx"), "--batch", "1", "--batch", "8", "--repeats", "3"],
    )
    assert res.exit_code == 0, res.output
    assert "latencyMs: {base:" in res.output and "maxBatch: 8" in res.output


@pytest.mark.slow
def test_real_timeslice_runs() -> None:
    from stowplan.agentbench import timeslice

    rows = timeslice.run_real(duration_s=1.0, scale=0.2)
    assert {r.mode for r in rows} == {"time-sliced", "threads"} and all(r.sent > 0 for r in rows)
