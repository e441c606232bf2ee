"""gRPC boundary: ``inference.GRPCInferenceService`` (the Open Inference Protocol over gRPC,
:mod:`stowplan.agent.oip`) on ``grpc.aio``, in the same event loop as the HTTP server and over
the same data plane (:class:`stowplan.agent.dataplane.DataPlane`: ``ready_model`` and ``run``).

RPCs: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, and
Triton's ModelConfig, ModelStatistics and RepositoryIndex with real values. Every other method
(Triton's streaming, shared-memory, load/unload, trace and log RPCs) answers UNIMPLEMENTED with
a message naming what is served.

Models are named as over HTTP: the served name (``namespace.name`` on a cluster node) or the
bare name when exactly one served model here has it; answers echo the name asked for.

Error mapping (the only place it happens for gRPC), from the agent's exception tree:
InvalidRequest (an ambiguous bare name included) and PayloadTooLarge -> INVALID_ARGUMENT,
ModelNotFound (and an unknown model version) -> NOT_FOUND, ModelNotReady and Overloaded ->
UNAVAILABLE, anything else -> INTERNAL; the status message is the error's message. A ModelInfer
past the agent's admission bound (:mod:`stowplan.agent.admission`) is UNAVAILABLE before its
message is decoded, with ``grpc-retry-pushback-ms`` trailing metadata. Messages
larger than ``max_body_bytes`` are refused by gRPC itself with RESOURCE_EXHAUSTED. Callers:
:mod:`stowplan.agent.listeners`. Must not contain serving logic.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

import stowplan
from stowplan.agent import admission, grpc_codec, tritonapi
from stowplan.agent.errors import (
    AgentError,
    InvalidRequest,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
)
from stowplan.agent.oip import grpc_predict_v2_pb2 as pb
from stowplan.agent.registry import ModelState, ServedModel
from stowplan.agent.serving import Agent

log = logging.getLogger("stowplan.agent.grpc")

SERVICE = "inference.GRPCInferenceService"
VERSION = "1"  # the one version of each model stowplan serves
EXTENSIONS = ["model_configuration", "statistics", "model_repository_index"]
_STATES = {  # stowplan's model states -> Triton's repository-index names
    ModelState.READY: "READY",
    ModelState.LOADING: "LOADING",
}


def status_code(exc: AgentError) -> grpc.StatusCode:
    if isinstance(exc, InvalidRequest | PayloadTooLarge):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, ModelNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, ModelNotReady | Overloaded):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


class InferenceService:
    """The RPCs, as coroutines from request message to response message."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def _model(self, name: str, version: str) -> ServedModel:
        served = self.agent.get(name)
        if version not in ("", VERSION):
            raise ModelNotFound(f"model {name!r} has no version {version!r}; it serves {VERSION!r}")
        return served

    async def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.agent.ready())

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        served = self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=served.state is ModelState.READY)

    async def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="stowplan", version=stowplan.__version__, extensions=EXTENSIONS
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        served = self._model(request.name, request.version)
        rt = served.runtime
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[VERSION],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in rt.inputs]
            if rt
            else [],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in rt.outputs]
            if rt
            else [],
        )

    async def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        dataplane = self.agent.dataplane
        start = self.agent.clock()
        self._model(request.model_name, request.model_version)
        served = dataplane.ready_model(request.model_name)
        assert served.runtime is not None
        arrays, items, wanted = grpc_codec.decode_request(
            request, served.runtime.inputs, served.max_items
        )
        outputs = await dataplane.run(served, arrays, items, wanted, start)
        return grpc_codec.encode_response(request.model_name, request.id, outputs)

    async def model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        served = self._model(request.name, request.version)
        rt = served.runtime
        if rt is None:
            raise ModelNotReady(
                f"model {request.name!r} is {served.state.value}; its tensors are not known yet"
            )
        max_batch = served.max_items if rt.batched else 0
        skip = 1 if max_batch else 0  # Triton's dims leave out the batch dimension

        def dtype(datatype: str) -> Any:
            return pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")

        return pb.ModelConfigResponse(
            config=pb.ModelConfig(
                name=request.name,
                platform="onnxruntime_onnx",
                backend="onnxruntime",
                max_batch_size=max_batch,
                input=[
                    pb.ModelInput(name=t.name, data_type=dtype(t.datatype), dims=t.shape[skip:])
                    for t in rt.inputs
                ],
                output=[
                    pb.ModelOutput(name=t.name, data_type=dtype(t.datatype), dims=t.shape[skip:])
                    for t in rt.outputs
                ],
            )
        )

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest
    ) -> pb.ModelStatisticsResponse:
        if request.name:  # named as asked
            models = [(request.name, self._model(request.name, request.version))]
        else:
            models = [(name, served) for name, served in list(self.agent.models.items())]
        out = pb.ModelStatisticsResponse()
        for asked, served in models:
            # the HTTP route's numbers (tritonapi.model_statistics): one source for both; the
            # proto keeps a subset of Triton's fields (its numbers), the rest are left out
            stats = tritonapi.model_statistics(served, asked).model_dump()
            msg = json_format.ParseDict(stats, pb.ModelStatistics(), ignore_unknown_fields=True)
            out.model_stats.append(msg)
        return out

    async def repository_index(
        self, request: pb.RepositoryIndexRequest
    ) -> pb.RepositoryIndexResponse:
        out = pb.RepositoryIndexResponse()
        for name, served in list(self.agent.models.items()):
            if request.ready and served.state is not ModelState.READY:
                continue
            out.models.add(
                name=name,
                version=VERSION,
                state=_STATES.get(served.state, "UNAVAILABLE"),
                reason=served.reason,
            )
        return out


def _unary(fn: Callable[[Any], Awaitable[Any]], request_type: Any, response_type: Any) -> Any:
    async def handler(request: Any, context: Any) -> Any:
        try:
            return await fn(request)
        except AgentError as exc:
            await context.abort(status_code(exc), str(exc))
        except Exception as exc:
            log.exception("unexpected error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    return grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def _admitted_infer(service: InferenceService) -> Any:
    """ModelInfer behind the agent's admission bound (:mod:`stowplan.agent.admission`): the
    message arrives undecoded and is parsed only once admitted; past the bound the call ends
    UNAVAILABLE (gRPC's retryable status, as a 503 maps to; the same the agent's load shedding
    answers) with ``grpc-retry-pushback-ms`` trailing metadata, gRPC's Retry-After."""
    agent = service.agent
    bound = agent.admission
    pushback = (("grpc-retry-pushback-ms", str(admission.RETRY_AFTER_S * 1000)),)

    async def handler(raw: bytes, context: Any) -> Any:
        nbytes = len(raw)
        if not bound.enter(nbytes):
            refusal = bound.refusal()
            agent.metrics.observe_refusal("", refusal.reason)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, str(refusal), trailing_metadata=pushback
            )
        try:
            return await service.model_infer(pb.ModelInferRequest.FromString(raw))
        except AgentError as exc:
            await context.abort(status_code(exc), str(exc))
        except DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not a ModelInferRequest message: {exc}"
            )
        except Exception as exc:
            log.exception("unexpected error in model_infer")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        finally:
            bound.leave(nbytes)

    return grpc.unary_unary_rpc_method_handler(
        handler, response_serializer=pb.ModelInferResponse.SerializeToString
    )


def handlers(agent: Agent) -> list[Any]:
    """The generic RPC handlers of the service: the RPCs above, then UNIMPLEMENTED for the rest."""
    s = InferenceService(agent)
    table = {
        "ServerLive": _unary(s.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": _unary(s.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": _unary(s.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": _unary(
            s.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
        ),
        "ModelMetadata": _unary(
            s.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
        ),
        "ModelInfer": _admitted_infer(s),
        "ModelConfig": _unary(s.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": _unary(
            s.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse
        ),
        "RepositoryIndex": _unary(
            s.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse
        ),
    }
    return [grpc.method_handlers_generic_handler(SERVICE, table), _Unimplemented(sorted(table))]


class _Unimplemented:
    """Answers every method the service table lacks with UNIMPLEMENTED and a message naming
    what is served (gRPC's own answer says only "Method not found!")."""

    def __init__(self, served: list[str]) -> None:
        self.served = served

    def service(self, details: Any) -> Any:
        method = str(details.method)
        message = f"{method.lstrip('/')} is not served by stowplan; {SERVICE} serves " + ", ".join(
            self.served
        )

        async def refuse(request: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

        if method.endswith("/ModelStreamInfer"):  # Triton's one streaming RPC
            return grpc.stream_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(agent: Agent, host: str, port: int) -> Any:
    """Bind and start a ``grpc.aio`` server for ``agent`` on the running event loop; returns it
    (``await server.stop(grace_s)`` ends it). A port already in use raises OSError."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", agent.settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on a busy port fails instead of sharing
        ]
    )
    server.add_generic_rpc_handlers(handlers(agent))
    try:
        bound = server.add_insecure_port(address(host, port))
    except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...")
        raise OSError(f"cannot listen for gRPC on {address(host, port)}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address(host, port)}")
    await server.start()
    return server


__all__ = [
    "EXTENSIONS",
    "SERVICE",
    "InferenceService",
    "address",
    "handlers",
    "start",
    "status_code",
]
