"""A client of ``inference.GRPCInferenceService`` with stowplan's own messages, for stowplan's
benchmarks and tests (users bring theirs: tritonclient, KServe's SDK, stubs generated from the
protocol's proto).

The messages' proto package is ``stowplan.oip`` (so they can share a process with tritonclient's
and kserve's copies, see :mod:`stowplan.agent.oip`), so a stub generated from it would call
``/stowplan.oip.GRPCInferenceService/...``; :class:`Stub` calls the protocol's service name
instead, with the same method names as a generated stub.
"""

from __future__ import annotations

from typing import Any

import grpc

from stowplan.agent.grpc_server import SERVICE
from stowplan.agent.oip import grpc_predict_v2_pb2 as pb

#: every RPC of the service stowplan serves, with its response message
_METHODS: dict[str, Any] = {
    "ServerLive": pb.ServerLiveResponse,
    "ServerReady": pb.ServerReadyResponse,
    "ModelReady": pb.ModelReadyResponse,
    "ServerMetadata": pb.ServerMetadataResponse,
    "ModelMetadata": pb.ModelMetadataResponse,
    "ModelInfer": pb.ModelInferResponse,
    "ModelConfig": pb.ModelConfigResponse,
    "ModelStatistics": pb.ModelStatisticsResponse,
    "RepositoryIndex": pb.RepositoryIndexResponse,
}


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


class Stub:
    """``Stub(channel).ModelInfer(request, timeout=...)`` and the other RPCs, on a
    ``grpc.aio`` channel (awaitable calls) or a blocking one."""

    def __init__(self, channel: grpc.aio.Channel | grpc.Channel) -> None:
        for method, response in _METHODS.items():
            call = channel.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=_serialize,
                response_deserializer=response.FromString,
            )
            setattr(self, method, call)

    def __getattr__(self, name: str) -> Any:  # the calls set in __init__, for type checkers
        raise AttributeError(f"inference.GRPCInferenceService has no RPC {name!r} here")


__all__ = ["Stub"]
