"""A real autoscaler scales stowplan's GPU pool on the real node: Karpenter with its KWOK provider.

Karpenter (``sigs.k8s.io/karpenter/kwok``) and the kwok controller (``sigs.k8s.io/kwok``, which
keeps the fake nodes Ready and their pods Running) run as local processes with the admin
kubeconfig, built by ``tools/build-autoscaler.sh``. A NodePool of GPU instance types (custom
instance types with ``nvidia.com/gpu``, from ``INSTANCE_TYPES_FILE_PATH``) carries stowplan's
pool label and taint. Then, with stowplan deployed as the README says (``kubectl apply -k
manifests/overlays/local``):

1. an InferenceModel that does not fit the real node's two GPUs -> the operator's
   capacity-request pod -> kube-scheduler marks it Unschedulable (FailedScheduling) ->
   Karpenter launches a KWOK node of the cheapest fitting instance type;
2. a stowplan agent for that node runs as a local process (KWOK nodes run no containers, so
   the agent DaemonSet is kept off Karpenter's nodes) and registers its GPUNode; the replica is
   placed there and becomes Ready, the capacity-request pod is deleted, and the node carries
   both autoscalers' protection (``karpenter.sh/do-not-disrupt``, the Cluster Autoscaler's
   ``scale-down-disabled``);
3. the node, empty of pods but hosting the replica, outlives ``consolidateAfter`` several times
   over after Karpenter has marked its NodeClaim ``Consolidatable``;
4. the model deleted -> the protection removed -> Karpenter consolidates the node away (Node
   and NodeClaim gone).

Scale-up (apply -> replica Ready on the new node) and scale-down (delete -> Node gone) times are
printed. Every wait is bounded and fails with the objects' status, events and process logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stowplan import nodecluster
from stowplan.testing.localcluster import Process, free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.timeout(1200)]

SYSTEM_NS = "stowplan-system"
KARPENTER_NS = "karpenter"
MODEL_NS = "autoscale"
NODEPOOL = "stowplan-gpu"
NODECLASS = "stowplan-gpu"
CONSOLIDATE_AFTER_S = 5
#: how long a protected, Consolidatable node must survive; the same node, unprotected, must go
#: in less (asserted below), so that the survival shows the annotation at work
HOLD_S = 60
SCALE_DOWN_DISABLED = "cluster-autoscaler.kubernetes.io/scale-down-disabled"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
POOL_LABEL = "stowplan.io/gpu-node"


def _offering(price: float) -> dict[str, Any]:
    return {
        "Price": price,
        "Available": True,
        "Requirements": [
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["test-zone-a"]},
        ],
    }


#: GPU instance types for the KWOK provider (INSTANCE_TYPES_FILE_PATH); the cheapest that fits
#: a pending pod is launched
INSTANCE_TYPES = [
    {
        "name": f"gpu-{n}x-amd64-linux",
        "architecture": "amd64",
        "operatingSystems": ["linux"],
        "resources": {
            "cpu": str(4 * n),
            "memory": f"{16 * n}Gi",
            "pods": "110",
            "nvidia.com/gpu": str(n),
        },
        "offerings": [_offering(1.0 * n)],
    }
    for n in (1, 2, 4)
]


def _nodepool() -> dict[str, Any]:
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": NODEPOOL},
        "spec": {
            "disruption": {
                "consolidationPolicy": "WhenEmptyOrUnderutilized",
                "consolidateAfter": f"{CONSOLIDATE_AFTER_S}s",
                "budgets": [{"nodes": "100%"}],
            },
            "limits": {"nvidia.com/gpu": "8"},
            "template": {
                # stowplan's pool: the capacity-request pods select these labels and tolerate
                # the taint (nodecluster.NODE_LABELS / GPU_TAINT on the real node)
                "metadata": {"labels": {POOL_LABEL: "true", "nvidia.com/gpu.present": "true"}},
                "spec": {
                    "expireAfter": "Never",
                    "requirements": [
                        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                        {
                            "key": "karpenter.sh/capacity-type",
                            "operator": "In",
                            "values": ["on-demand"],
                        },
                    ],
                    "taints": [{"key": POOL_LABEL, "value": "true", "effect": "NoSchedule"}],
                    "nodeClassRef": {
                        "group": "karpenter.kwok.sh",
                        "kind": "KWOKNodeClass",
                        "name": NODECLASS,
                    },
                },
            },
        },
    }


def _build_autoscaler() -> Path:
    t0 = time.monotonic()
    r = subprocess.run(
        [str(REPO / "tools" / "build-autoscaler.sh")], capture_output=True, text=True
    )
    assert r.returncode == 0, f"build-autoscaler.sh failed:\n{r.stderr[-4000:]}"
    print(f"\nautoscaler binaries ready in {time.monotonic() - t0:.1f} s")
    return Path(r.stdout.strip().splitlines()[-1])


class Autoscaler:
    """The kwok controller and Karpenter's KWOK provider as local processes."""

    def __init__(self, kubectl: Any, bins: Path, workdir: Path) -> None:
        self.kubectl, self.bins, self.workdir = kubectl, bins, workdir
        kubeconfig = str(kubectl.nc.kubeconfig)
        types = workdir / "instance-types.json"
        types.write_text(json.dumps(INSTANCE_TYPES, indent=1))
        self.kwok = Process(
            [str(bins / "bin" / "kwok"), "--kubeconfig", kubeconfig,
             "--config", str(bins / "kwok-stages.yaml"),
             "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
             "--node-lease-duration-seconds=40", "--cidr=10.245.0.1/16",
             f"--server-address=127.0.0.1:{free_port()}"],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)},
            workdir / "kwok.log",
        )  # fmt: skip
        self.karpenter = Process(
            [str(bins / "bin" / "karpenter")],
            {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(workdir),
                "KUBECONFIG": kubeconfig,
                "SYSTEM_NAMESPACE": KARPENTER_NS,
                "DISABLE_LEADER_ELECTION": "true",
                "INSTANCE_TYPES_FILE_PATH": str(types),
                "METRICS_PORT": str(free_port()),
                "HEALTH_PROBE_PORT": str(free_port()),
                "BATCH_IDLE_DURATION": "1s",
                "BATCH_MAX_DURATION": "3s",
                "LOG_LEVEL": "debug",
            },
            workdir / "karpenter.log",
        )

    def logs(self) -> list[str]:
        return [
            f"--- karpenter log (last lines):\n{self.karpenter.log_tail(6000)}",
            f"--- kwok log (last lines):\n{self.kwok.log_tail(2000)}",
        ]

    def check_running(self) -> list[str]:
        dead = [p for p in (self.karpenter, self.kwok) if not p.running]
        return [f"{p.argv[0]} exited: see its log below" for p in dead] + (
            self.logs() if dead else []
        )


def _apply(kubectl: Any, *docs: dict[str, Any]) -> None:
    proc = kubectl.nc.kubectl_run_input(yaml.safe_dump_all(docs), "apply", "-f", "-")
    if proc.returncode != 0:
        pytest.fail(f"kubectl apply refused:\n{proc.stderr.strip()}", pytrace=False)


def _conditions(obj: dict[str, Any]) -> str:
    return ", ".join(
        f"{c.get('type')}={c.get('status')} ({c.get('reason')}: {c.get('message')})"
        for c in (obj.get("status") or {}).get("conditions", [])
    )


@pytest.fixture(scope="module")
def autoscaler(kubectl: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Autoscaler]:
    bins = _build_autoscaler()
    workdir = tmp_path_factory.mktemp("autoscaler")
    a = Autoscaler(kubectl, bins, workdir)
    kubectl.run("create", "namespace", KARPENTER_NS, check=False)
    # server-side: the CRDs are too large for client-side apply's last-applied annotation
    kubectl.run("apply", "--server-side", "-f", str(bins / "crds"))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                "crd/nodepools.karpenter.sh", "crd/nodeclaims.karpenter.sh",
                "crd/kwoknodeclasses.karpenter.kwok.sh")  # fmt: skip
    a.kwok.start()
    a.karpenter.start()
    try:
        _apply(
            kubectl,
            {
                "apiVersion": "karpenter.kwok.sh/v1alpha1",
                "kind": "KWOKNodeClass",
                "metadata": {"name": NODECLASS},
            },
            _nodepool(),
        )

        def nodepool_ready() -> bool:
            pool = kubectl.json("get", "nodepool", NODEPOOL)
            conds = {c["type"]: c for c in (pool.get("status") or {}).get("conditions", [])}
            if conds.get("NodeClassReady", {}).get("reason") == "NodeClassReadinessUnknown":
                # the KWOK provider has no NodeClass controller: what a cloud provider's
                # controller would write once its NodeClass resolved
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                status = {"status": {"conditions": [
                    {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                     "lastTransitionTime": now, "observedGeneration": 1}]}}  # fmt: skip
                kubectl.run("patch", "kwoknodeclass", NODECLASS, "--subresource=status",
                            "--type=merge", "-p", json.dumps(status))  # fmt: skip
            return conds.get("Ready", {}).get("status") == "True"

        kubectl.wait_for(
            nodepool_ready,
            120,
            f"NodePool {NODEPOOL} Ready",
            lambda: a.check_running() or [_conditions(kubectl.json("get", "nodepool", NODEPOOL))],
        )
        yield a
    finally:
        kubectl.run("delete", "nodepool", NODEPOOL, "--ignore-not-found", "--wait=false",
                    check=False)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and a.karpenter.running:
            if not kubectl.json("get", "nodeclaims")["items"]:
                break
            time.sleep(1)
        a.karpenter.stop()
        a.kwok.stop()
        # whatever Karpenter left (it finalizes NodeClaims; it is gone now)
        for claim in kubectl.json("get", "nodeclaims")["items"]:
            name = claim["metadata"]["name"]
            kubectl.run("patch", "nodeclaim", name, "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
        for n in kubectl.json("get", "nodes", "-l", "karpenter.sh/nodepool")["items"]:
            kubectl.run("patch", "node", n["metadata"]["name"], "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
            kubectl.run("delete", "node", n["metadata"]["name"], "--ignore-not-found",
                        check=False)  # fmt: skip
        kubectl.run("delete", "kwoknodeclass", NODECLASS, "--ignore-not-found", check=False)
        kubectl.run("delete", "-f", str(bins / "crds"), "--ignore-not-found", check=False)
        kubectl.run("delete", "namespace", KARPENTER_NS, "--ignore-not-found", "--wait=false",
                    check=False)  # fmt: skip


def _local_manifests(kubectl: Any) -> list[dict[str, Any]]:
    """``manifests/overlays/local`` with the agent DaemonSet kept off Karpenter's nodes: a KWOK
    node runs no containers (kwok would only pretend the agent pod runs), the test's local agent
    process is that node's agent."""
    r = kubectl.run("kustomize", str(REPO / "manifests" / "overlays" / "local"))
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    for d in docs:
        if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "stowplan-agent":
            d["spec"]["template"]["spec"]["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "karpenter.sh/nodepool", "operator": "DoesNotExist"}
                                ]
                            }
                        ]
                    }
                }
            }
    return docs


@pytest.fixture(scope="module")
def stowplan(kubectl: Any, node: nodecluster.NodeCluster) -> Iterator[Any]:
    _apply(kubectl, *_local_manifests(kubectl))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                "crd/inferencemodels.stowplan.io", "crd/gpunodes.stowplan.io")  # fmt: skip
    kubectl.run("create", "namespace", MODEL_NS, check=False)

    def operator_available() -> bool:
        dep = kubectl.json("get", "deployment", "-n", SYSTEM_NS, "stowplan-operator")
        conds = {c["type"]: c["status"] for c in dep.get("status", {}).get("conditions", [])}
        return conds.get("Available") == "True"

    kubectl.wait_for(operator_available, 240, "the operator Deployment Available",
                     lambda: kubectl.pod_problems(SYSTEM_NS))  # fmt: skip
    kubectl.wait_for(
        lambda: kubectl.run("get", "gpunode", node.node_name, check=False).returncode == 0,
        240,
        "the real node's agent pod registers its GPUNode",
        lambda: kubectl.pod_problems(SYSTEM_NS, "app.kubernetes.io/name=stowplan-agent"),
    )
    try:
        yield kubectl
    finally:
        kubectl.run("delete", "namespace", MODEL_NS, "--ignore-not-found", "--timeout=120s",
                    check=False)  # fmt: skip
        # back to the overlay exactly as a user applies it (the DaemonSet without the affinity)
        kubectl.run("apply", "-k", str(REPO / "manifests" / "overlays" / "local"), check=False)


def _agent_kubeconfig(kubectl: Any, path: Path) -> Path:
    """The stowplan-agent ServiceAccount's token (its RBAC from manifests/ is what it gets)."""
    nc = kubectl.nc
    token = kubectl.run("create", "token", "stowplan-agent", "-n", SYSTEM_NS).stdout.strip()
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: node\n  cluster:\n    server: {nc.server}\n"
        f"    certificate-authority: {nc.pki / 'ca.crt'}\n"
        f"users:\n- name: agent\n  user:\n    token: {token}\n"
        "contexts:\n- name: node\n  context: {cluster: node, user: agent}\n"
        "current-context: node\n"
    )
    return path


def _model(replicas: int) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "mlp.yaml").read_text())
    doc["metadata"]["namespace"] = MODEL_NS
    doc["spec"]["replicas"] = replicas  # replicas go on distinct GPUs; the real node has two
    return doc


def _capacity_pods(kubectl: Any) -> list[dict[str, Any]]:
    return [
        p
        for p in kubectl.json(
            "get", "pods", "-n", SYSTEM_NS, "-l", "stowplan.io/capacity-request=true"
        )["items"]
        if p["metadata"]["annotations"].get("stowplan.io/model") == f"{MODEL_NS}/mlp"
    ]


def _karpenter_nodes(kubectl: Any) -> list[dict[str, Any]]:
    return kubectl.json("get", "nodes", "-l", f"karpenter.sh/nodepool={NODEPOOL}")["items"]


def _nodeclaims(kubectl: Any) -> list[dict[str, Any]]:
    return kubectl.json("get", "nodeclaims")["items"]


def _registered_and_ready(n: dict[str, Any]) -> bool:
    """Ready, and Karpenter has registered it: the NodeClaim's taints replace its
    ``karpenter.sh/unregistered`` one."""
    taints = {t["key"] for t in n["spec"].get("taints") or []}
    ready = any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (n.get("status") or {}).get("conditions", [])
    )
    return ready and "karpenter.sh/unregistered" not in taints


def _events(kubectl: Any, name: str, namespace: str | None = None) -> list[dict[str, Any]]:
    scope = ["-n", namespace] if namespace else ["-A"]
    return kubectl.json("get", "events", *scope, "--field-selector", f"involvedObject.name={name}")[
        "items"
    ]


def _protection(kubectl: Any, node: str) -> tuple[str | None, str | None]:
    ann = kubectl.json("get", "node", node)["metadata"].get("annotations") or {}
    return ann.get(SCALE_DOWN_DISABLED), ann.get(DO_NOT_DISRUPT)


def test_karpenter_launches_a_gpu_node_for_a_model_and_consolidates_it_when_deleted(
    stowplan: Any,
    autoscaler: Autoscaler,
    node: nodecluster.NodeCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    kubectl = stowplan
    key = f"{MODEL_NS}/mlp"

    def state() -> list[str]:
        lines = autoscaler.check_running()
        for p in _capacity_pods(kubectl):
            name = p["metadata"]["name"]
            lines.append(f"pod {name} on {p['spec'].get('nodeName')}: {_conditions(p)}")
            lines += [f"  event {e['reason']}: {e['message']}"
                      for e in _events(kubectl, name, SYSTEM_NS)]  # fmt: skip
        for c in kubectl.json("get", "nodeclaims")["items"]:
            lines.append(f"nodeclaim {c['metadata']['name']}: {_conditions(c)}")
        for n in _karpenter_nodes(kubectl):
            lines.append(f"node {n['metadata']['name']}: {_conditions(n)}")
        im = kubectl.json("get", "im", "-n", MODEL_NS, "mlp") if _has_model() else {}
        lines.append(f"model: {json.dumps(im.get('status', {}))[:1500]}")
        lines += kubectl.pod_problems(SYSTEM_NS)
        return lines + autoscaler.logs()

    def _has_model() -> bool:
        return kubectl.run("get", "im", "-n", MODEL_NS, "mlp", check=False).returncode == 0

    # ---- scale up ----------------------------------------------------------------------------
    t_apply = time.monotonic()
    _apply(kubectl, _model(replicas=node.gpus + 1))
    (pod,) = kubectl.wait_for(
        lambda: _capacity_pods(kubectl), 120, "the operator's capacity-request pod", state
    )
    pod_name = pod["metadata"]["name"]
    # kube-scheduler's verdict, which is what Karpenter acts on
    failed = kubectl.wait_for(
        lambda: [e for e in _events(kubectl, pod_name, SYSTEM_NS)
                 if e["reason"] == "FailedScheduling"],
        60, "kube-scheduler's FailedScheduling for the capacity-request pod", state,
    )  # fmt: skip
    assert "Insufficient nvidia.com/gpu" in failed[0]["message"], failed[0]["message"]
    (new,) = kubectl.wait_for(
        lambda: [n for n in _karpenter_nodes(kubectl) if _registered_and_ready(n)],
        180, "a node launched by Karpenter, registered (its taints synced) and Ready", state,
    )  # fmt: skip
    new_name = new["metadata"]["name"]
    labels = new["metadata"]["labels"]
    assert labels[POOL_LABEL] == "true"
    assert labels["node.kubernetes.io/instance-type"] == "gpu-1x-amd64-linux"  # the cheapest
    assert {"key": POOL_LABEL, "value": "true", "effect": "NoSchedule"} in new["spec"]["taints"]
    allocatable = new["status"]["allocatable"]
    gpus = int(allocatable["nvidia.com/gpu"])
    t_node = time.monotonic()

    workdir = tmp_path_factory.mktemp("kwok-agent")
    agent = Process(
        [sys.executable, "-m", "stowplan.agent", "--node", new_name,
         "--host", "127.0.0.1", "--port", str(free_port()), "--grpc-port", "0",
         "--kubeconfig", str(_agent_kubeconfig(kubectl, workdir / "agent.kubeconfig")),
         "--sim-devices", str(gpus), "--status-interval", "1",
         "--allocatable-cpu", allocatable["cpu"], "--allocatable-memory", allocatable["memory"],
         "--models-dir", str(workdir / "models")],
        {**os.environ, "KUBECONFIG": str(workdir / "agent.kubeconfig")},
        workdir / "agent.log",
    )  # fmt: skip
    agent.start()
    try:

        def agent_state() -> list[str]:
            return [*state(), f"--- agent log:\n{agent.log_tail(3000)}"]

        def ready_on_new_node() -> bool:
            gn = kubectl.run("get", "gpunode", new_name, "-o", "json", check=False)
            if gn.returncode != 0:
                return False
            models = (json.loads(gn.stdout).get("status") or {}).get("models", [])
            return any(m["model"] == key and m["state"] == "Ready" for m in models)

        kubectl.wait_for(
            ready_on_new_node, 240, f"the replica Ready on {new_name} (agent process)", agent_state
        )
        t_up = time.monotonic() - t_apply
        kubectl.wait_for(lambda: not _capacity_pods(kubectl), 60,
                         "the capacity-request pod deleted", agent_state)  # fmt: skip
        kubectl.wait_for(
            lambda: _protection(kubectl, new_name) == ("true", "true"),
            60, f"{new_name} protected by both autoscalers' annotations", agent_state,
        )  # fmt: skip
        print(
            f"\nscale-up: apply -> capacity-request pod -> Karpenter node {new_name} Ready in "
            f"{t_node - t_apply:.1f} s -> replica Ready there in {t_up:.1f} s after apply"
        )

        # ---- a node hosting a replica is never consolidated -------------------------------
        # Karpenter marks its NodeClaim Consolidatable once consolidateAfter has passed without
        # a pod event (the capacity-request pod's deletion was the last); only the annotation
        # then stands between the node and consolidation
        def consolidatable() -> dict[str, Any] | None:
            for c in _nodeclaims(kubectl):
                conds = {k["type"]: k for k in (c.get("status") or {}).get("conditions", [])}
                if (c.get("status") or {}).get("nodeName") == new_name and conds.get(
                    "Consolidatable", {}
                ).get("status") == "True":
                    return c
            return None

        claim = kubectl.wait_for(
            consolidatable, 60, f"Karpenter marks {new_name}'s NodeClaim Consolidatable",
            agent_state,
        )  # fmt: skip
        held_s = HOLD_S
        deadline = time.monotonic() + held_s
        while time.monotonic() < deadline:
            assert [n["metadata"]["name"] for n in _karpenter_nodes(kubectl)] == [new_name], (
                "a node hosting a replica was removed:\n" + "\n".join(agent_state())
            )
            assert _protection(kubectl, new_name) == ("true", "true")
            time.sleep(1)
        assert [c["metadata"]["name"] for c in _nodeclaims(kubectl)] == [
            claim["metadata"]["name"]
        ], "\n".join(agent_state())
        print(
            f"node {new_name} hosting a replica kept {held_s} s after its NodeClaim became "
            f"Consolidatable (consolidateAfter {CONSOLIDATE_AFTER_S} s)"
        )

        # ---- scale down ----------------------------------------------------------------------
        t_delete = time.monotonic()
        kubectl.run("delete", "im", "-n", MODEL_NS, "mlp")
        kubectl.wait_for(
            lambda: not _karpenter_nodes(kubectl)
            or _protection(kubectl, new_name) == (None, None),
            60, f"{new_name}'s protection removed", agent_state,
        )  # fmt: skip
        t_unprotected = time.monotonic()
        kubectl.wait_for(
            lambda: not _karpenter_nodes(kubectl) and not _nodeclaims(kubectl),
            240, f"Karpenter consolidates {new_name} away (Node and NodeClaim gone)", agent_state,
        )  # fmt: skip
        t_down = time.monotonic() - t_delete
        assert time.monotonic() - t_unprotected < HOLD_S, (
            f"unprotected, the node took longer than the {HOLD_S} s a protected one was held"
        )
        print(
            f"scale-down: delete -> protection removed in {t_unprotected - t_delete:.1f} s -> "
            f"Node and NodeClaim gone in {t_down:.1f} s after delete"
        )
    finally:
        agent.stop()
        kubectl.run("delete", "gpunode", new_name, "--ignore-not-found", check=False)
