"""A real local Kubernetes control plane: etcd + kube-apiserver on loopback, plus kubectl.

Used by the test suite (a session fixture) and by ``stowplan controlplane`` so that a user can
try the operator without a cluster. The binaries are built from their Go modules by
``tools/build-kubebins.sh`` and cached outside the repository (``$KUBEBINS_DIR``, default
``~/.cache/stowplan/kubebins/v1.36.3``). There is no controller-manager, scheduler or kubelet:
objects are stored, validated and watched, but no pods run.

This module starts and stops processes and writes a kubeconfig; it knows nothing of stowplan's
resources.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

K8S_VERSION = "v1.36.3"
DEFAULT_BIN_DIR = Path("~/.cache/stowplan/kubebins") / K8S_VERSION
BINARIES = ("etcd", "kube-apiserver", "kubectl")


class ControlPlaneError(RuntimeError):
    """The control plane could not be found, started or reached."""


def bin_dir() -> Path:
    return Path(os.environ.get("KUBEBINS_DIR", str(DEFAULT_BIN_DIR))).expanduser()


def find_binaries() -> dict[str, Path]:
    """Paths of etcd, kube-apiserver and kubectl; raises when one is missing."""
    root = bin_dir()
    paths = {name: root / name for name in BINARIES}
    missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
    if missing:
        raise ControlPlaneError(
            f"missing {', '.join(missing)}; build them with tools/build-kubebins.sh "
            "(a few minutes, once; cached outside the repo)"
        )
    return paths


_COMPONENTS = ("etcd", "kube-apiserver")  # in the order of LocalControlPlane._procs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalControlPlane:
    """etcd + kube-apiserver on 127.0.0.1 with a static admin token and RBAC enabled.

    ``with LocalControlPlane() as cp:`` starts both and writes ``cp.kubeconfig``; leaving the
    block stops them and removes the working directory (unless ``workdir`` was given).
    """

    workdir: Path | None = None
    start_timeout_s: float = 90.0
    api_port: int = 0
    admin_token: str = field(default_factory=lambda: secrets.token_hex(24))
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    _cmds: list[list[str]] = field(default_factory=list, init=False)
    _owns_workdir: bool = field(default=False, init=False)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pki" / "apiserver.crt"

    @property
    def log_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "control-plane.log"

    @property
    def kubectl(self) -> Path:
        return find_binaries()["kubectl"]

    def start(self) -> LocalControlPlane:
        bins = find_binaries()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="stowplan-kube-"))
            self._owns_workdir = True
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        etcd_port, peer_port = _free_port(), _free_port()
        self.api_port = self.api_port or _free_port()
        sa_key = d / "sa.key"
        if not sa_key.exists():
            subprocess.run(
                ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True
            )
        (d / "tokens.csv").write_text(f'{self.admin_token},admin,admin-uid,"system:masters"\n')
        log = self.log_file.open("ab")
        etcd_cmd = [
            str(bins["etcd"]),
            f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        api_cmd = [
            str(bins["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            f"--cert-dir={d / 'pki'}",
            "--service-cluster-ip-range=10.0.0.0/16",  # a Service per model: room for 65k
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            f"--token-auth-file={d / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ]
        self._cmds = [etcd_cmd, api_cmd]
        try:
            self._procs.append(subprocess.Popen(etcd_cmd, stdout=log, stderr=log))
            self._procs.append(subprocess.Popen(api_cmd, stdout=log, stderr=log))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._write_kubeconfig()
        return self

    def kill(self, component: str) -> None:
        """SIGKILL ``etcd`` or ``kube-apiserver``, as a crash would (fault-injection tests)."""
        proc = self._procs[_COMPONENTS.index(component)]
        proc.kill()
        proc.wait()

    def restart(self, component: str) -> None:
        """Start a killed component again on the same port with the same data and
        certificates; returns when the API server is ready again."""
        i = _COMPONENTS.index(component)
        if self._procs[i].poll() is None:
            raise ControlPlaneError(f"{component} is still running")
        with self.log_file.open("ab") as log:
            self._procs[i] = subprocess.Popen(self._cmds[i], stdout=log, stderr=log)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            for name, proc in zip(_COMPONENTS, self._procs, strict=False):
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {proc.returncode}:\n{self._log_tail()}"
                    )
            if self.ca_file.exists() and self._readyz():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"kube-apiserver not ready:\n{self._log_tail()}")
            time.sleep(0.5)

    def _readyz(self) -> bool:
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            req = urllib.request.Request(
                f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, ssl.SSLError, urllib.error.URLError):
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: local\n  cluster:\n    server: {self.server}\n"
            f"    certificate-authority: {self.ca_file}\n"
            f"users:\n- name: admin\n  user:\n    token: {self.admin_token}\n"
            "contexts:\n- name: local\n"
            "  context: {cluster: local, user: admin, namespace: default}\n"
            "current-context: local\n"
        )

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
