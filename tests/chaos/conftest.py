"""Fixtures for the chaos suite: a control plane of its own (the tests kill it), the manifests
applied, two operator replicas and three real agents (simulated devices, real ONNX models),
each a subprocess that a test may SIGKILL and start again.

Settings are the fault-tolerance ones the issue names: ``staleAfter`` 10 s, agents heartbeating
every second, a 3 s Lease renewed every 0.5 s, a 2 s resync.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stowplan import controlplane
from stowplan.models import builders
from stowplan.testing.localcluster import Agent, Kubectl, Operator, service_account_kubeconfig

REPO = Path(__file__).resolve().parents[2]
STALE_AFTER_S = 10
AGENTS = ("chaos-node-a", "chaos-node-b", "chaos-node-c")


@pytest.fixture(scope="session")
def chaos_plane(tmp_path_factory: Any) -> Iterator[controlplane.LocalControlPlane]:
    try:
        controlplane.find_binaries()
    except controlplane.ControlPlaneError:
        subprocess.run([str(REPO / "tools" / "build-kubebins.sh")], check=True)
    with controlplane.LocalControlPlane() as cp:
        yield cp


@pytest.fixture(scope="session")
def kubectl(chaos_plane: controlplane.LocalControlPlane) -> Kubectl:
    k = Kubectl(chaos_plane)
    k.run("apply", "-k", str(REPO / "manifests"))
    k.run(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/inferencemodels.stowplan.io", "crd/gpunodes.stowplan.io",
    )  # fmt: skip
    k.run("create", "namespace", "chaos")
    return k


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = tmp_path_factory.mktemp("models")
    builders.build_all(directory)
    return directory


@pytest.fixture(scope="session")
def operators(
    kubectl: Kubectl, chaos_plane: controlplane.LocalControlPlane, tmp_path_factory: Any
) -> Iterator[list[Operator]]:
    """Two replicas as the operator's ServiceAccount; the first one started leads."""
    kc = service_account_kubeconfig(
        kubectl, chaos_plane, "stowplan-operator", tmp_path_factory.mktemp("sa") / "op.kubeconfig"
    )
    logs = tmp_path_factory.mktemp("operators")
    ops = [
        Operator(
            kc,
            logs / f"operator-{i}.log",
            STOWPLAN_NODE_STALE_AFTER_S=str(STALE_AFTER_S),
            STOWPLAN_API_TIMEOUT_S="5",
            STOWPLAN_RETRY_BACKOFF_S="0.5,1,2",
            STOWPLAN_MOVE_TIMEOUT_S="30",
            POD_NAME=f"operator-{i}",
        )
        for i in range(2)
    ]
    for op in ops:
        op.start()
    yield ops
    for op in ops:
        op.stop()


@pytest.fixture(scope="session")
def agents(
    kubectl: Kubectl, chaos_plane: controlplane.LocalControlPlane, tmp_path_factory: Any
) -> Iterator[dict[str, Agent]]:
    kc = service_account_kubeconfig(
        kubectl, chaos_plane, "stowplan-agent", tmp_path_factory.mktemp("sa") / "agent.kubeconfig"
    )
    logs = tmp_path_factory.mktemp("agents")
    out = {
        node: Agent(
            node,
            [
                "--kubeconfig",
                str(kc),
                "--status-interval",
                "1",
                "--sim-devices",
                "1",
                "--intra-op-threads",
                "1",
                "--models-dir",
                str(tmp_path_factory.mktemp(node)),
            ],
            {**os.environ, "KUBECONFIG": str(kc)},
            logs / f"{node}.log",
        )
        for node in AGENTS
    }
    for agent in out.values():
        agent.start()
    yield out
    for agent in out.values():
        agent.stop()
