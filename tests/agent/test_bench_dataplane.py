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
from stowplan.agentbench import dataplane
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
