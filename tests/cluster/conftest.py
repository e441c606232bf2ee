"""Fixtures for tests against a real kube-apiserver + etcd and a real kubectl.

The binaries are built from their Go modules by tools/build-kubebins.sh (cached outside the
repo); the fixture builds them when missing. One control plane per test session; a fresh
namespace per test.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from stowplan import controlplane
from stowplan.testing.localcluster import Kubectl, Operator, service_account_kubeconfig, wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def control_plane() -> Iterator[controlplane.LocalControlPlane]:
    try:
        controlplane.find_binaries()
    except controlplane.ControlPlaneError:
        subprocess.run([str(REPO / "tools" / "build-kubebins.sh")], check=True)
    with controlplane.LocalControlPlane() as cp:
        yield cp


@pytest.fixture(scope="session")
def kubectl(control_plane: controlplane.LocalControlPlane) -> Kubectl:
    return Kubectl(control_plane)


@pytest.fixture(scope="session")
def installed(kubectl: Kubectl) -> Kubectl:
    """`kubectl apply -k manifests/` done and the CRDs established."""
    kubectl.run("apply", "-k", str(REPO / "manifests"))
    kubectl.run(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/inferencemodels.stowplan.io", "crd/gpunodes.stowplan.io",
    )  # fmt: skip
    return kubectl


@pytest.fixture
def namespace(installed: Kubectl) -> Iterator[str]:
    """A fresh namespace; its InferenceModels are deleted afterwards so that they stop taking
    GPU capacity (namespaces themselves never finish deleting without a controller-manager)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    installed.run("create", "namespace", name)
    yield name
    installed.run("delete", "inferencemodels", "--all", "-n", name, "--wait=false")


@pytest.fixture(scope="session")
def wait() -> Callable[..., Any]:
    return wait_for


@pytest.fixture(scope="session")
def operator_kubeconfig(
    installed: Kubectl, control_plane: controlplane.LocalControlPlane, tmp_path_factory: Any
) -> Path:
    return service_account_kubeconfig(
        installed, control_plane, "stowplan-operator",
        tmp_path_factory.mktemp("sa") / "operator.kubeconfig",
    )  # fmt: skip


@pytest.fixture(scope="session")
def operator(operator_kubeconfig: Path, tmp_path_factory: Any) -> Iterator[Operator]:
    """The operator running as its own ServiceAccount: RBAC gaps surface as failures."""
    op = Operator(operator_kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture
def standby_operator(operator_kubeconfig: Path, tmp_path: Path) -> Iterator[Operator]:
    """A second operator replica (started by the test), stopped afterwards."""
    op = Operator(operator_kubeconfig, tmp_path / "standby.log")
    yield op
    op.stop()


@pytest.fixture(scope="session")
def agent_kubeconfig(
    installed: Kubectl, control_plane: controlplane.LocalControlPlane, tmp_path_factory: Any
) -> Path:
    return service_account_kubeconfig(
        installed, control_plane, "stowplan-agent",
        tmp_path_factory.mktemp("sa") / "agent.kubeconfig",
    )  # fmt: skip


@contextmanager
def _agent_process(
    installed: Kubectl, node: str, args: list[str], env: dict[str, str], log_path: Path
) -> Iterator[int]:
    """A real ``python -m stowplan.agent`` for ``node`` on a free local port (yielded; gRPC off
    unless ``args`` name a ``--grpc-port``); on exit
    it is stopped, its GPUNode deleted, and its log printed if it did not stop cleanly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    if "--grpc-port" not in args:  # not Triton's 8001: agents of one run would share it
        args = ["--grpc-port", "0", *args]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stowplan.agent", "--node", node,
             "--host", "127.0.0.1", "--port", str(port), *args],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        installed.run("delete", f"gpunode/{node}", "--ignore-not-found")
        if proc.returncode not in (0, -15):
            print(log_path.read_text()[-5000:])


@pytest.fixture(scope="session")
def agent_process() -> Callable[..., AbstractContextManager[int]]:
    """``agent_process(installed, node, args, env, log_path)``: see ``_agent_process``."""
    return _agent_process
