"""The committed gRPC modules (stowplan/agent/oip) are exactly what the pinned grpcio-tools
generates from the committed .proto: regenerate into a temporary folder and compare byte for
byte. Fails on a hand edit, a .proto change without regeneration, or another grpcio-tools.
And the messages live in their own proto package, so they share a process with tritonclient's
copy of the protocol (package ``inference``; protobuf's descriptor pool refuses duplicates)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OIP = REPO / "src" / "stowplan" / "agent" / "oip"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi")


def test_generated_modules_match_a_fresh_generation(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "stowplan.agent.oip.codegen", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for name in GENERATED:
        fresh, committed = (tmp_path / name).read_text(), (OIP / name).read_text()
        assert fresh == committed, (
            f"{name} drifted from grpc_predict_v2.proto: run python -m stowplan.agent.oip.codegen"
        )


def test_generation_uses_the_pinned_grpcio_tools() -> None:
    pinned = re.search(r'"grpcio-tools==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pinned is not None
    assert version("grpcio-tools") == pinned.group(1)
    header = (OIP / "grpc_predict_v2_pb2.py").read_text().splitlines()[0]
    assert f"grpcio-tools {pinned.group(1)}" in header


def test_the_service_is_the_protocols() -> None:
    # the wire names clients dial: the service is served and called as
    # inference.GRPCInferenceService (the proto's own package is stowplan.oip so its messages
    # coexist with tritonclient's and kserve's), the six protocol RPCs (plus Triton's three),
    # raw contents fields with the protocol's numbers
    from stowplan.agent.grpc_server import SERVICE

    assert SERVICE == "inference.GRPCInferenceService"
    proto = (OIP / "grpc_predict_v2.proto").read_text()
    assert re.search(r"^package stowplan.oip;$", proto, re.M)
    assert "service GRPCInferenceService" in proto
    for rpc in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    ):
        assert re.search(rf"rpc {rpc}\({rpc}Request\) returns \({rpc}Response\)", proto), rpc
    assert "repeated bytes raw_input_contents = 7;" in proto
    assert "repeated bytes raw_output_contents = 6;" in proto


def test_the_messages_share_a_process_with_the_clients_copies() -> None:
    # tritonclient's and kserve's generated modules register package inference; ours must not
    # collide with them in one process (a pytest run, a user's script)
    code = (
        "import stowplan.agent.grpc_client, stowplan.agent.grpc_server\n"
        "import tritonclient.grpc\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
