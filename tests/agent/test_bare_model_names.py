"""A cluster node's agent serves models as ``namespace.name``; a model's ``status.url`` asks for
the bare ``name``. The bare name resolves on every model route, over HTTP and gRPC, when one
served model has it; when two namespaces' models share it, the answer is a protocol-shaped 400
(gRPC INVALID_ARGUMENT) naming both full names. The full name keeps working, and answers carry
the name as asked. Real ONNX Runtime sessions, a real gRPC server and channel."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from stowplan.agent.config import AgentSettings, BatchingConfig, ModelConfig, Policy
from stowplan.agent.errors import AmbiguousModelName, ModelNotFound
from stowplan.agent.registry import bare_name
from stowplan.agent.server import create_app
from stowplan.agent.serving import Agent
from stowplan.testing.agent import MLP_INPUT_WIDTH, mlp_request

AMBIGUOUS = ("team-a.convnet", "team-b.convnet")


@pytest.fixture
def node_agent(model_dir: Path, tmp_path: Path) -> Iterator[Agent]:
    """Served names as a cluster node's agent has them: team-a's mlp, and a convnet in each of
    two namespaces."""
    a = Agent(AgentSettings(cache_dir=tmp_path / "cache", intra_op_threads=1))
    a.load(
        ModelConfig(
            name="team-a.mlp",
            uri=str(model_dir / "mlp.onnx"),
            slo_ms=2000,
            max_batch=16,
            batching=BatchingConfig(max_queue_delay_ms=1),
        )
    )
    for name in AMBIGUOUS:
        a.load(
            ModelConfig(
                name=name,
                uri=str(model_dir / "convnet.onnx"),
                slo_ms=2000,
                max_batch=8,
                batching=BatchingConfig(policy=Policy.NONE),
            )
        )
    yield a
    a.close()


@pytest.fixture
def node_client(node_agent: Agent) -> Iterator[TestClient]:
    with TestClient(create_app(node_agent)) as c:
        yield c


def test_bare_name_of_a_served_name() -> None:
    assert bare_name("team-a.mlp") == "mlp"
    assert bare_name("team-a.my.model") == "my.model"  # a name may have dots, a namespace not
    assert bare_name("mlp") is None and bare_name(".mlp") is None and bare_name("ns.") is None


def test_registry_resolves_a_unique_bare_name_and_refuses_a_shared_one(node_agent: Agent) -> None:
    assert node_agent.get("mlp") is node_agent.get("team-a.mlp")
    assert node_agent.get("team-b.convnet").name == "team-b.convnet"
    with pytest.raises(AmbiguousModelName) as exc:
        node_agent.get("convnet")
    message = str(exc.value)
    assert all(repr(full) in message for full in AMBIGUOUS), message
    assert "NAMESPACE.NAME" in message
    with pytest.raises(ModelNotFound, match="'nope' is not served here"):
        node_agent.get("nope")
    with pytest.raises(ModelNotFound):
        node_agent.get("team-b.mlp")  # a full name is never matched by its bare part


@pytest.mark.parametrize("name", ["mlp", "team-a.mlp"])
@pytest.mark.parametrize("prefix", ["", "/versions/1"])
def test_every_http_model_route_answers_the_bare_and_the_full_name(
    node_client: TestClient, name: str, prefix: str
) -> None:
    base = f"/v2/models/{name}{prefix}"
    meta = node_client.get(base)
    assert meta.status_code == 200, meta.text
    assert meta.json()["name"] == name
    assert meta.json()["inputs"][0]["shape"] == [-1, MLP_INPUT_WIDTH]
    assert node_client.get(f"{base}/ready").json() == {"name": name, "ready": True}
    out = node_client.post(f"{base}/infer", json=mlp_request(rows=2))
    assert out.status_code == 200, out.text
    assert out.json()["model_name"] == name
    assert out.json()["outputs"][0]["shape"] == [2, 10]
    config = node_client.get(f"{base}/config")
    assert config.status_code == 200 and config.json()["name"] == name, config.text
    assert config.json()["max_batch_size"] == 16
    stats = node_client.get(f"{base}/stats").json()["model_stats"]
    assert [s["name"] for s in stats] == [name]
    assert stats[0]["inference_count"] >= 2  # this request's rows, counted under the model


def test_http_body_model_name_may_be_either_name_of_the_url_model(node_client: TestClient) -> None:
    for body_name in ("mlp", "team-a.mlp"):
        for url_name in ("mlp", "team-a.mlp"):
            body = {**mlp_request(), "model_name": body_name}
            resp = node_client.post(f"/v2/models/{url_name}/infer", json=body)
            assert resp.status_code == 200, (body_name, url_name, resp.text)
    body = {**mlp_request(), "model_name": "team-b.mlp"}
    resp = node_client.post("/v2/models/mlp/infer", json=body)
    assert resp.status_code == 400 and "disagrees" in resp.json()["error"], resp.text


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("GET", "/ready"),
        ("POST", "/infer"),
        ("GET", "/config"),
        ("GET", "/stats"),
        ("GET", "/versions/1"),
        ("POST", "/versions/1/infer"),
    ],
)
def test_a_bare_name_two_namespaces_share_is_a_400_naming_both(
    node_client: TestClient, method: str, suffix: str
) -> None:
    x = np.zeros((1, 3, 32, 32), np.float32)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    resp = node_client.request(
        method, f"/v2/models/convnet{suffix}", json=body if method == "POST" else None
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert "'team-a.convnet' and 'team-b.convnet'" in error and "NAMESPACE.NAME" in error
    full = node_client.request(
        method, f"/v2/models/team-b.convnet{suffix}", json=body if method == "POST" else None
    )
    assert full.status_code == 200, full.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_grpc_resolves_the_bare_name_and_refuses_a_shared_one(node_agent: Agent) -> None:
    asyncio.run(_grpc_calls(node_agent))


async def _grpc_calls(node_agent: Agent) -> None:
    import grpc

    from stowplan.agent import grpc_client, grpc_server
    from stowplan.agent.oip import grpc_predict_v2_pb2 as pb

    port = _free_port()
    server = await grpc_server.start(node_agent, "127.0.0.1", port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = grpc_client.Stub(channel)
            for name in ("mlp", "team-a.mlp"):
                ready = await stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10)
                assert ready.ready
                meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10)
                assert meta.name == name and list(meta.inputs[0].shape) == [-1, MLP_INPUT_WIDTH]
                x = np.ones((2, MLP_INPUT_WIDTH), np.float32)
                request = pb.ModelInferRequest(
                    model_name=name,
                    inputs=[
                        pb.ModelInferRequest.InferInputTensor(
                            name="input", datatype="FP32", shape=[2, MLP_INPUT_WIDTH]
                        )
                    ],
                    raw_input_contents=[x.tobytes()],
                )
                out = await stub.ModelInfer(request, timeout=10)
                assert out.model_name == name and list(out.outputs[0].shape) == [2, 10]
                config = await stub.ModelConfig(pb.ModelConfigRequest(name=name), timeout=10)
                assert config.config.name == name and config.config.max_batch_size == 16
                stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=10)
                assert [s.name for s in stats.model_stats] == [name]
                assert stats.model_stats[0].inference_count >= 2  # counted under the served name
            calls = [
                (stub.ModelReady, pb.ModelReadyRequest(name="convnet")),
                (stub.ModelMetadata, pb.ModelMetadataRequest(name="convnet")),
                (stub.ModelInfer, pb.ModelInferRequest(model_name="convnet")),
                (stub.ModelConfig, pb.ModelConfigRequest(name="convnet")),
                (stub.ModelStatistics, pb.ModelStatisticsRequest(name="convnet")),
            ]
            for call, message in calls:
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await call(message, timeout=10)
                assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT, exc.value
                details = exc.value.details() or ""
                assert "'team-a.convnet' and 'team-b.convnet'" in details, details
                assert "NAMESPACE.NAME" in details
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=10)
            assert exc.value.code() is grpc.StatusCode.NOT_FOUND
            full = await stub.ModelReady(pb.ModelReadyRequest(name="team-a.convnet"), timeout=10)
            assert full.ready
    finally:
        await server.stop(0)
