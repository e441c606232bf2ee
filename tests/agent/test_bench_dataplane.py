"""``stowplan bench dataplane``: every path (the real agent over HTTP/JSON, HTTP/binary and gRPC,
and KServe's real ModelServer over REST) answers exactly what a direct ONNX Runtime call
answers; the command prints one row per path and concurrency without errors and writes the
plot; and a path that answers wrongly stops the run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stowplan.agent.runtime import OnnxModel
from stowplan.agentbench import dataplane, stages
from stowplan.cli import main
from stowplan.models import build_example


@pytest.mark.slow
def test_every_path_answers_as_direct_onnx_runtime(tmp_path: Path) -> None:
    model_path = build_example("mlp", tmp_path / "models")
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    want = OnnxModel(model_path, intra_op_threads=1).run({"input": x})["logits"]
    got: dict[str, np.ndarray] = {}
    with dataplane.serve_agent(tmp_path / "agent", model_path, x) as target:
        assert target.grpc_port  # the launcher asked the agent for a gRPC port
        for name in ("http-json", "http-binary", "grpc"):
            got[name] = asyncio.run(dataplane.answer(dataplane.PATHS[name], target))
    with dataplane.serve_kserve(tmp_path / "kserve", model_path, x) as target:
        got["kserve-rest"] = asyncio.run(dataplane.answer(dataplane.PATHS["kserve-rest"], target))
    for name, y in got.items():
        assert y.shape == want.shape, name
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_dataplane_benchmark_rows_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "dataplane.png"
    args = ["bench", "dataplane", "--concurrency", "1", "--concurrency", "2", "--duration", "0.5"]
    res = CliRunner().invoke(main, [*args, "--plot", str(png)])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line.startswith("| ") and "---" not in line]
    paths = [(r.split("|")[1].strip(), r.split("|")[2].strip()) for r in rows[1:]]
    every = ("direct", "http-json", "http-binary", "grpc", "kserve-rest")
    assert paths == [(p, c) for p in every for c in ("1", "2")]
    assert all(r.rstrip(" |").endswith("| 0") for r in rows[1:])  # no errors on any path
    assert all(float(r.split("|")[3]) > 0 for r in rows[1:])  # every row served requests
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_path_that_answers_wrongly_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Wrong(dataplane.PathFactory):
        async def open(self, target: dataplane.Target):  # type: ignore[no-untyped-def]
            async def send() -> np.ndarray:
                return np.zeros((1, 10), np.float32)

            return send, lambda: None

    monkeypatch.setitem(dataplane.PATHS, "wrong", Wrong())
    with pytest.raises(RuntimeError, match="answers differently"):
        dataplane.run("mlp", (1,), 0.2, ("wrong",))


def test_unknown_path_is_named() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        dataplane.run("mlp", (1,), 0.2, ("nope",))


# --- open loop -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "duration_s", "seed"), [(50, 2.0, 0), (400, 1.5, 7), (1000, 3, 3)]
)
def test_poisson_arrivals_count_is_rate_times_duration(
    rate: float, duration_s: float, seed: int
) -> None:
    offsets = dataplane.poisson_arrivals(rate, duration_s, seed)
    mean = rate * duration_s
    assert abs(len(offsets) - mean) <= 4 * np.sqrt(mean)  # Poisson: sd = sqrt(mean)
    assert np.all(np.diff(offsets) > 0)
    assert offsets[0] >= 0 and offsets[-1] < duration_s
    np.testing.assert_array_equal(offsets, dataplane.poisson_arrivals(rate, duration_s, seed))
    gaps = np.diff(offsets)
    assert abs(gaps.mean() * rate - 1) < 0.25  # exponential gaps of mean 1/rate


class _Sleepy(dataplane.PathFactory):
    """Answers after ``delay_s`` (or raises ``error``): a server the test controls."""

    def __init__(self, delay_s: float, error: str | None = None) -> None:
        self.delay_s, self.error = delay_s, error

    async def open(self, target: dataplane.Target):  # type: ignore[no-untyped-def]
        async def send() -> np.ndarray:
            await asyncio.sleep(self.delay_s)
            if self.error:
                raise RuntimeError(self.error)
            return np.zeros((1, 10), np.float32)

        return send, lambda: None


_TARGET = dataplane.Target("127.0.0.1", 1, "bench", np.zeros((1, 64), np.float32))


def test_open_loop_caps_requests_in_flight_and_counts_arrivals_not_sent() -> None:
    rate, duration_s = 200.0, 0.6
    row = asyncio.run(
        dataplane.run_open_loop(
            "slow", _Sleepy(0.25), _TARGET, rate, duration_s, 10.0, seed=1, max_in_flight=3
        )
    )
    want = len(dataplane.poisson_arrivals(rate, duration_s, 1))
    assert row.arrivals == want
    assert abs(row.arrivals - rate * duration_s) <= 4 * np.sqrt(rate * duration_s)
    assert row.unsent > row.arrivals // 2  # a 250 ms server with 3 slots takes ~12 per 0.6 s
    assert 0 < row.sent <= 3 * (duration_s / 0.25 + 1)
    assert row.ok == row.sent and row.errors == row.shed == 0
    assert row.within_slo == 0  # every answer took 250 ms against a 10 ms SLO
    assert row.goodput == 0 <= row.throughput


def test_open_loop_counts_503s_apart_from_errors_and_latency_from_schedule() -> None:
    shed = asyncio.run(
        dataplane.run_open_loop("shed", _Sleepy(0, "HTTP 503: queue full"), _TARGET, 100, 0.3, 10)
    )
    assert shed.shed == shed.sent > 0 and shed.errors == shed.ok == 0
    assert np.isnan(shed.p50_ms)  # no answers: no latency, shown as "-" in the table
    broken = asyncio.run(
        dataplane.run_open_loop("bad", _Sleepy(0, "HTTP 500: boom"), _TARGET, 100, 0.3, 10)
    )
    assert broken.errors == broken.sent > 0 and broken.shed == 0
    fast = asyncio.run(dataplane.run_open_loop("ok", _Sleepy(0.02), _TARGET, 100, 0.4, 10))
    assert fast.ok == fast.sent and fast.within_slo == 0 and fast.p50_ms >= 20


def _orow(path: str, batching: str, rate: float, within: int, ok: int) -> dataplane.OpenRow:
    return dataplane.OpenRow(path, batching, rate, ok, 0, ok, within, 0, 0, 1.0, 1.0, 1, 2)


def test_verdict_names_factor_saturation_and_losses() -> None:
    rows = [
        _orow("grpc", "aimd", 100, 100, 100),
        _orow("http-json", "aimd", 100, 80, 100),
        _orow("grpc", "aimd", 400, 300, 400),
        _orow("kserve-rest", "-", 100, 95, 100),
        _orow("kserve-rest", "-", 400, 100, 400),
    ]
    lines = dataplane.verdict(rows, 10)
    (low,) = [line for line in lines if "offered 100/s" in line]
    assert "not saturated" in low and "1.05x, meets the 1x goal" in low
    (high,) = [line for line in lines if "offered 400/s" in line]
    assert "saturated:" in high and "3.00x, meets the 1x goal" in high
    (peak,) = [line for line in lines if "at saturation" in line]
    assert "peak 300/s (grpc at 400/s) vs KServe's peak 100/s (at 400/s) = 3.00x" in peak
    assert "meets the 2x goal" in peak and "at least this" not in peak  # 300 of 400: saturated
    assert lines[-1] == "Where we lose: http-json/aimd at 100/s (80 vs 95)"


def test_the_2x_goal_is_judged_on_peaks_not_at_a_rate_too_low_to_show_it() -> None:
    """At 600/s KServe answers 476 within the SLO (saturated: 83 %); no server can show 2x
    that at an offered 600/s. The goal is judged on each server's peak: stowplan's 1,152/s at
    1,200/s against KServe's 476/s, where KServe's peak was (a run of 2026-12-03)."""
    rows = [
        _orow("http-binary", "aimd", 600, 576, 576),
        _orow("http-binary", "aimd", 1200, 1152, 1153),
        _orow("kserve-rest", "-", 600, 476, 576),
        _orow("kserve-rest", "-", 1200, 2, 749),
    ]
    lines = dataplane.verdict(rows, 10)
    (at_600,) = [line for line in lines if "offered 600/s" in line]
    assert "1.21x, meets the 1x goal" in at_600 and "2x" not in at_600
    (peak,) = [line for line in lines if "at saturation" in line]
    assert "peak 1152/s (http-binary at 1200/s, not saturated at the highest rate" in peak
    assert "KServe's peak 476/s (at 600/s) = 2.42x, meets the 2x goal" in peak
    rows[1] = _orow("http-binary", "aimd", 1200, 900, 1153)
    (peak,) = [line for line in dataplane.verdict(rows, 10) if "at saturation" in line]
    assert "= 1.89x, MISSES the 2x goal" in peak


@pytest.mark.slow
def test_open_loop_benchmark_rows_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "open.png"
    args = ["bench", "dataplane", "--open-loop", "--rates", "50,150", "--duration", "0.5"]
    res = CliRunner().invoke(main, [*args, "--plot", str(png)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and "---" not in line]
    header, body = [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]
    assert header[:3] == ["path", "batching", "offered req/s"]
    keys = [(r[0], r[1], r[2]) for r in body]
    agent = [
        (p, b, rate)
        for b in ("aimd", "none")
        for p in ("http-json", "http-binary", "grpc")
        for rate in ("50", "150")
    ]
    assert keys == [*agent, ("kserve-rest", "-", "50"), ("kserve-rest", "-", "150")]
    for r in body:
        nums = [float(v) for v in r[3:] if v != "-"]
        assert all(v >= 0 and not np.isnan(v) for v in nums), r
        sent, answered, good = int(r[3]), float(r[5]), float(r[6])
        assert sent > 0 and answered > 0, r
        assert good <= answered, r
    assert any(line.startswith("- offered 150/s: KServe") for line in lines)
    assert any(line.startswith("Where we lose:") for line in lines)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_echo_paths_answer_the_direct_output(tmp_path: Path) -> None:
    x = np.random.default_rng(4).standard_normal((1, 64)).astype(np.float32)
    want = np.arange(10, dtype=np.float32).reshape(1, 10)
    with dataplane.serve_echo(tmp_path, want, x) as target:
        for name in ("echo-http", "echo-grpc"):
            got = asyncio.run(dataplane.answer(dataplane.PATHS[name], target))
            np.testing.assert_array_equal(got, want, err_msg=name)
    assert not any(dataplane.PATHS[p].default for p in ("echo-http", "echo-grpc"))


@pytest.mark.slow
def test_stages_time_every_stage_of_both_front_ends() -> None:
    rows = dataplane.run_stages("mlp", duration_s=0.5)
    got = {(r.front, r.stage) for r in rows}
    want = {("http", s) for s, _, _ in stages.HTTP_STAGES} | {
        ("grpc", s) for s, _, _ in stages.GRPC_STAGES
    }
    assert want | {("http", "total"), ("grpc", "total")} == got
    assert all(r.requests > 10 and r.p50_us > 0 for r in rows), rows
    total = {r.front: r.p50_us for r in rows if r.stage == "total"}
    assert all(0 < v < 1e6 for v in total.values())


@pytest.mark.parametrize(("count", "kept"), [(150, 75), (205, 103), (1000, 800)])
def test_the_stage_summary_keeps_at_least_half_of_a_short_run(count: int, kept: int) -> None:
    # the first 200 requests are warm-up, but a run of 205 must not be judged on its last 5
    stages._spans.clear()
    stages._spans["http run"] = [float(i + 1) for i in range(count)]
    try:
        assert stages.summary()["http run"]["n"] == kept
    finally:
        stages._spans.clear()
