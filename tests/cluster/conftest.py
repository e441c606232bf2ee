"""Fixtures for tests against a real kube-apiserver + etcd and a real kubectl.

The binaries are built from their Go modules by tools/build-kubebins.sh (cached outside the
repo); the fixture builds them when missing. One control plane per test session; a fresh
namespace per test.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from stowplan import controlplane

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


class Kubectl:
    """Runs the real kubectl against the test control plane."""

    def __init__(self, cp: controlplane.LocalControlPlane, kubeconfig: Path | None = None) -> None:
        self.binary = str(cp.kubectl)
        self.kubeconfig = str(kubeconfig or cp.kubeconfig)

    def run(
        self, *args: str, input_: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, "--kubeconfig", self.kubeconfig, *args],
            input=input_,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)


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


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll until ``predicate()`` is truthy; return its value (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="session")
def wait() -> Callable[..., Any]:
    return wait_for


class Operator:
    """``kopf run -m stowplan.operator`` as a real subprocess (so it can be restarted)."""

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "STOWPLAN_RESYNC_S": "2",
            "STOWPLAN_LEASE_DURATION_S": "3",
            "STOWPLAN_LEASE_RENEW_S": "0.5",
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
             "-m", "stowplan.operator", "--verbose"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def passes(self) -> int:
        return len(
            re.findall(r"reconcile pass \d+ complete", self.log_path.read_text(errors="replace"))
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


def service_account_kubeconfig(
    kubectl: Kubectl, cp: controlplane.LocalControlPlane, sa: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount of manifests/ (TokenRequest API)."""
    token = kubectl.run("create", "token", sa, "-n", "stowplan-system").stdout.strip()
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: local\n  cluster:\n    server: {cp.server}\n"
        f"    certificate-authority: {cp.ca_file}\n"
        f"users:\n- name: {sa}\n  user:\n    token: {token}\n"
        f"contexts:\n- name: local\n  context: {{cluster: local, user: {sa}}}\n"
        "current-context: local\n"
    )
    return path


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
    """A real ``python -m stowplan.agent`` for ``node`` on a free local port (yielded); on exit
    it is stopped, its GPUNode deleted, and its log printed if it did not stop cleanly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
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
