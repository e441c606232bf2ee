"""The operator end to end on a real kube-apiserver, running as its own ServiceAccount.

Two GPUNodes stand in for two GPU nodes whose agents reported their GPUs (status patched the
way an agent does); the operator places real example InferenceModels on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cluster

GPU_80G = {"memoryTotalMiB": 81920, "name": "NVIDIA A100-SXM4-80GB"}


def _register_node(kubectl, name: str, gpus: int, labels: dict[str, str] | None = None) -> None:
    node = {
        "apiVersion": "stowplan.io/v1alpha1",
        "kind": "GPUNode",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {},
    }
    kubectl.run("apply", "-f", "-", input_=yaml.safe_dump(node))
    status = {"status": {"gpus": [{"index": i, **GPU_80G} for i in range(gpus)], "gpuCount": gpus}}
    kubectl.run(
        "patch", f"gpunode/{name}", "--subresource=status", "--type=merge",
        "-p", yaml.safe_dump(status),
    )  # fmt: skip


def _create_k8s_node(kubectl, name: str) -> None:
    """A core/v1 Node object (no kubelet behind it) so that annotations can be checked."""
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.present": "true"}}}  # fmt: skip
    kubectl.run("apply", "-f", "-", input_=yaml.safe_dump(node))


@pytest.fixture(scope="module")
def fleet(installed, operator):
    """Two GPU nodes with one 80 GB GPU each; removed at the end."""
    nodes = ["gpu-node-a", "gpu-node-b"]
    for name in nodes:
        _create_k8s_node(installed, name)
        _register_node(installed, name, gpus=1)
    yield nodes
    installed.run("delete", "gpunode", *nodes, "--ignore-not-found")
    installed.run("delete", "node", *nodes, "--ignore-not-found")


def _status(kubectl, ns: str, name: str) -> dict:
    return kubectl.json("get", "-n", ns, f"im/{name}").get("status") or {}


def _condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def _assignments(kubectl, model: str) -> list[tuple[str, int, int]]:
    out = []
    for node in kubectl.json("get", "gpunodes")["items"]:
        for a in (node.get("spec") or {}).get("assignments", []):
            if a["model"] == model:
                out.append((node["metadata"]["name"], a["gpu"], a["replica"]))
    return sorted(out)


def test_example_is_placed_scaled_and_removed(installed, fleet, operator, namespace, wait):
    example = REPO / "manifests" / "examples" / "convnet.yaml"
    installed.run("apply", "-n", namespace, "-f", str(example))
    key = f"{namespace}/convnet"

    status = wait(
        lambda: (s := _status(installed, namespace, "convnet"))
        and _condition(s, "Placed").get("status") == "True"
        and s,
        timeout_s=15, what="Placed=True",
    )  # fmt: skip
    assert status["replicas"] == 2 and len(status["placements"]) == 2
    assert status["observedGeneration"] == 1
    # GitOps-friendly: the operator wrote status only; no spec change, finalizer or annotation
    meta = installed.json("get", "-n", namespace, "im/convnet")["metadata"]
    assert meta["generation"] == 1 and not meta.get("finalizers")
    assert not [a for a in meta.get("annotations", {}) if "kopf" in a or "stowplan" in a]
    assert status["selector"] == "stowplan.io/model=convnet"
    # replicas of one model on distinct GPUs; the duty cycle and batch are shown
    assert len({(p["node"], p["gpu"]) for p in status["placements"]}) == 2
    assert status["capacity"]["batchSize"] >= 1 and status["capacity"]["dutyCycleMs"] > 0
    assert len(_assignments(installed, key)) == 2

    table = installed.run("get", "-n", namespace, "im").stdout
    header = table.splitlines()[0].split()
    assert header[:4] == ["NAME", "REPLICAS", "READY", "PLACED"], table
    assert "convnet" in table and "True" in table

    # scale down through the scale subresource: one placement goes, and its assignment
    installed.run("scale", "-n", namespace, "im/convnet", "--replicas=1")
    wait(lambda: len(_assignments(installed, key)) == 1, what="one assignment after scale")
    wait(
        lambda: len(_status(installed, namespace, "convnet").get("placements", [])) == 1,
        what="one placement in status",
    )

    # a spec update (a tighter SLO) is re-planned: smaller batches, newer generation
    batch = _status(installed, namespace, "convnet")["capacity"]["batchSize"]
    installed.run("patch", "-n", namespace, "im/convnet", "--type=merge",
                  "-p", '{"spec": {"slo": {"latencyMs": 10}}}')  # fmt: skip
    status = wait(
        lambda: (
            (s := _status(installed, namespace, "convnet")).get("observedGeneration") == 3 and s
        ),
        what="observedGeneration 3 after the SLO change",
    )
    assert status["capacity"]["batchSize"] < batch
    assert status["capacity"]["dutyCycleMs"] + status["capacity"]["busyMs"] <= 10

    events = installed.json("get", "events", "-n", namespace)["items"]
    assert any(e["reason"] == "Placed" and e["involvedObject"]["name"] == "convnet"
               for e in events)  # fmt: skip

    installed.run("delete", "-n", namespace, "im/convnet")
    wait(lambda: _assignments(installed, key) == [], what="assignments removed after delete")


def test_model_that_cannot_fit_is_reported_not_crashed_on(
    installed, fleet, operator, namespace, wait
):
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "mlp.yaml").read_text())
    doc["metadata"]["name"] = "too-big"
    doc["spec"]["profile"]["memoryMiB"]["weights"] = 200_000  # more than any 80 GB GPU
    installed.run("apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump(doc))
    status = wait(
        lambda: (
            (s := _status(installed, namespace, "too-big"))
            and _condition(s, "Placed").get("status") == "False"
            and s
        ),
        what="Placed=False",
    )
    placed = _condition(status, "Placed")
    assert placed["reason"] == "MemoryExceedsEveryGPU", placed
    assert status["unplaced"][0]["reason"] == "MemoryExceedsEveryGPU"
    events = wait(
        lambda: [
            e for e in installed.json("get", "events", "-n", namespace)["items"]
            if e["reason"] == "Unplaced" and e["type"] == "Warning"
        ],
        what="a Warning event",
    )  # fmt: skip
    assert "MemoryExceedsEveryGPU" in events[0]["message"]
    assert operator.proc is not None and operator.proc.poll() is None  # still running


def test_restarted_operator_changes_nothing(installed, fleet, operator, namespace, wait):
    for example in ("convnet.yaml", "mlp.yaml", "mlp-wide-static.yaml"):
        installed.run("apply", "-n", namespace, "-f", str(REPO / "manifests/examples" / example))
    for name in ("convnet", "mlp", "mlp-wide"):
        wait(
            lambda name=name: _condition(_status(installed, namespace, name), "Placed").get(
                "status"
            ) == "True",
            what=f"{name} placed",
        )  # fmt: skip

    def versions() -> dict[str, str]:
        objs = installed.json("get", "im", "-n", namespace)["items"]
        objs += installed.json("get", "gpunodes")["items"]
        return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in objs}

    # let the operator settle (a pass that patches nothing), then restart it
    passes = operator.passes()
    wait(lambda: operator.passes() >= passes + 2, what="two more passes")
    before = versions()
    operator.stop()
    operator.start()
    passes = operator.passes()
    wait(lambda: operator.passes() >= passes + 2, timeout_s=30, what="passes after restart")
    assert versions() == before, operator.log_tail()


SCALE_DOWN_DISABLED = "cluster-autoscaler.kubernetes.io/scale-down-disabled"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"


def _capacity_pods(kubectl) -> list[dict]:
    return kubectl.json(
        "get", "pods", "-n", "stowplan-system", "-l", "stowplan.io/capacity-request=true"
    )["items"]


def _protected(kubectl, node: str) -> bool:
    annotations = kubectl.json("get", f"node/{node}")["metadata"].get("annotations") or {}
    both = (annotations.get(SCALE_DOWN_DISABLED), annotations.get(DO_NOT_DISRUPT))
    assert both in {("true", "true"), (None, None)}, f"{node}: one autoscaler's protection only"
    return both == ("true", "true")


def test_waiting_replicas_ask_the_cluster_autoscaler_for_gpus(
    installed, fleet, operator, namespace, wait
):
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "mlp.yaml").read_text())
    doc["spec"]["replicas"] = 3  # replicas go on distinct GPUs and there are two
    installed.run("apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump(doc))
    key = f"{namespace}/mlp"
    pods = wait(
        lambda: [p for p in _capacity_pods(installed)
                 if p["metadata"]["annotations"]["stowplan.io/model"] == key],
        what="a capacity-request pod",
    )  # fmt: skip
    assert len(pods) == 1
    resources = pods[0]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == "1"
    assert pods[0]["spec"]["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    # both existing nodes host replicas now: protected from scale-down
    wait(lambda: all(_protected(installed, n) for n in fleet), what="scale-down protection")

    # "the autoscaler adds a node": its agent registers; the replica lands, the pod goes
    _create_k8s_node(installed, "gpu-node-c")
    _register_node(installed, "gpu-node-c", gpus=1)
    try:
        wait(lambda: len(_assignments(installed, key)) == 3, what="third replica placed")
        wait(
            lambda: not [p for p in _capacity_pods(installed)
                         if p["metadata"]["annotations"]["stowplan.io/model"] == key],
            what="capacity-request pod removed",
        )  # fmt: skip
        wait(lambda: _protected(installed, "gpu-node-c"), what="new node protected")
        installed.run("delete", "-n", namespace, "im/mlp")
        wait(lambda: not _protected(installed, "gpu-node-c"), what="emptied node unprotected")
    finally:
        installed.run("delete", "gpunode/gpu-node-c", "node/gpu-node-c", "--ignore-not-found")


def test_a_standby_operator_takes_over_when_the_leader_stops(
    installed, fleet, operator, standby_operator, namespace, wait
):
    standby = standby_operator
    standby.start()
    try:
        installed.run("apply", "-n", namespace, "-f",
                      str(REPO / "manifests" / "examples" / "mlp-wide-static.yaml"))  # fmt: skip
        key = f"{namespace}/mlp-wide"
        wait(lambda: len(_assignments(installed, key)) == 1, what="placed by the leader")
        assert standby.passes() == 0, "a standby must not run passes while the leader lives"

        operator.stop()
        installed.run("scale", "-n", namespace, "im/mlp-wide", "--replicas=0")
        wait(lambda: _assignments(installed, key) == [], timeout_s=30, what="standby took over")
        wait(lambda: standby.passes() > 0, what="the standby's pass to complete")
    finally:
        operator.start()  # back to the fixture's operator for later tests


def test_each_model_gets_a_service_and_a_slice_of_its_ready_agents(
    installed, fleet, operator, namespace, wait
):
    """The operator (as its ServiceAccount: the RBAC grants are enough) keeps a Service of the
    model's name, owned by it, and an EndpointSlice listing only agents that report a Ready
    replica; status.url names the Service."""
    installed.run("apply", "-n", namespace, "-f", str(REPO / "manifests/examples/mlp.yaml"))
    key = f"{namespace}/mlp"
    where = wait(lambda: _assignments(installed, key), what="mlp assigned")
    svc = wait(
        lambda: installed.run("get", "-n", namespace, "svc/mlp", "-o", "json", check=False).stdout,
        what="the model's Service",
    )
    svc = yaml.safe_load(svc)
    im = installed.json("get", "-n", namespace, "im/mlp")
    owner = svc["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "InferenceModel",
        "mlp",
        im["metadata"]["uid"],
    )
    assert "selector" not in svc["spec"] and svc["spec"]["ports"][0]["port"] == 8000
    assert im["status"]["url"] == f"http://mlp.{namespace}.svc:8000/v2/models/mlp"

    def slice_ips() -> list[str]:
        items = installed.json(
            "get", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=mlp"
        )["items"]
        return sorted(ip for s in items for e in s.get("endpoints") or [] for ip in e["addresses"])

    wait(
        lambda: (
            installed.run("get", "-n", namespace, "endpointslice/mlp", check=False).returncode == 0
        ),
        what="the model's EndpointSlice",
    )
    assert slice_ips() == []  # nothing Ready yet
    node, gpu, replica = where[0]
    ip = {"gpu-node-a": "10.244.7.1", "gpu-node-b": "10.244.7.2"}[node]
    report = {"status": {"endpoint": f"http://{ip}:8000", "models": [
        {"model": key, "replica": replica, "gpu": gpu, "state": "Ready"}]}}  # fmt: skip
    installed.run("patch", f"gpunode/{node}", "--subresource=status", "--type=merge",
                  "-p", yaml.safe_dump(report))  # fmt: skip
    wait(lambda: slice_ips() == [ip], what=f"{ip} in the slice once Ready")
    table = installed.run("get", "-n", namespace, "im", "mlp").stdout
    assert f"http://mlp.{namespace}.svc:8000/v2/models/mlp" in table, table
    clear = {"status": {"endpoint": "", "models": []}}
    installed.run("delete", "-n", namespace, "im/mlp")
    wait(lambda: _assignments(installed, key) == [], what="assignments removed after delete")
    installed.run("patch", f"gpunode/{node}", "--subresource=status", "--type=merge",
                  "-p", yaml.safe_dump(clear))  # fmt: skip
