"""Admission control in the front ends (:mod:`stowplan.agent.admission`): past the server's
in-flight bound a new inference request is refused before its body is read (HTTP 503 with
``Retry-After``; gRPC UNAVAILABLE with ``grpc-retry-pushback-ms``), counted under
``stowplan_requests_refused_total{reason="admission"}``; once the requests in flight are
answered, new ones are admitted again. Real uvicorn + grpc.aio on loopback (the listeners'
own event loop, in a thread of this process, so a test can hold the device), real ONNX
Runtime, real clients (httpx, a raw socket, tritonclient.grpc)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import uvicorn
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from stowplan.agent import grpc_server
from stowplan.agent.admission import Admission
from stowplan.agent.config import AgentSettings, BatchingConfig, ModelConfig, Policy
from stowplan.agent.server import create_app
from stowplan.agent.serving import Agent
from stowplan.testing.agent import hold_device, metric_value, mlp_request

REFUSED = 'stowplan_requests_refused_total{model="",reason="admission",version="1"}'


def test_bounds_in_requests_and_bytes_and_a_lone_request_always_enters() -> None:
    a = Admission(max_requests=2, max_bytes=100)
    assert a.enter(10_000)  # nothing in flight: admitted, whatever its size
    assert not a.enter(1)  # 10 kB in flight: one more byte is past 100
    a.leave(10_000)
    assert a.enter(60) and not a.enter(41) and a.enter(40)
    assert not a.enter(0)  # two in flight: the request bound
    assert (a.requests, a.bytes) == (2, 100)
    a.grow(5)  # a chunked body, counted once read
    a.leave(65)
    a.leave(40)
    assert (a.requests, a.bytes) == (0, 0)
    msg = str(a.refusal())
    assert "server busy" in msg and "2 requests or 100 bytes" in msg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _listening(agent: Agent) -> Iterator[tuple[str, str]]:
    """The agent's HTTP and gRPC front ends on loopback, in a thread's event loop."""
    port, grpc_port = _free_port(), _free_port()
    http = uvicorn.Server(
        uvicorn.Config(
            create_app(agent), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    started: Future[None] = Future()

    async def main() -> None:
        grpc = await grpc_server.start(agent, "127.0.0.1", grpc_port)
        started.set_result(None)
        try:
            await http.serve()
        finally:
            await grpc.stop(0.5)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    started.result(timeout=30)
    deadline = time.monotonic() + 30
    while not http.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    finally:
        http.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def busy_agent(model_dir: Path, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(
        AgentSettings(
            cache_dir=tmp_path, intra_op_threads=1, max_inflight_requests=2, max_queue_requests=64
        )
    )
    a.load(
        ModelConfig(
            name="mlp",
            uri=f"file://{model_dir / 'mlp.onnx'}",
            slo_ms=60_000,  # the held requests must wait, not be shed by their SLO
            max_batch=8,
            batching=BatchingConfig(policy=Policy.NONE),
        )
    )
    yield a
    a.close()


def _response(s: socket.socket) -> tuple[bytes, bytes]:
    """(status line and headers, body) of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += s.recv(65536)
    return head, rest


def _wait_for(check: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_past_the_bound_http_and_grpc_are_refused_before_the_body_then_admitted_again(
    busy_agent: Agent,
) -> None:
    body = json.dumps(mlp_request()).encode()
    x = np.zeros((1, 64), np.float32)
    with _listening(busy_agent) as (url, grpc_url), ThreadPoolExecutor(2) as pool:
        gate = hold_device(busy_agent, "mlp", max_hold_s=20.0)
        try:
            held = [
                pool.submit(httpx.post, f"{url}/v2/models/mlp/infer", content=body, timeout=30)
                for _ in range(2)
            ]
            _wait_for(lambda: busy_agent.admission.requests == 2, "two requests in flight")
            assert metric_value(busy_agent, "stowplan_inflight_requests ") == 2

            # HTTP: a 503 with Retry-After while the client has sent only the headers of a
            # 1 MB body: answered before the body is read
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
                s.settimeout(10)
                s.sendall(
                    b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
                )
                head, rest = _response(s)
            assert head.startswith(b"HTTP/1.1 503"), head
            assert b"retry-after: 1" in head.lower(), head
            assert "server busy" in json.loads(rest)["error"]

            # the same through a client that sends its body, on a kept-alive connection
            with httpx.Client(timeout=30) as client:
                r = client.post(f"{url}/v2/models/mlp/infer", content=body)
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert set(r.json()) == {"error"} and "server busy" in r.json()["error"]
                # non-inference routes are not bounded
                assert client.get(f"{url}/v2/health/live").status_code == 200

                # gRPC: UNAVAILABLE with gRPC's pushback, before the message is decoded
                g = tg.InferenceServerClient(grpc_url)
                try:
                    inp = tg.InferInput("input", [1, 64], "FP32")
                    inp.set_data_from_numpy(x)
                    with pytest.raises(InferenceServerException) as exc:
                        g.infer("mlp", [inp], client_timeout=30)
                    assert str(exc.value.status()) == "StatusCode.UNAVAILABLE"
                    assert "server busy" in (exc.value.message() or "")
                    # the generated stub sees gRPC's Retry-After: the pushback trailer
                    with grpc.insecure_channel(grpc_url) as channel:
                        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                        request = service_pb2.ModelInferRequest(model_name="mlp")
                        request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
                        request.raw_input_contents.append(x.tobytes())
                        with pytest.raises(grpc.RpcError) as info:
                            stub.ModelInfer(request, timeout=30)
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert ("grpc-retry-pushback-ms", "1000") in info.value.trailing_metadata()
                    assert metric_value(busy_agent, REFUSED) == 4
                    assert busy_agent.admission.requests == 2  # refusals took nothing in
                finally:
                    gate.set()
                    assert [h.result(timeout=30).status_code for h in held] == [200, 200]
                    _wait_for(lambda: busy_agent.admission.requests == 0, "all answered")
                try:
                    assert g.infer("mlp", [inp], client_timeout=30).as_numpy("logits") is not None
                finally:
                    g.close()
                # admitted again, on the connection that was refused
                assert client.post(f"{url}/v2/models/mlp/infer", content=body).status_code == 200
        finally:
            gate.set()
    assert (busy_agent.admission.requests, busy_agent.admission.bytes) == (0, 0)
    assert metric_value(busy_agent, REFUSED) == 4
