"""The serving stack's own floor: the agent's HTTP and gRPC stacks with nothing of stowplan in
them, for the ``echo-http`` and ``echo-grpc`` paths of ``stowplan bench dataplane``.

A bare ASGI app on uvicorn (uvloop, httptools: :mod:`stowplan.agent.listeners`' settings)
reads each request body whole and answers every request with the same precomputed binary
inference response; a bare ``grpc.aio`` server on the same loop answers every ModelInfer with
the same precomputed ModelInferResponse. No routing, no parsing, no model and no thread hop:
what remains of the latency is the client, the kernel's loopback and the two stacks, so an
agent path's p50 minus its echo path's p50 is what stowplan itself adds.

Started by :mod:`stowplan.agentbench.dataplane` in its own process
(``python -m stowplan.agentbench.echo OUTPUT_NPY HTTP_PORT GRPC_PORT``); the answer is the
model's output for the benchmark's input (from a direct ONNX Runtime call), so the bench's
answer check passes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvicorn
import uvloop

from stowplan.agent.grpc_server import SERVICE
from stowplan.agent.oip import grpc_predict_v2_pb2 as pb


def http_answer(out: np.ndarray) -> tuple[bytes, int]:
    """(body, JSON header length) of the binary inference response carrying ``out``."""
    raw = np.ascontiguousarray(out, "<f4").tobytes()
    head = json.dumps(
        {
            "model_name": "bench",
            "model_version": "1",
            "outputs": [
                {
                    "name": "logits",
                    "datatype": "FP32",
                    "shape": list(out.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
        },
        separators=(",", ":"),
    ).encode()
    return head + raw, len(head)


def asgi_app(out: np.ndarray) -> Any:
    body, header_length = http_answer(out)
    headers = [
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(header_length).encode()),
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def grpc_answer(out: np.ndarray) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(
        model_name="bench",
        model_version="1",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name="logits", datatype="FP32", shape=list(out.shape)
            )
        ],
        raw_output_contents=[np.ascontiguousarray(out, "<f4").tobytes()],
    )


async def serve(out: np.ndarray, http_port: int, grpc_port: int) -> None:
    answer = grpc_answer(out)

    async def infer(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return answer

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler})]
    )
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    http = uvicorn.Server(
        uvicorn.Config(
            asgi_app(out),
            host="127.0.0.1",
            port=http_port,
            log_level="warning",
            access_log=False,
            loop="uvloop",
            http="httptools",
        )
    )
    try:
        await http.serve()
    finally:
        await server.stop(0)


def main(argv: list[str]) -> None:
    out_path, http_port, grpc_port = argv
    out = np.load(Path(out_path))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(out, int(http_port), int(grpc_port)))


if __name__ == "__main__":
    main(sys.argv[1:])

__all__ = ["asgi_app", "grpc_answer", "http_answer", "main", "serve"]
