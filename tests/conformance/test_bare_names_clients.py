"""Triton's clients (``tritonclient.http`` and ``tritonclient.grpc``) ask a cluster node's agent for
models by the bare name a model's ``status.url`` uses: a real agent process serving the
namespaced names ``team-a.mlp``, ``team-a.convnet`` and ``team-b.convnet`` (real ONNX Runtime,
HTTP and gRPC). ``mlp`` answers under either name, outputs equal to a direct ONNX Runtime run and
named as asked; ``convnet`` is refused with the client's own exception naming both full names.

The agent runs in its own process: stowplan's generated ``inference`` messages must not be
imported beside tritonclient's."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from stowplan.agent import listeners
    from stowplan.agent.config import AgentSettings, BatchingConfig, ModelConfig, Policy
    from stowplan.agent.server import create_app
    from stowplan.agent.serving import Agent

    models, port, grpc_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    agent = Agent(AgentSettings(cache_dir=models / "cache", intra_op_threads=1))
    agent.load(ModelConfig(name="team-a.mlp", uri=str(models / "mlp.onnx"), slo_ms=5000,
                           max_batch=16, batching=BatchingConfig(max_queue_delay_ms=1)))
    for name in ("team-a.convnet", "team-b.convnet"):
        agent.load(ModelConfig(name=name, uri=str(models / "convnet.onnx"), slo_ms=5000,
                               max_batch=8, batching=BatchingConfig(policy=Policy.NONE)))
    try:
        listeners.run(create_app(agent), agent, "127.0.0.1", port, grpc_port)
    finally:
        agent.close()
    """
)
BOTH = "'team-a.convnet' and 'team-b.convnet'"


@dataclass(frozen=True)
class Node:
    http_url: str
    grpc_url: str
    model_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    from stowplan.models import build_all

    work = tmp_path_factory.mktemp("barenames")
    build_all(work)
    port, grpc_port = _free_port(), _free_port()
    log = (work / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(work), str(port), str(grpc_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"agent exited {proc.returncode}: {(work / 'agent.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).is_success:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"agent not ready in 60 s: {(work / 'agent.log').read_text()}")
            time.sleep(0.2)
        yield Node(f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", work)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _direct(node: Node, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        str(node.model_dir / "mlp.onnx"), providers=["CPUExecutionProvider"]
    )
    (out,) = sess.run(None, {"input": x})
    return np.asarray(out)


@pytest.mark.parametrize("name", ["mlp", "team-a.mlp"])
def test_tritonclient_http_by_bare_and_full_name(node: Node, name: str) -> None:
    client = th.InferenceServerClient(node.http_url, connection_timeout=30, network_timeout=30)
    assert client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["name"] == name
    assert client.get_model_config(name)["name"] == name
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(name, [inp])
    assert result.get_response()["model_name"] == name
    np.testing.assert_allclose(result.as_numpy("logits"), _direct(node, x), rtol=1e-5, atol=1e-5)
    stats = client.get_inference_statistics(name)["model_stats"]
    assert [s["name"] for s in stats] == [name] and stats[0]["inference_count"] >= 2


@pytest.mark.parametrize("name", ["mlp", "team-a.mlp"])
def test_tritonclient_grpc_by_bare_and_full_name(node: Node, name: str) -> None:
    client = tg.InferenceServerClient(node.grpc_url)
    assert client.is_model_ready(name)
    assert client.get_model_metadata(name).name == name
    assert client.get_model_config(name).config.name == name
    x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
    inp = tg.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(name, [inp], client_timeout=30)
    assert result.get_response().model_name == name
    np.testing.assert_allclose(result.as_numpy("logits"), _direct(node, x), rtol=1e-5, atol=1e-5)
    stats = client.get_inference_statistics(name).model_stats
    assert [s.name for s in stats] == [name] and stats[0].inference_count >= 3


def test_a_shared_bare_name_is_refused_naming_both(node: Node) -> None:
    x = np.zeros((1, 3, 32, 32), np.float32)
    http = th.InferenceServerClient(node.http_url, connection_timeout=30, network_timeout=30)
    hin = th.InferInput("input", list(x.shape), "FP32")
    hin.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as exc:
        http.infer("convnet", [hin])
    assert BOTH in str(exc.value) and "NAMESPACE.NAME" in str(exc.value), exc.value
    with pytest.raises(InferenceServerException) as exc:
        http.get_model_metadata("convnet")
    assert BOTH in str(exc.value), exc.value
    grpc = tg.InferenceServerClient(node.grpc_url)
    gin = tg.InferInput("input", list(x.shape), "FP32")
    gin.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as exc:
        grpc.infer("convnet", [gin], client_timeout=30)
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT", exc.value
    assert BOTH in (exc.value.message() or ""), exc.value
    with pytest.raises(InferenceServerException) as exc:
        grpc.is_model_ready("convnet")
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT", exc.value
    assert grpc.is_model_ready("team-b.convnet") and http.is_model_ready("team-a.convnet")
