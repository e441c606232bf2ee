"""Standalone mode: the shipped examples place, build and serve; bad manifests give a clear
error with file and line; ``stowplan up --check`` and ``stowplan models build`` work."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from stowplan import placement, standalone
from stowplan.agent.config import AgentSettings
from stowplan.agent.server import create_app
from stowplan.agent.telemetry import SimulatedTelemetry
from stowplan.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"

MODEL_YAML = """\
apiVersion: stowplan.io/v1alpha1
kind: InferenceModel
metadata: {{name: {name}}}
spec:
  model: {{uri: "{uri}"}}
  slo: {{latencyMs: 100, targetQPS: 50}}
  profile:
    latencyMs: {{base: 1.0, perItem: 0.1}}
    memoryMiB: {{weights: 10, perItem: 1}}
    maxBatch: 16
"""


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="manifests/examples not present")
def test_shipped_examples_place_and_serve(tmp_path: Path) -> None:
    dep = standalone.up(EXAMPLES, AgentSettings(cache_dir=tmp_path), use_nvml=False)
    try:
        assert not dep.plan.unplaced
        assert all(m.state.value == "Ready" for m in dep.agent.models.values()), [
            (m.name, m.reason) for m in dep.agent.models.values()
        ]
        assert dep.built  # example models were built into the cache on first run
        text = standalone.describe(dep, "http://127.0.0.1:8000")
        assert "/v2/models/" in text and "placement:" in text
        with TestClient(create_app(dep.agent)) as c:
            name = next(iter(dep.agent.models))
            meta = c.get(f"/v2/models/{name}").json()
            shape = [1 if d == -1 else d for d in meta["inputs"][0]["shape"]]
            n = 1
            for d in shape:
                n *= d
            body = {
                "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": [0.5] * n}]
            }
            assert c.post(f"/v2/models/{name}/infer", json=body).status_code == 200
    finally:
        dep.agent.close()


def test_multi_document_file_and_relative_uri(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(
        MODEL_YAML.format(name="a", uri="file://models/mlp.onnx")
        + "---\n"
        + MODEL_YAML.format(name="b", uri="file://models/missing.onnx")
        + "---\nkind: ConfigMap\n"
    )
    dep = standalone.up(
        tmp_path, AgentSettings(cache_dir=tmp_path / "cache"), SimulatedTelemetry(1)
    )
    try:
        assert dep.agent.models["a"].state.value == "Ready"  # built: mlp.onnx is an example
        assert dep.agent.models["b"].state.value == "Failed"  # unknown file: failed, not fatal
        assert "missing.onnx" in dep.agent.models["b"].reason
    finally:
        dep.agent.close()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("kind: InferenceModel\n: [", "not valid YAML", id="yaml"),
        pytest.param(
            "---\n"
            + MODEL_YAML.format(name="a", uri="file://x.onnx").replace(
                "latencyMs: 100", "latencyMs: -1"
            ),
            "x.yaml:2: invalid InferenceModel: spec.slo",
            id="schema-with-line",
        ),
    ],
)
def test_bad_manifest_is_a_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(standalone.StandaloneError, match=fragment.replace("[", r"\[")):
        standalone.read_manifests(tmp_path)
    result = CliRunner().invoke(main, ["up", str(tmp_path), "--check", "--no-nvml"])
    assert result.exit_code != 0 and "Error:" in result.output
    assert "Traceback" not in result.output


def test_up_check_and_models_build_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["models", "build", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "convnet.onnx").is_file()
    (tmp_path / "a.yaml").write_text(
        MODEL_YAML.format(name="a", uri=f"file://{tmp_path / 'm' / 'mlp.onnx'}")
    )
    res = runner.invoke(
        main, ["up", str(tmp_path), "--check", "--no-nvml", "--cache-dir", str(tmp_path / "cache")]
    )
    assert res.exit_code == 0, res.output
    assert "a: Ready" in res.output


def test_replicas_on_several_devices_share_the_load(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        MODEL_YAML.format(name="a", uri="file://models/mlp.onnx").replace(
            "slo: {latencyMs: 100", "replicas: 2\n  slo: {latencyMs: 100"
        )
    )
    dep = standalone.up(
        tmp_path, AgentSettings(cache_dir=tmp_path / "cache"), SimulatedTelemetry(2)
    )
    try:
        served = dep.agent.models["a"]
        placed = sorted(a.gpu for a in dep.plan.assignments)
        assert sorted(served.lanes) == placed == [0, 1]  # one lane per replica's device
        assert "device 0,1" in standalone.describe(dep, "http://x")
        with TestClient(create_app(dep.agent)) as c:
            body = {
                "inputs": [
                    {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
                ]
            }
            for _ in range(4):
                assert c.post("/v2/models/a/infer", json=body).status_code == 200
            assert c.get("/v2/models").json()["models"][0]["devices"] == [0, 1]
    finally:
        dep.agent.close()


@pytest.mark.slow
def test_up_serves_and_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    (tmp_path / "a.yaml").write_text(MODEL_YAML.format(name="a", uri="file://models/mlp.onnx"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        grpc_port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stowplan",
            "up",
            str(tmp_path),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--no-nvml",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "agent did not start"
            time.sleep(0.2)
        body = {
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]
        }
        resp = httpx.post(f"http://127.0.0.1:{port}/v2/models/a/infer", json=body)
        assert resp.status_code == 200
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "serving on" in text and "stopped" in text and "Traceback" not in text


def test_requests_beyond_this_machine_are_unplaced_with_a_reason(tmp_path: Path) -> None:
    # standalone mode places on this machine alone: its CPUs and memory bound the requests.
    # One replica asking for a million CPUs fits no node; one asking for 1m CPU is placed.
    base = MODEL_YAML.format(name="{name}", uri="file://models/mlp.onnx")
    huge = base.replace("{name}", "huge") + "  resources: {requests: {cpu: '1000000'}}\n"
    tiny = base.replace("{name}", "tiny") + "  resources: {requests: {cpu: 1m, memory: 1Mi}}\n"
    (tmp_path / "m.yaml").write_text(huge + "---\n" + tiny)
    problem = standalone.make_problem(standalone.read_manifests(tmp_path), SimulatedTelemetry(1))
    demands = {m.name: m for m in problem.models}
    assert (demands["tiny"].cpu_milli, demands["tiny"].host_memory_mib) == (1, 1)
    out = placement.plan(problem)
    assert placement.check_plan(problem, out) == []
    assert [a.model for a in out.assignments] == ["tiny"]
    assert [(u.model, u.reason) for u in out.unplaced] == [
        ("huge", placement.UnplacedReason.RESOURCES_EXCEED_EVERY_NODE)
    ]
