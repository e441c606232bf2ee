"""The Open Inference Protocol's gRPC messages as stowplan serves them: the ``.proto`` and the
Python module protoc generates from it, committed.

``grpc_predict_v2_pb2`` holds the messages (``.pyi`` beside it for type checkers); :mod:`.codegen`
regenerates it (``python -m stowplan.agent.oip.codegen``, needs grpcio-tools from the dev extra)
and tests/agent/test_grpc_codegen.py fails when the committed files drift from it. The proto's
package is ``stowplan.oip`` so that these messages share a process with tritonclient's and
kserve's copies of the protocol (package ``inference``); the service itself is served and called
under the protocol's name (:mod:`stowplan.agent.grpc_server`, :mod:`stowplan.agent.grpc_client`).
"""

__all__: list[str] = []
