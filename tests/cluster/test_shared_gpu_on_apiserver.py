"""Plan = runtime on a real kube-apiserver: a ``policy: none`` model and an AIMD model share
the one GPU of a real agent process (simulated device, real ONNX Runtime). The real operator
plans both onto that GPU; each is then driven at its planned load and must meet its SLO, and
both the agent's ``GET /v2/models`` and ``GPUNode.status`` show the planned batch and GPU time
per duty cycle (from the GPUNode's assignment) beside the observed ones."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from stowplan.models import builders

pytestmark = pytest.mark.cluster

NODE = "shared-gpu-node"
LABEL = {"stowplan.io/test": "shared-gpu"}  # the models select this node only
SLO_MS = 100.0
QPS = 40.0  # each model's targetQPS: the planned load the test drives
DRIVE_S = 6.0


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = tmp_path_factory.mktemp("models")
    builders.build_all(directory)
    return directory


@pytest.fixture(scope="module")
def agent(
    installed: Any, agent_kubeconfig: Path, operator: Any, agent_process: Any, tmp_path_factory: Any
) -> Iterator[str]:
    """The node's GPUNode, labelled so that only these models select it, then a real agent
    process for it with one simulated GPU; yields the agent's base URL."""
    body = {
        "apiVersion": "stowplan.io/v1alpha1",
        "kind": "GPUNode",
        "metadata": {"name": NODE, "labels": LABEL},
        "spec": {"assignments": []},
    }
    installed.run("apply", "-f", "-", input_=yaml.safe_dump(body))
    try:
        with agent_process(
            installed,
            NODE,
            ["--kubeconfig", str(agent_kubeconfig), "--status-interval", "0.5",
             "--sim-devices", "1", "--grpc-port", "0",
             "--models-dir", str(tmp_path_factory.mktemp("cache"))],
            {**os.environ, "KUBECONFIG": str(agent_kubeconfig)},
            tmp_path_factory.mktemp("agent") / "agent.log",
        ) as port:  # fmt: skip
            yield f"http://127.0.0.1:{port}"
    finally:
        installed.run("delete", "gpunode", NODE, "--ignore-not-found", check=False)


def _doc(name: str, uri: str, batching: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "stowplan.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": uri},
            "replicas": 1,
            "slo": {"latencyMs": SLO_MS, "targetQPS": QPS},
            "profile": {
                "latencyMs": {"base": 1.0, "perItem": 0.2},
                "memoryMiB": {"weights": 50, "perItem": 1},
                "maxBatch": 16,
            },
            "batching": batching,
            "nodeSelector": LABEL,
        },
    }


def _drive(url: str, body: dict[str, Any], out: list[float], errors: list[str]) -> None:
    """Requests at QPS for DRIVE_S seconds, paced on a fixed schedule (bounded in count)."""
    count = int(QPS * DRIVE_S)
    start = time.perf_counter()
    with httpx.Client(timeout=10) as client:
        for i in range(count):
            due = start + i / QPS
            time.sleep(max(0.0, due - time.perf_counter()))
            t0 = time.perf_counter()
            r = client.post(url, json=body)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
                continue
            out.append((time.perf_counter() - t0) * 1000.0)


def test_a_none_and_an_aimd_model_share_a_gpu_at_their_planned_load(
    installed: Any, agent: str, models_dir: Path, namespace: str, wait: Any
) -> None:
    uri = f"file://{models_dir / 'mlp.onnx'}"
    docs = [
        _doc("single", uri, {"policy": "none"}),
        _doc("adaptive", uri, {"policy": "aimd", "maxQueueDelayMs": 2}),
    ]
    installed.run("apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump_all(docs))
    for name in ("single", "adaptive"):
        wait(
            lambda n=name: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (
                    installed.json("get", "-n", namespace, f"im/{n}").get("status") or {}
                ).get("conditions", [])
            ),
            timeout_s=90,
            what=f"{name} Ready on {NODE}",
        )
    spec = installed.json("get", f"gpunode/{NODE}")["spec"]["assignments"]
    planned = {a["model"].split("/")[1]: a for a in spec}
    assert set(planned) == {"single", "adaptive"}
    assert {a["gpu"] for a in spec} == {0}, "both replicas share the node's one GPU"
    assert planned["single"]["batchSize"] == 1, "a none model is planned as batch-1 runs"

    with httpx.Client(base_url=agent, timeout=10) as client:
        index = {m["name"]: m for m in client.get("/v2/models").json()["models"]}
        names = {short: next(n for n in index if n.endswith(short)) for short in planned}
        meta = client.get(f"/v2/models/{names['single']}").json()
    width = int(meta["inputs"][0]["shape"][-1])
    body = {"inputs": [{"name": meta["inputs"][0]["name"], "shape": [1, width],
                        "datatype": "FP32", "data": [0.5] * width}]}  # fmt: skip

    with httpx.Client(base_url=agent, timeout=10) as client:
        for short in planned:  # the first calls of a fresh session are not the planned load
            for _ in range(5):
                assert client.post(f"/v2/models/{names[short]}/infer", json=body).status_code == 200

    latencies: dict[str, list[float]] = {n: [] for n in planned}
    errors: dict[str, list[str]] = {n: [] for n in planned}
    threads = [
        threading.Thread(
            target=_drive,
            args=(f"{agent}/v2/models/{names[n]}/infer", body, latencies[n], errors[n]),
        )
        for n in planned
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DRIVE_S * 4)

    with httpx.Client(base_url=agent, timeout=10) as client:
        index = {m["name"]: m for m in client.get("/v2/models").json()["models"]}
    for short, a in planned.items():
        lat = latencies[short]
        within = sum(1 for v in lat if v <= SLO_MS) / max(1, int(QPS * DRIVE_S))
        row = index[names[short]]
        print(
            f"{short}: within SLO {within:.1%} of {int(QPS * DRIVE_S)}, planned batch "
            f"{a['batchSize']} busy {a['busyMs']:.3f} ms per {a['dutyCycleMs']:.3f} ms cycle; "
            f"observed mean batch {row['mean_batch']} busy {row['busy_ms']} ms per cycle"
        )
        assert not errors[short], errors[short][:3]
        assert within >= 0.99, f"{short}: {within:.1%} within {SLO_MS} ms"
        assert row["planned_batch"] == a["batchSize"]
        assert row["planned_busy_ms"] == pytest.approx(a["busyMs"])
        assert row["duty_cycle_ms"] == pytest.approx(a["dutyCycleMs"])
        assert row["busy_ms"] is not None and row["busy_ms"] > 0

    def reported() -> list[dict[str, Any]] | None:
        models = (installed.json("get", f"gpunode/{NODE}").get("status") or {}).get("models", [])
        ok = len(models) == 2 and all((m.get("busyMs") or 0) > 0 for m in models)
        return models if ok else None

    for m in wait(reported, timeout_s=30, what="planned and observed GPU time in GPUNode.status"):
        a = planned[m["model"].split("/")[1]]
        assert m["plannedBatchSize"] == a["batchSize"]
        assert m["plannedBusyMs"] == pytest.approx(a["busyMs"])
    installed.run("delete", "-n", namespace, "im/single", "im/adaptive")
