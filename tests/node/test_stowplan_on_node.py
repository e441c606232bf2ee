"""stowplan deployed on a real node: exactly what the README's cluster section tells a user to do.

``kubectl apply -k manifests/overlays/local`` -> the operator Deployment Available with both
replicas (one holds the Lease), the namespace enforcing the restricted Pod Security Standard with
every pod passing it, the agent DaemonSet pod on the GPU node with its GPUNode registered; then
``kubectl apply -f manifests/examples/`` -> every example Ready and answering inference from
inside the agent pod and, by pod IP, from the node's network namespace (after ``ip route get``
shows the address is on the node). Refused manifests fail with the cluster's own reason.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from stowplan import nodecluster

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.timeout(1200)]  # first: builds
NS = "stowplan-system"
CLIENT = Path(__file__).with_name("infer_client.py")
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def _examples() -> list[str]:
    import yaml

    return [yaml.safe_load(p.read_text())["metadata"]["name"] for p in EXAMPLES]


@pytest.fixture(scope="module")
def deployed(kubectl: Any) -> Any:
    kubectl.run("apply", "-k", str(REPO / "manifests" / "overlays" / "local"))
    kubectl.run(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/inferencemodels.stowplan.io",
        "crd/gpunodes.stowplan.io",
    )
    return kubectl


def test_operator_available_with_two_replicas_one_leading(deployed: Any) -> None:
    def available() -> bool:
        dep = deployed.json("get", "deployment", "-n", NS, "stowplan-operator")
        conds = {c["type"]: c["status"] for c in dep.get("status", {}).get("conditions", [])}
        return conds.get("Available") == "True" and dep["status"].get("readyReplicas") == 2

    deployed.wait_for(
        available,
        240,
        "operator Deployment Available with 2 ready replicas",
        lambda: deployed.pod_problems(NS, "app.kubernetes.io/name=stowplan-operator"),
    )
    pods = [
        p["metadata"]["name"]
        for p in deployed.json(
            "get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=stowplan-operator"
        )["items"]
    ]
    holder = deployed.wait_for(
        lambda: (
            deployed.json("get", "lease", "-n", NS, "stowplan-operator")
            .get("spec", {})
            .get("holderIdentity")
        ),
        60,
        "the operator Lease held",
    )
    assert holder in pods, (holder, pods)


def test_namespace_enforces_restricted_and_every_pod_passes(deployed: Any) -> None:
    labels = deployed.json("get", "namespace", NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # the API server re-evaluates every existing pod of the namespace against the level
    r = deployed.run(
        "label",
        "--dry-run=server",
        "--overwrite",
        "namespace",
        NS,
        "pod-security.kubernetes.io/enforce=restricted",
    )
    assert "violate" not in r.stderr, r.stderr
    pods = deployed.json("get", "pods", "-n", NS)["items"]
    assert len(pods) >= 3, [p["metadata"]["name"] for p in pods]


def test_agent_runs_on_the_gpu_node_and_registers(
    deployed: Any, node: nodecluster.NodeCluster
) -> None:
    def running() -> dict | None:
        pods = deployed.json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=stowplan-agent")
        ready = [
            p
            for p in pods["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]
        return ready[0] if ready else None

    pod = deployed.wait_for(
        running,
        240,
        "the agent DaemonSet pod Ready",
        lambda: deployed.pod_problems(NS, "app.kubernetes.io/name=stowplan-agent"),
    )
    assert pod["spec"]["nodeName"] == node.node_name
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == str(node.gpus)  # the scheduler's accounting is true
    gn = deployed.wait_for(
        lambda: deployed.run("get", "gpunode", node.node_name, "-o", "json", check=False).stdout,
        60,
        "the agent's GPUNode",
    )
    status = json.loads(gn).get("status", {})
    assert status.get("endpoint", "").startswith(f"http://{pod['status']['podIP']}:")


def _agent_pod(kubectl: Any) -> dict:
    pods = kubectl.json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=stowplan-agent")
    return pods["items"][0]


def test_examples_ready_and_served(deployed: Any, node: nodecluster.NodeCluster) -> None:
    test_agent_runs_on_the_gpu_node_and_registers(deployed, node)
    names = _examples()
    t0 = time.monotonic()
    deployed.run("apply", "-f", str(REPO / "manifests" / "examples"))

    def all_ready() -> bool:
        items = deployed.json("get", "inferencemodels", "-n", "default")["items"]
        ready = {
            i["metadata"]["name"]
            for i in items
            if (i.get("status") or {}).get("readyReplicas") == i["spec"]["replicas"]
        }
        return set(names) <= ready

    def why() -> list[str]:
        return [
            f"{i['metadata']['name']}: {c.get('type')}={c.get('status')} "
            f"{c.get('reason')}: {c.get('message')}"
            for i in deployed.json("get", "inferencemodels", "-n", "default")["items"]
            for c in (i.get("status") or {}).get("conditions", [])
        ] + deployed.pod_problems(NS)

    deployed.wait_for(all_ready, 300, f"every example Ready ({', '.join(names)})", why)
    print(f"kubectl apply -f manifests/examples/ -> all Ready in {time.monotonic() - t0:.1f} s")
    pod = _agent_pod(deployed)
    pod_ip = pod["status"]["podIP"]
    script = CLIENT.read_text()
    for name in names:
        inside = subprocess.run(
            [
                str(node.kubectl),
                "--kubeconfig",
                str(node.kubeconfig),
                "exec",
                "-i",
                "-n",
                NS,
                pod["metadata"]["name"],
                "--",
                "python3",
                "-",
                "http://127.0.0.1:8000",
                name,
                "3",
            ],
            input=script,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert inside.returncode == 0, (
            f"{name} inside the agent pod: {inside.stdout}{inside.stderr}"
        )
        assert node.route_is_local(pod_ip), f"{pod_ip} would leave the node's namespace"
        outside = node.in_netns(["python3", str(CLIENT), f"http://{pod_ip}:8000", name, "3"], 120)
        assert outside.returncode == 0, f"{name} via {pod_ip}: {outside.stdout}{outside.stderr}"


def _slice_ips(kubectl: Any, name: str, namespace: str = "default") -> list[str]:
    items = kubectl.json(
        "get", "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={name}"
    )["items"]
    return sorted(ip for s in items for e in s.get("endpoints") or [] for ip in e["addresses"])


def _client_pod(kubectl: Any, image: str) -> str:
    """A pod of the agent image (it has python3) that only sleeps: a client inside the cluster."""
    name = "client"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"key": "stowplan.io/gpu-node", "operator": "Exists"}],
            "containers": [
                {
                    "name": "c",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", "import time; time.sleep(3600)"],
                }
            ],
        },
    }
    path = kubectl.nc.d / "client.json"
    path.write_text(json.dumps(pod))
    kubectl.run("apply", "-f", str(path))
    kubectl.run("wait", "--for=condition=Ready", "--timeout=120s", f"pod/{name}", "-n", "default")
    return name


def test_each_model_answers_through_its_service(
    deployed: Any, node: nodecluster.NodeCluster
) -> None:
    """Item 4: every example has a Service of its name (owned by it), an EndpointSlice with the
    agent's pod IP, a status.url, and answers through its ClusterIP from the node's network
    namespace (after ``ip route get`` shows no gateway) and from a client pod."""
    agent = _agent_pod(deployed)
    image = agent["spec"]["containers"][0]["image"]
    client = _client_pod(deployed, image)
    script = CLIENT.read_text()
    for name in _examples():
        im = deployed.json("get", "inferencemodel", "-n", "default", name)
        url = im["status"]["url"]
        assert url == f"http://{name}.default.svc:8000/v2/models/{name}", url
        svc = deployed.json("get", "service", "-n", "default", name)
        assert svc["metadata"]["ownerReferences"][0]["uid"] == im["metadata"]["uid"]
        deployed.wait_for(
            lambda name=name: _slice_ips(deployed, name) == [agent["status"]["podIP"]],
            60,
            f"{name}'s EndpointSlice listing the agent",
        )
        ip = svc["spec"]["clusterIP"]
        target = f"http://{ip}:8000/v2/models/{name}"
        assert node.route_is_local(ip), f"{ip} would leave the node's namespace"
        t0 = time.monotonic()
        host = node.in_netns(["python3", str(CLIENT), target, name, "5"], 120)
        assert host.returncode == 0, f"{name} via {ip} from the node: {host.stdout}{host.stderr}"
        inside = deployed.nc.kubectl_run_input(
            script, "exec", "-i", "-n", "default", client, "--", "python3", "-", target, name, "5"
        )
        assert inside.returncode == 0, f"{name} via {ip} from a pod: {inside.stdout}{inside.stderr}"
        print(f"{name}: {url} -> {ip}, 10 requests in {time.monotonic() - t0:.1f} s")
    table = deployed.run("get", "inferencemodels", "-n", "default").stdout
    assert "URL" in table.splitlines()[0] and "http://mlp.default.svc:8000" in table, table


def test_scale_down_under_load_fails_no_request(
    deployed: Any, node: nodecluster.NodeCluster
) -> None:
    """A client looping on convnet's ClusterIP while it is scaled 2 -> 1 (both replicas on the
    one agent here) sees every request answered."""
    name = "convnet"
    ip = deployed.json("get", "service", "-n", "default", name)["spec"]["clusterIP"]
    assert node.route_is_local(ip)
    loop = subprocess.Popen(
        node.netns_cmd(["python3", str(CLIENT), f"http://{ip}:8000/v2/models/{name}", name, "400"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        deployed.run("scale", "-n", "default", f"inferencemodel/{name}", "--replicas=1")
        deployed.wait_for(
            lambda: (
                deployed.json("get", "inferencemodel", "-n", "default", name)["status"].get(
                    "replicas"
                )
                == 1
                and len(
                    [
                        m
                        for m in deployed.json("get", "gpunode", node.node_name)["status"]["models"]
                        if m["model"] == f"default/{name}"
                    ]
                )
                == 1
            ),
            120,
            "convnet down to one replica on the agent",
        )
        out, err = loop.communicate(timeout=300)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    assert loop.returncode == 0 and not summary.get("failed"), f"{out}{err}"
    ok, shed = summary.get("ok"), summary.get("shed")
    print(f"scale-down under load: {ok} answered, {shed} shed past their SLO, none failed")


def _scheduler_verdict(kubectl: Any, tolerate: bool) -> str:
    """The scheduler's Unschedulable message for a foreign pod asking for one nvidia.com/gpu
    (tolerating the stowplan taint or not); fails if the pod is scheduled."""
    name = f"foreign-{uuid.uuid4().hex[:6]}"
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": "c",
                "image": "registry.k8s.io/pause:3.10",
                "imagePullPolicy": "Never",
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }
        ],
    }
    if tolerate:
        spec["tolerations"] = [{"key": "stowplan.io/gpu-node", "operator": "Exists"}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    proc = kubectl.nc.kubectl_run_input(json.dumps(pod), "apply", "-n", "default", "-f", "-")
    assert proc.returncode == 0, proc.stderr

    def verdict() -> str | None:
        got = kubectl.json("get", "pod", "-n", "default", name)
        assert not got["spec"].get("nodeName"), f"{name} was scheduled onto a stowplan GPU node"
        conds = got.get("status", {}).get("conditions", [])
        return next((c["message"] for c in conds if c.get("reason") == "Unschedulable"), None)

    try:
        msg: str = kubectl.wait_for(verdict, 60, f"the scheduler's verdict on {name}")
        return msg
    finally:
        kubectl.run("delete", "pod", "-n", "default", name, "--wait=false", check=False)


def test_a_foreign_gpu_pod_does_not_land_on_the_stowplan_node(
    deployed: Any, node: nodecluster.NodeCluster
) -> None:
    """Item 5: the node carries stowplan's label and taint; the agent (tolerating it) holds
    every GPU through nvidia.com/gpu. A foreign GPU pod is refused by the taint, and one that
    tolerates the taint is refused for lack of GPUs: the scheduler's accounting is true."""
    test_agent_runs_on_the_gpu_node_and_registers(deployed, node)
    k8s_node = deployed.json("get", "node", node.node_name)
    assert k8s_node["metadata"]["labels"]["stowplan.io/gpu-node"] == "true"
    assert {"key": "stowplan.io/gpu-node", "value": "true", "effect": "NoSchedule"} in k8s_node[
        "spec"
    ]["taints"]
    refused = _scheduler_verdict(deployed, tolerate=False)
    assert "untolerated taint" in refused, refused
    refused = _scheduler_verdict(deployed, tolerate=True)
    assert "Insufficient nvidia.com/gpu" in refused, refused
    print(f"foreign nvidia.com/gpu pods: {refused}")


def test_a_pss_violation_fails_with_the_admission_reason(deployed: Any) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": NS},
        "spec": {
            # (privileged: true is refused before admission: the API server runs with
            # --allow-privileged=false)
            "hostNetwork": True,
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    path = deployed.nc.d / "privileged.json"
    path.write_text(json.dumps(pod))
    with pytest.raises(pytest.fail.Exception) as refused:
        deployed.run("apply", "-f", str(path))
    assert 'violates PodSecurity "restricted:latest"' in str(refused.value), refused.value
    assert "hostNetwork=true" in str(refused.value), refused.value


def test_a_missing_image_fails_with_the_kubelet_reason(deployed: Any) -> None:
    name, ns = "noimage", f"t-{uuid.uuid4().hex[:6]}"
    deployed.run("create", "namespace", ns)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"key": "stowplan.io/gpu-node", "operator": "Exists"}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "c",
                    "image": "localhost/stowplan/nope:dev",
                    "imagePullPolicy": "Never",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    path = deployed.nc.d / f"{name}.json"
    path.write_text(json.dumps(pod))
    deployed.run("apply", "-f", str(path))
    try:
        with pytest.raises(pytest.fail.Exception) as refused:
            deployed.wait_for(
                lambda: False, 60, f"pod {name} running", lambda: deployed.pod_problems(ns)
            )
        assert "ErrImageNeverPull" in str(refused.value), refused.value
        assert "localhost/stowplan/nope:dev" in str(refused.value)
    finally:
        deployed.run("delete", "namespace", ns, "--wait=false", check=False)


def test_deleting_a_model_deletes_its_service(deployed: Any) -> None:
    """The Service and EndpointSlice are owned by the InferenceModel: the garbage collector
    (kube-controller-manager) deletes them with it."""
    name = "mlp-wide"
    assert deployed.run("get", "service", "-n", "default", name, check=False).returncode == 0
    deployed.run("delete", "inferencemodel", "-n", "default", name)
    deployed.wait_for(
        lambda: (
            deployed.run("get", "service", "-n", "default", name, check=False).returncode != 0
            and not _slice_ips(deployed, name)
        ),
        60,
        f"{name}'s Service and EndpointSlice garbage-collected",
    )
