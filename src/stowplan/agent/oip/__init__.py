"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``): the
``.proto`` stowplan serves and the Python modules protoc generates from it, committed.

``grpc_predict_v2_pb2`` holds the messages (``.pyi`` beside it for type checkers),
``grpc_predict_v2_pb2_grpc`` the client stub and servicer registration; :mod:`.codegen`
regenerates both (``python -m stowplan.agent.oip.codegen``, needs grpcio-tools from the dev
extra) and tests/agent/test_grpc_codegen.py fails when the committed files drift from it.
The generated modules register the ``inference`` package in protobuf's default descriptor pool,
as tritonclient's and kserve's own copies do, so no two of them can be imported in one process.
"""

__all__: list[str] = []
