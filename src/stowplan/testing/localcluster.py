"""Helpers for tests against the real local control plane (:mod:`stowplan.controlplane`):
kubectl, ServiceAccount kubeconfigs, and the operator and agents as real subprocesses that can
be stopped, killed with SIGKILL and started again.

Callers: ``tests/cluster/conftest.py`` and ``tests/chaos/conftest.py`` (tests cannot import
each other). Nothing here fakes the API server; use :mod:`.cluster` for unit tests. Imported by
tests only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stowplan import controlplane


class Kubectl:
    """Runs the real kubectl against the test control plane."""

    def __init__(self, cp: controlplane.LocalControlPlane, kubeconfig: Path | None = None) -> None:
        self.binary = str(cp.kubectl)
        self.kubeconfig = str(kubeconfig or cp.kubeconfig)

    def run(
        self, *args: str, input_: str | None = None, check: bool = True, timeout_s: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, "--kubeconfig", self.kubeconfig, *args],
            input=input_,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)


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


class Process:
    """One subprocess with its log file; start, stop (SIGTERM), kill (SIGKILL), start again."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv, self.env, self.log_path = argv, env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=log)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no cleanup of any kind."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 5000) -> str:
        return self.log()[-chars:]


class Operator(Process):
    """``kopf run -m stowplan.operator`` as a real subprocess; ``env`` overrides settings."""

    def __init__(self, kubeconfig: Path, log_path: Path, **env: str) -> None:
        super().__init__(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
             "-m", "stowplan.operator", "--verbose"],
            {
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "STOWPLAN_RESYNC_S": "2",
                "STOWPLAN_LEASE_DURATION_S": "3",
                "STOWPLAN_LEASE_RENEW_S": "0.5",
                **env,
            },
            log_path,
        )  # fmt: skip

    def passes(self) -> int:
        return len(re.findall(r"reconcile pass \d+ (?:\(\w+\) )?complete", self.log()))

    def leading(self) -> bool:
        return "leading (lease" in self.log()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent(Process):
    """``python -m stowplan.agent`` for ``node`` on fixed free local ports (HTTP and gRPC)."""

    def __init__(self, node: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.node, self.port, self.grpc_port = node, free_port(), free_port()
        super().__init__(
            [sys.executable, "-m", "stowplan.agent", "--node", node,
             "--host", "127.0.0.1", "--port", str(self.port),
             "--grpc-port", str(self.grpc_port), *args],
            env,
            log_path,
        )  # fmt: skip
