"""The whole stack on a real kube-apiserver: operator + a real agent process + a real ONNX model.

The agent runs as `python -m stowplan.agent` with the token of the `stowplan-agent`
ServiceAccount from manifests/ (so its RBAC is exercised), registers its own GPUNode with a
simulated device, loads what the operator assigns with ONNX Runtime, serves it over the Open
Inference Protocol and reports status, which the operator folds into the InferenceModel.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from stowplan.models import builders

pytestmark = pytest.mark.cluster

NODE = "agent-node-1"
SIM_GPU = "Simulated GPU (CPU)"  # the simulated device's product name; gpuType pins to it


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    builders.build_all(directory)
    return directory


@pytest.fixture(scope="module")
def agent(installed, agent_kubeconfig, operator, agent_process, tmp_path_factory) -> Iterator[str]:
    """A real agent process for node NODE; yields its base URL (gRPC on GRPC[0])."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        GRPC[:] = [f"127.0.0.1:{s.getsockname()[1]}"]
    with agent_process(
        installed,
        NODE,
        ["--kubeconfig", str(agent_kubeconfig), "--status-interval", "0.5",
         "--sim-devices", "1", "--models-dir", str(tmp_path_factory.mktemp("cache")),
         "--grpc-port", GRPC[0].rpartition(":")[2]],
        {**os.environ, "KUBECONFIG": str(agent_kubeconfig)},
        tmp_path_factory.mktemp("agent") / "agent.log",
    ) as port:  # fmt: skip
        yield f"http://127.0.0.1:{port}"


GRPC: list[str] = []  # the agent's gRPC address, set by the fixture


def _model_doc(models_dir: Path) -> dict:
    return {
        "apiVersion": "stowplan.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": "served"},
        "spec": {
            "model": {"uri": f"file://{models_dir / 'mlp.onnx'}"},
            "replicas": 1,
            "slo": {"latencyMs": 200, "targetQPS": 20},
            "profile": {
                "latencyMs": {"base": 1.0, "perItem": 0.2},
                "memoryMiB": {"weights": 50, "perItem": 1},
                "maxBatch": 16,
            },
            "gpuType": SIM_GPU,
        },
    }


def _ready(status: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def test_assigned_model_is_loaded_served_and_reported(
    installed, agent, models_dir, namespace, wait
):
    node = wait(
        lambda: (installed.json("get", "gpunodes").get("items") and [
            n for n in installed.json("get", "gpunodes")["items"]
            if n["metadata"]["name"] == NODE and (n.get("status") or {}).get("gpus")
        ]),
        timeout_s=60, what="the agent to register its GPUNode with its GPUs",
    )[0]  # fmt: skip
    assert node["status"]["gpus"][0]["name"] == SIM_GPU and node["status"]["heartbeat"]

    installed.run(
        "apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump(_model_doc(models_dir))
    )
    status = wait(
        lambda: (s := installed.json("get", "-n", namespace, "im/served").get("status") or {})
        and _ready(s) and s,
        timeout_s=60, what="Ready=True folded back from the agent",
    )  # fmt: skip
    assert status["readyReplicas"] == 1
    assert status["placements"][0]["node"] == NODE
    assert status["placements"][0]["state"] == "Ready"

    model = f"{namespace}/served"
    with httpx.Client(base_url=agent, timeout=10) as client:
        index = client.get("/v2/models").json()
        names = [m["name"] if isinstance(m, dict) else m for m in index.get("models", index)]
        target = next(n for n in names if "served" in n)
        meta = client.get(f"/v2/models/{target}").json()
        spec = meta["inputs"][0]
        width = int(spec["shape"][-1])
        body = {"inputs": [{"name": spec["name"], "shape": [2, width], "datatype": "FP32",
                            "data": [0.5] * (2 * width)}]}  # fmt: skip
        answer = client.post(f"/v2/models/{target}/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["shape"][0] == 2
        bad = client.post(f"/v2/models/{target}/infer", json={"inputs": "nope"})
        assert 400 <= bad.status_code < 500

    # the same model over gRPC (tritonclient, raw contents) answers what HTTP answered
    import numpy as np
    import tritonclient.grpc as tg

    with tg.InferenceServerClient(GRPC[0]) as grpc_client:
        assert grpc_client.is_model_ready(target, client_timeout=10)
        x = tg.InferInput(spec["name"], [2, width], "FP32")
        x.set_data_from_numpy(np.full((2, width), 0.5, np.float32))
        result = grpc_client.infer(target, [x], client_timeout=10)
        http_out = answer.json()["outputs"][0]
        got = result.as_numpy(http_out["name"])
        assert got.shape == tuple(http_out["shape"])
        np.testing.assert_allclose(got.reshape(-1), http_out["data"], rtol=1e-6, atol=1e-6)

    # the agent reports traffic; the operator folds qps / p99 back into the model's status
    def observed():
        s = installed.json("get", "-n", namespace, "im/served").get("status") or {}
        return (s.get("observed") or {}).get("p99Ms") is not None and s

    assert wait(observed, timeout_s=30, what="observed p99 in status")["observed"]["qps"] >= 0

    installed.run("delete", "-n", namespace, "im/served")

    def unloaded():
        gn = installed.json("get", f"gpunode/{NODE}")
        return not [m for m in (gn.get("status") or {}).get("models", []) if m["model"] == model]

    wait(unloaded, timeout_s=30, what="the agent to unload the deleted model")
