"""Conformance fixtures: ``stowplan up`` on the shipped example InferenceModels as a real process
(real ONNX Runtime, the example models on simulated devices) on a free port, once per session,
and the direct ONNX Runtime reference each client's answers are checked against.

The manifests are copied with their SLO raised to 5 s: these tests check the protocol, and
on a loaded 2-core CI machine mlp's 10 ms SLO makes the agent shed requests (503) that the
tests did not come to measure (latency under contention is the soak test's subject)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from stowplan.models import build_example

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
#: the shipped example InferenceModels (manifests/examples) with one FP32 ``input`` each
MODELS = ("mlp", "convnet", "mlp-wide")
#: the shipped example that takes and returns strings (BYTES): tests/conformance/test_bytes_http.py
STRING_MODELS = ("lexicon",)


@dataclass(frozen=True)
class Served:
    host: str
    port: int
    model_dir: Path  # the same example ONNX files, built here, for the direct reference

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def direct(self, model: str, x: np.ndarray) -> np.ndarray:
        sess = ort.InferenceSession(
            str(self.model_dir / f"{model}.onnx"), providers=["CPUExecutionProvider"]
        )
        (out,) = sess.run(None, {"input": x})
        return np.asarray(out)

    def direct_all(self, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of ``model`` on ``feeds``, by name, from ONNX Runtime directly."""
        sess = ort.InferenceSession(
            str(self.model_dir / f"{model}.onnx"), providers=["CPUExecutionProvider"]
        )
        outs = sess.run(None, feeds)
        return {o.name: np.asarray(v) for o, v in zip(sess.get_outputs(), outs, strict=True)}

    @staticmethod
    def example_input(shape: list[int], rows: int = 2, seed: int = 0) -> np.ndarray:
        """Seeded FP32 input for a model input of ``shape`` (-1 = the batch dimension)."""
        concrete = [rows if d == -1 else d for d in shape]
        return np.random.default_rng(seed).standard_normal(concrete).astype(np.float32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("conformance")
    manifests = work / "manifests"
    manifests.mkdir()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        # served with their own SLOs (mlp: 10 ms): a sequential client is never refused
        (manifests / path.name).write_text(path.read_text())
    port = _free_port()
    log = (work / "up.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stowplan",
            "up",
            str(manifests),
            "--port",
            str(port),
            "--no-nvml",
            "--cache-dir",
            str(work / "cache"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"stowplan up exited: {(work / 'up.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
                if r.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("stowplan up did not become ready within 120 s")
            time.sleep(0.3)
        model_dir = work / "reference"
        for m in MODELS + STRING_MODELS:
            build_example(m, model_dir)
        yield Served("127.0.0.1", port, model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
