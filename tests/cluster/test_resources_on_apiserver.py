"""CPU and host-memory requests on a real kube-apiserver: the schema accepts Kubernetes
quantities and refuses bad ones naming the field; a real agent process reports the budget it
was given the way the DaemonSet gives it (environment from the downward API), and the real
operator (its own ServiceAccount) stops placing replicas on that node once their CPU requests
fill it, reporting the rest in status and a Warning event.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stowplan.models import builders

pytestmark = pytest.mark.cluster

NODE = "cpu-bound-node"
SIM_GPU = "Simulated GPU (CPU)"  # only agents' simulated devices have it: pins models to NODE


def _doc(name: str, replicas: int = 1, requests: Any = None, uri: str = "/m/a.onnx") -> dict:
    spec: dict[str, Any] = {
        "model": {"uri": uri},
        "replicas": replicas,
        "slo": {"latencyMs": 200, "targetQPS": 10 * replicas},
        "profile": {
            "latencyMs": {"base": 1.0, "perItem": 0.2},
            "memoryMiB": {"weights": 50, "perItem": 1},
            "maxBatch": 16,
        },
        "gpuType": SIM_GPU,
    }
    if requests is not None:
        spec["resources"] = {"requests": requests}
    return {
        "apiVersion": "stowplan.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_requests_are_stored_as_written_and_explained(installed, namespace):
    docs = [
        _doc("strings", requests={"cpu": "500m", "memory": "4Gi"}),
        _doc("numbers", requests={"cpu": 2, "memory": 1073741824}),
        _doc("fraction", requests={"cpu": "1.5", "memory": "1G"}),
    ]
    installed.run("apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump_all(docs))
    stored = {
        i["metadata"]["name"]: i["spec"]["resources"]["requests"]
        for i in installed.json("get", "im", "-n", namespace)["items"]
    }
    assert stored == {
        "strings": {"cpu": "500m", "memory": "4Gi"},
        "numbers": {"cpu": 2, "memory": 1073741824},
        "fraction": {"cpu": "1.5", "memory": "1G"},
    }
    out = installed.run("explain", "inferencemodel.spec.resources.requests").stdout
    assert "cpu" in out and "memory" in out and "500m" in out and "Host memory" in out
    out = installed.run("explain", "gpunode.status.allocatable").stdout
    assert "no limit" in out and "cpu" in out


@pytest.mark.parametrize(
    ("field", "value"),
    [("cpu", "-1"), ("memory", "lots"), ("cpu", -1), ("cpu", 1.5), ("memory", "1gi")],
    ids=["negative-cpu-string", "memory-lots", "negative-cpu-int", "cpu-float", "lowercase-gi"],
)
def test_bad_quantities_are_refused_naming_the_field(installed, namespace, field, value):
    doc = _doc("bad", requests={field: value})
    proc = installed.run(
        "apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump(doc), check=False
    )
    assert proc.returncode != 0, proc.stdout
    assert f"spec.resources.requests.{field}" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def cpu_bound_agent(
    installed, agent_kubeconfig, operator, agent_process, tmp_path_factory
) -> Iterator[Path]:
    """A real agent for NODE with 3 simulated GPUs and 1 CPU for its replicas, given the way
    manifests/base/agent.yaml gives it (limits.cpu in milli from the downward API, plus a reserve);
    yields the directory holding mlp.onnx."""
    models = tmp_path_factory.mktemp("models")
    builders.build_example("mlp", models)
    env = {
        **os.environ,
        "KUBECONFIG": str(agent_kubeconfig),
        "STOWPLAN_ALLOCATABLE_CPU": "1250m",
        "STOWPLAN_RESERVED_CPU": "250m",
        "STOWPLAN_ALLOCATABLE_MEMORY": str(8 * 1024**3),
    }
    args = ["--status-interval", "0.5", "--sim-devices", "3",
            "--models-dir", str(tmp_path_factory.mktemp("cache"))]  # fmt: skip
    with agent_process(installed, NODE, args, env, tmp_path_factory.mktemp("agent") / "agent.log"):
        yield models


def _allocatable(kubectl) -> dict | None:
    proc = kubectl.run("get", f"gpunode/{NODE}", "-o", "json", check=False)  # not there yet
    return (
        (yaml.safe_load(proc.stdout).get("status") or {}).get("allocatable")
        if proc.stdout
        else None
    )


def _status(kubectl, ns: str, name: str) -> dict:
    return kubectl.json("get", "-n", ns, f"im/{name}").get("status") or {}


def _placed(status: dict) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == "Placed"), {})


def _warning(kubectl, ns: str, name: str) -> list[dict]:
    return [
        e for e in kubectl.json("get", "events", "-n", ns)["items"]
        if e["involvedObject"]["name"] == name and e["type"] == "Warning"
        and e["reason"] == "Unplaced"
    ]  # fmt: skip


def test_cpu_requests_fill_a_node_and_the_rest_is_reported(
    installed, operator, cpu_bound_agent, namespace, wait
):
    alloc = wait(
        lambda: _allocatable(installed), timeout_s=60, what="the agent to report allocatable"
    )
    assert alloc == {"cpu": "1", "memory": "8Gi"}  # 1250m less the 250m reserve
    table = installed.run("get", "gpunode", NODE).stdout
    assert "CPU" in table.splitlines()[0] and "8Gi" in table

    # 3 GPUs but 1 CPU: two replicas of 400m fit; the third would fit an empty node of this
    # size, so it waits for capacity (NoCapacity, which also asks the autoscaler for a node)
    uri = f"file://{cpu_bound_agent / 'mlp.onnx'}"
    doc = _doc("cpu-bound", replicas=3, requests={"cpu": "400m", "memory": "1Gi"}, uri=uri)
    installed.run("apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump(doc))
    status = wait(
        lambda: (s := _status(installed, namespace, "cpu-bound"))
        and _placed(s).get("status") == "False" and s,
        what="Placed=False for the third replica",
    )  # fmt: skip
    assert _placed(status)["reason"] == "NoCapacity", status
    assert status["replicas"] == 2
    assert {p["node"] for p in status["placements"]} == {NODE}
    assert len({p["gpu"] for p in status["placements"]}) == 2
    assert [u["reason"] for u in status["unplaced"]] == ["NoCapacity"]
    events = wait(lambda: _warning(installed, namespace, "cpu-bound"), what="a Warning event")
    assert "NoCapacity" in events[0]["message"]

    # one replica asking for more CPU than the node offers at all: no new node of this size
    # helps, so the reason says so
    doc = _doc("too-hungry", requests={"cpu": "2"}, uri=uri)
    installed.run("apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump(doc))
    status = wait(
        lambda: (s := _status(installed, namespace, "too-hungry"))
        and _placed(s).get("status") == "False" and s,
        what="Placed=False for the 2-CPU replica",
    )  # fmt: skip
    assert _placed(status)["reason"] == "ResourcesExceedEveryNode", status
    assert "CPU" in status["unplaced"][0]["message"]
    events = wait(lambda: _warning(installed, namespace, "too-hungry"), what="a Warning event")
    assert "ResourcesExceedEveryNode" in events[0]["message"]

    # scaling the first model down to 2 frees nothing it needed; all placed now
    installed.run("scale", "-n", namespace, "im/cpu-bound", "--replicas=2")
    wait(
        lambda: _placed(_status(installed, namespace, "cpu-bound")).get("status") == "True",
        what="Placed=True after scaling to what fits",
    )
