"""A real single-node Kubernetes cluster inside its own network namespace.

etcd, kube-apiserver (PodSecurity admission, NodeRestriction, Node+RBAC authorization),
kube-controller-manager, kube-scheduler, kube-proxy (iptables mode), containerd v2 + runc, the
CNI bridge and one kubelet, all started with ``nsenter --net`` into a namespace that has no
route out of the machine: a veth with a TEST-NET address for the node, the pod bridge for the pod
CIDR (a ``blackhole`` route under it) and an on-link route for the Service CIDR through that
veth, whose peer is in the namespace too (kube-proxy's DNAT rewrites ClusterIPs to pod IPs).
The API server is reached from the root namespace through two socat processes bridged over a
unix socket (``127.0.0.1:<port>`` in the root namespace only).

The Node carries the GPU node labels, the stowplan taint and an ``nvidia.com/gpu`` capacity for
its simulated GPUs (patched into the Node status, as the Kubernetes docs advertise an extended
resource; there is no device plugin). The operator and agent images (``tools/build-images.sh``)
and the pause image (``tools/build-nodebins.sh``) are imported into containerd; pods use them
with ``imagePullPolicy: Never``. Nothing is ever pulled.

``stop()`` undoes everything ``start()`` did: processes by PID (containers and shims found
through their cgroups and the shim binary's path), mounts under the workdir and the CNI netns
files, the network namespace, the kubepods cgroups, the host sysctls kubelet rewrote, and the
paths outside the workdir that did not exist before.

Callers: ``stowplan cluster`` (:mod:`stowplan.commands.cluster`) and the node tests
(``tests/node``). It knows nothing of stowplan's resources beyond the node labels.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
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

from stowplan import controlplane
from stowplan.api.gpunode import POOL_LABEL

NODEBINS_DIR = Path("~/.cache/stowplan/nodebins") / controlplane.K8S_VERSION
IMAGES_DIR = Path("~/.cache/stowplan/images")
NODE_BINARIES = (
    "kubelet",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
)
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
NODE_IP = "192.0.2.2"  # TEST-NET-1: never routed anywhere
POD_CIDR = "10.244.0.0/16"
NODE_POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
API_PORT_IN_NETNS = 6443
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
#: labels of a GPU node stowplan manages (the agent DaemonSet selects the first)
NODE_LABELS = {
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
    "nvidia.com/gpu.memory": "81920",
    POOL_LABEL: "true",
}
#: keeps pods that do not tolerate it (everything but stowplan's agent) off stowplan's GPUs
GPU_TAINT = f"{POOL_LABEL}=true:NoSchedule"
#: kubelet rewrites these unless protectKernelDefaults; restored on stop
HOST_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
#: paths outside the workdir that kubelet, containerd and CNI write
OUTSIDE_PATHS = (
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
)


class NodeClusterError(RuntimeError):
    """The node cluster could not be found, started or reached."""


def nodebins_dir() -> Path:
    return Path(os.environ.get("NODEBINS_DIR", str(NODEBINS_DIR))).expanduser()


def images_dir() -> Path:
    return Path(os.environ.get("IMAGES_DIR", str(IMAGES_DIR))).expanduser()


def find_node_binaries() -> dict[str, Path]:
    """Paths of every binary the node needs; raises naming the build script when one is missing."""
    paths = dict(controlplane.find_binaries())
    root = nodebins_dir()
    paths.update({name: root / "bin" / name for name in NODE_BINARIES})
    paths.update({f"cni/{name}": root / "cni" / name for name in CNI_PLUGINS})
    paths["runc"] = Path(shutil.which("runc") or "/usr/sbin/runc")
    paths["socat"] = Path(shutil.which("socat") or "/usr/bin/socat")
    missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
    if not (root / "images" / "pause-3.10.tar").is_file():
        missing.append(str(root / "images" / "pause-3.10.tar"))
    if missing:
        raise NodeClusterError(
            f"missing {', '.join(missing)}; build them with tools/build-nodebins.sh "
            "(minutes, once; cached outside the repo)"
        )
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd)


def _read_sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", *name.split(".")).write_text(value)


@dataclass
class NodeCluster:
    """One real node. ``with NodeCluster() as nc:`` starts it; leaving the block stops it.

    ``kubeconfig`` (admin, from the root namespace), ``netns`` (run clients there with
    :meth:`in_netns`), ``node_name``. ``gpus`` simulated GPUs are advertised as
    ``nvidia.com/gpu`` capacity; ``images`` are OCI archives imported into containerd.
    """

    workdir: Path | None = None
    node_name: str = "stowplan-gpu-0"
    gpus: int = 2
    images: tuple[Path, ...] = ()
    start_timeout_s: float = 180.0
    api_port: int = 0
    netns: str = field(default_factory=lambda: f"stowplan-{secrets.token_hex(3)}")
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    _owns_workdir: bool = field(default=False, init=False)
    _sysctls: dict[str, str] = field(default_factory=dict, init=False)
    _created_outside: list[str] = field(default_factory=list, init=False)
    _cni_netns_before: set[str] = field(default_factory=set, init=False)
    _tokens: dict[str, str] = field(default_factory=dict, init=False)
    _bins: dict[str, Path] = field(default_factory=dict, init=False)
    timings_s: dict[str, float] = field(default_factory=dict, init=False)

    # ---- paths -------------------------------------------------------------------------------
    @property
    def d(self) -> Path:
        assert self.workdir is not None
        return self.workdir

    @property
    def kubeconfig(self) -> Path:
        return self.d / "admin.kubeconfig"

    @property
    def kubectl(self) -> Path:
        return controlplane.find_binaries()["kubectl"]

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def pki(self) -> Path:
        return self.d / "pki"

    def log(self, name: str) -> Path:
        return self.d / "logs" / f"{name}.log"

    def netns_cmd(self, cmd: list[str]) -> list[str]:
        """``cmd`` run in the node's network namespace (and nothing else of it)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]

    def in_netns(self, cmd: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.netns_cmd(cmd), capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def route_is_local(self, ip: str) -> bool:
        """True when the node's namespace reaches ``ip`` without a gateway (and so on-machine)."""
        r = subprocess.run(
            ["ip", "-n", self.netns, "route", "get", ip], capture_output=True, text=True
        )
        return r.returncode == 0 and " via " not in r.stdout and "unreachable" not in r.stdout

    # ---- start -------------------------------------------------------------------------------
    def start(self) -> NodeCluster:
        if os.geteuid() != 0:
            raise NodeClusterError("a real node needs root (network namespace, cgroups, mounts)")
        self._bins = find_node_binaries()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="stowplan-node-"))
            self._owns_workdir = True
        self.d.mkdir(parents=True, exist_ok=True)
        (self.d / "logs").mkdir(exist_ok=True)
        t0 = time.monotonic()
        try:
            self._record_host_state()
            self._netns_up()
            self._pki()
            self._configs()
            self._start_control_plane()
            self.timings_s["apiserver_ready"] = time.monotonic() - t0
            self._start_node()
            self._import_images()
            self._wait_node_ready()
            self._advertise_gpus()
            self.timings_s["node_ready"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def _record_host_state(self) -> None:
        self._sysctls = {name: _read_sysctl(name) for name in HOST_SYSCTLS}
        self._created_outside = [p for p in OUTSIDE_PATHS if not os.path.lexists(p)]
        self._cni_netns_before = (
            set(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else set()
        )

    def _netns_up(self) -> None:
        ns = self.netns
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "link", "add", "node0", "type", "veth", "peer", "name", "node0p"])
        _run(["ip", "-n", ns, "addr", "add", f"{NODE_IP}/32", "dev", "node0"])
        _run(["ip", "-n", ns, "link", "set", "node0", "up"])
        _run(["ip", "-n", ns, "link", "set", "node0p", "up"])
        # A ClusterIP needs a route for connect() to get as far as kube-proxy's DNAT (a
        # blackhole route fails it with EINVAL first): on-link through node0, whose peer is in
        # this namespace too, so whatever kube-proxy does not rewrite goes nowhere
        _run(["ip", "-n", ns, "route", "add", SERVICE_CIDR, "dev", "node0"])
        _run(["ip", "-n", ns, "route", "add", "blackhole", POD_CIDR])

    def _pki(self) -> None:
        p = self.pki
        p.mkdir(exist_ok=True)

        def ossl(*args: str) -> None:
            _run(["openssl", *args], cwd=p)

        ossl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=stowplan-node-ca",
        )
        sans = ",".join(
            [
                "IP:127.0.0.1",
                f"IP:{NODE_IP}",
                "IP:10.96.0.1",
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
                f"DNS:{self.node_name}",
            ]
        )
        for name, subj, ext in (
            ("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}"),
            (
                "kubelet-serving",
                f"/CN={self.node_name}",
                f"subjectAltName=IP:{NODE_IP},DNS:{self.node_name}",
            ),
            ("apiserver-kubelet-client", "/CN=kube-apiserver-kubelet-client/O=system:masters", ""),
        ):
            ossl(
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                f"{name}.key",
                "-out",
                f"{name}.csr",
                "-subj",
                subj,
            )
            extfile = p / f"{name}.ext"
            extfile.write_text(ext + "\n" if ext else "basicConstraints=CA:FALSE\n")
            ossl(
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                f"{name}.crt",
                "-days",
                "30",
                "-extfile",
                extfile.name,
            )
        ossl("genrsa", "-out", "sa.key", "2048")
        users = {
            "admin": ("admin", "system:masters"),
            "kcm": ("system:kube-controller-manager", ""),
            "scheduler": ("system:kube-scheduler", ""),
            "proxy": ("system:kube-proxy", ""),
            "kubelet": (f"system:node:{self.node_name}", "system:nodes"),
        }
        lines = []
        for key, (user, group) in users.items():
            tok = secrets.token_hex(24)
            self._tokens[key] = tok
            lines.append(f'{tok},{user},{user},"{group}"' if group else f"{tok},{user},{user}")
        (p / "tokens.csv").write_text("\n".join(lines) + "\n")
        os.chmod(p / "tokens.csv", 0o600)

    def _kubeconfig(self, path: Path, server: str, token: str) -> None:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: node\n  cluster:\n    server: {server}\n"
            f"    certificate-authority: {self.pki / 'ca.crt'}\n"
            f"users:\n- name: u\n  user:\n    token: {token}\n"
            "contexts:\n- name: node\n  context: {cluster: node, user: u, namespace: default}\n"
            "current-context: node\n"
        )

    def _configs(self) -> None:
        d = self.d
        inner = f"https://127.0.0.1:{API_PORT_IN_NETNS}"
        for key in ("kcm", "scheduler", "proxy", "kubelet"):
            self._kubeconfig(d / f"{key}.kubeconfig", inner, self._tokens[key])
        self.api_port = self.api_port or _free_port()
        self._kubeconfig(self.kubeconfig, self.server, self._tokens["admin"])
        os.chmod(self.kubeconfig, 0o600)
        cni = d / "cni"
        (cni / "bin").mkdir(parents=True, exist_ok=True)
        (cni / "net.d").mkdir(exist_ok=True)
        for name in CNI_PLUGINS:
            shutil.copy2(self._bins[f"cni/{name}"], cni / "bin" / name)
        (cni / "net.d" / "10-node.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "node-net",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(cni / "ipam"),
                                "ranges": [[{"subnet": NODE_POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        c = d / "containerd"
        c.mkdir(exist_ok=True)
        runtime = (
            '      runtime_type = "io.containerd.runc.v2"\n'
            "      [{section}.options]\n"
            "        SystemdCgroup = false\n"
            f'        BinaryName = "{self._bins["runc"]}"\n'
        )
        rt = 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes'
        (c / "config.toml").write_text(
            "version = 3\n"
            f'root = "{c}/root"\nstate = "{c}/state"\n'
            f'[grpc]\n  address = "{c}/containerd.sock"\n'
            f'[ttrpc]\n  address = "{c}/containerd.sock.ttrpc"\n'
            '[metrics]\n  address = ""\n'
            '[plugins."io.containerd.cri.v1.images"]\n  snapshotter = "overlayfs"\n'
            '  [plugins."io.containerd.cri.v1.images".pinned_images]\n'
            f'    sandbox = "{PAUSE_IMAGE}"\n'
            '[plugins."io.containerd.cri.v1.runtime"]\n'
            "  enable_selinux = false\n  restrict_oom_score_adj = true\n"
            '  [plugins."io.containerd.cri.v1.runtime".containerd]\n'
            '    default_runtime_name = "runc"\n'
            # `nvidia` is the runtime class the agent DaemonSet names (the NVIDIA container
            # runtime on a real GPU node); here it is plain runc: the GPUs are simulated
            + "".join(
                f"    [{rt}.{name}]\n" + runtime.format(section=f"{rt}.{name}")
                for name in ("runc", "nvidia")
            )
            + '  [plugins."io.containerd.cri.v1.runtime".cni]\n'
            f'    bin_dirs = ["{cni}/bin"]\n    conf_dir = "{cni}/net.d"\n'
            '[plugins."io.containerd.grpc.v1.cri"]\n'
            '  stream_server_address = "127.0.0.1"\n  stream_server_port = "0"\n'
        )
        k = d / "kubelet"
        k.mkdir(exist_ok=True)
        (k / "config.yaml").write_text(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
            "address: 0.0.0.0\nport: 10250\nhealthzBindAddress: 127.0.0.1\nhealthzPort: 10248\n"
            "authentication:\n  anonymous: {enabled: false}\n  webhook: {enabled: true}\n"
            f"  x509: {{clientCAFile: {self.pki / 'ca.crt'}}}\n"
            "authorization: {mode: Webhook}\n"
            f"tlsCertFile: {self.pki / 'kubelet-serving.crt'}\n"
            f"tlsPrivateKeyFile: {self.pki / 'kubelet-serving.key'}\n"
            "cgroupDriver: cgroupfs\n"
            f"containerRuntimeEndpoint: unix://{c}/containerd.sock\n"
            f"imageServiceEndpoint: unix://{c}/containerd.sock\n"
            "failSwapOn: false\nfailCgroupV1: false\n"
            f"podLogsDir: {k}/pod-logs\n"
            "clusterDomain: cluster.local\nclusterDNS: []\nresolvConf: /etc/resolv.conf\n"
            "serializeImagePulls: false\nimageGCHighThresholdPercent: 100\n"
            "evictionHard: {}\nprotectKernelDefaults: false\nmakeIPTablesUtilChains: false\n"
            'staticPodPath: ""\nenableServer: true\nregisterNode: true\n'
            "shutdownGracePeriod: 0s\nnodeStatusReportFrequency: 10s\n"
        )
        (d / "kube-proxy.yaml").write_text(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            f"clientConnection: {{kubeconfig: {d / 'proxy.kubeconfig'}}}\n"
            f'mode: iptables\nclusterCIDR: "{POD_CIDR}"\nhostnameOverride: {self.node_name}\n'
            f"bindAddress: {NODE_IP}\n"
            'healthzBindAddress: "127.0.0.1:10256"\nmetricsBindAddress: "127.0.0.1:10249"\n'
            # requests from the node and from pods to a ClusterIP whose backend shares the bridge
            "iptables: {masqueradeAll: true}\n"
            # leave the host's conntrack sysctls alone
            "conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}\n"
        )

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = self.log(name).open("ab")
        self._procs[name] = subprocess.Popen(
            self.netns_cmd(cmd),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a Ctrl-C reaches stowplan, which stops them in order
            cwd=self.d,
        )

    def _start_control_plane(self) -> None:
        b, d, p = self._bins, self.d, self.pki
        self._spawn(
            "etcd",
            [
                str(b["etcd"]),
                f"--data-dir={d / 'etcd'}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=default=http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(b["kube-apiserver"]),
                "--etcd-servers=http://127.0.0.1:2379",
                "--bind-address=0.0.0.0",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT_IN_NETNS}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p / 'sa.key'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--token-auth-file={p / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,PodSecurity",
                "--allow-privileged=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait_apiserver()
        self._spawn(
            "kube-controller-manager",
            [
                str(b["kube-controller-manager"]),
                f"--kubeconfig={d / 'kcm.kubeconfig'}",
                f"--authentication-kubeconfig={d / 'kcm.kubeconfig'}",
                f"--authorization-kubeconfig={d / 'kcm.kubeconfig'}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--use-service-account-credentials",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                "--allocate-node-cidrs",
                f"--cluster-cidr={POD_CIDR}",
                "--node-cidr-mask-size=24",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(b["kube-scheduler"]),
                f"--kubeconfig={d / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={d / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={d / 'scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        # the root namespace reaches the API through a unix socket, never through a route
        sock = d / "api.sock"
        self._spawn(
            "socat-netns",
            [
                str(b["socat"]),
                f"UNIX-LISTEN:{sock},fork,mode=600",
                f"TCP:127.0.0.1:{API_PORT_IN_NETNS}",
            ],
        )
        log = self.log("socat-host").open("ab")
        self._procs["socat-host"] = subprocess.Popen(
            [
                str(b["socat"]),
                f"TCP-LISTEN:{self.api_port},bind=127.0.0.1,fork,reuseaddr",
                f"UNIX-CONNECT:{sock}",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait(lambda: self._readyz(self.server), "the API through the socat bridge")

    def _readyz(self, server: str) -> bool:
        try:
            ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            req = urllib.request.Request(
                f"{server}/readyz", headers={"Authorization": f"Bearer {self._tokens['admin']}"}
            )
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, ssl.SSLError, urllib.error.URLError):
            return False

    def _wait_apiserver(self) -> None:
        def ready() -> bool:
            r = self.in_netns(
                [
                    "curl",
                    "-sf",
                    "--max-time",
                    "2",
                    "--cacert",
                    str(self.pki / "ca.crt"),
                    "-H",
                    f"Authorization: Bearer {self._tokens['admin']}",
                    f"https://127.0.0.1:{API_PORT_IN_NETNS}/readyz",
                ],
                timeout_s=10,
            )
            return r.returncode == 0

        self._wait(ready, "kube-apiserver /readyz")

    def _wait(self, ok: object, what: str, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        assert callable(ok)
        while not ok():
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise NodeClusterError(
                        f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                        + self.log_tail(name)
                    )
            if time.monotonic() > deadline:
                raise NodeClusterError(f"timed out waiting for {what}")
            time.sleep(0.5)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            return self.log(name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _start_node(self) -> None:
        b, d = self._bins, self.d
        env = {**os.environ, "PATH": f"{b['containerd'].parent}:{os.environ.get('PATH', '')}"}
        c = d / "containerd"
        self._spawn("containerd", [str(b["containerd"]), "--config", str(c / "config.toml")], env)
        self._wait(
            lambda: (c / "containerd.sock").exists() and self._ctr(["version"]).returncode == 0,
            "containerd",
        )
        labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
        self._spawn(
            "kubelet",
            [
                str(b["kubelet"]),
                f"--config={d / 'kubelet' / 'config.yaml'}",
                f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                f"--root-dir={d / 'kubelet' / 'root'}",
                f"--cert-dir={d / 'kubelet' / 'pki'}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={self.node_name}",
                f"--node-labels={labels}",
                f"--register-with-taints={GPU_TAINT}",
                "--v=1",
            ],
            env,
        )
        self._spawn(
            "kube-proxy", [str(b["kube-proxy"]), f"--config={d / 'kube-proxy.yaml'}", "--v=1"]
        )

    def _ctr(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        sock = self.d / "containerd" / "containerd.sock"
        return subprocess.run(
            [str(self._bins["ctr"]), "--address", str(sock), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def _import_images(self) -> None:
        pause = nodebins_dir() / "images" / "pause-3.10.tar"
        r = self._ctr(
            ["images", "import", "--base-name", "registry.k8s.io/pause", "--digests", str(pause)]
        )
        if r.returncode != 0:
            raise NodeClusterError(f"importing the pause image failed: {r.stderr}")
        r = self._ctr(["images", "tag", "--force", self._image_ref_of(pause), PAUSE_IMAGE])
        for archive in self.images:
            t = time.monotonic()
            r = self._ctr(["images", "import", str(archive)])
            if r.returncode != 0:
                raise NodeClusterError(f"importing {archive} failed: {r.stderr}")
            self.timings_s[f"import_{archive.stem}"] = time.monotonic() - t

    def _image_ref_of(self, archive: Path) -> str:
        r = self._ctr(["images", "ls", "-q"])
        refs = [line for line in r.stdout.split() if line.startswith("registry.k8s.io/pause")]
        return refs[0] if refs else PAUSE_IMAGE

    def kubectl_run(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def kubectl_run_input(
        self, stdin: str, *args: str, timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl ARGS`` with ``stdin`` fed to it (``kubectl exec -i ... python3 -``)."""
        return subprocess.run(
            [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def _wait_node_ready(self) -> None:
        def ready() -> bool:
            r = self.kubectl_run(
                "get",
                "node",
                self.node_name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            )
            return r.stdout.strip() == "True"

        self._wait(ready, f"Node {self.node_name} Ready")

    def _advertise_gpus(self) -> None:
        patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(self.gpus)}]
        r = self.kubectl_run(
            "patch",
            "node",
            self.node_name,
            "--subresource=status",
            "--type=json",
            "-p",
            json.dumps(patch),
        )
        if r.returncode != 0:
            raise NodeClusterError(f"advertising nvidia.com/gpu failed: {r.stderr}")

        def advertised() -> bool:
            r = self.kubectl_run(
                "get",
                "node",
                self.node_name,
                "-o",
                r"jsonpath={.status.allocatable.nvidia\.com/gpu}",
            )
            return r.stdout.strip() == str(self.gpus)

        self._wait(advertised, "nvidia.com/gpu allocatable", timeout_s=60)

    # ---- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything by PID and remove what start wrote; safe to call twice."""
        for name in ("kubelet", "kube-proxy"):
            self._terminate(name)
        self._kill_containers()
        for name in reversed(list(self._procs)):
            self._terminate(name)
        self._procs.clear()
        self._unmount_all()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        self._remove_cgroups()
        for name, value in self._sysctls.items():
            if _read_sysctl(name) != value:
                _write_sysctl(name, value)
        for path in self._created_outside:
            shutil.rmtree(path, ignore_errors=True)
        if self.workdir is not None:
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:  # keep the logs and nothing else
                for entry in self.workdir.iterdir():
                    if entry.name in ("logs", "cluster.pid"):
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)

    def _terminate(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _kill_containers(self) -> None:
        """Every process in a kubepods cgroup, and every shim started from our binary."""
        pids: set[int] = set()
        shim = str(self._bins.get("containerd-shim-runc-v2", ""))
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                cgroup = (proc_dir / "cgroup").read_text()
                exe = os.readlink(proc_dir / "exe") if shim else ""
            except OSError:
                continue
            if "/kubepods" in cgroup or (shim and exe == shim):
                pids.add(int(proc_dir.name))
        pids.discard(os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists()}
            time.sleep(0.1)

    def _unmount_all(self) -> None:
        roots = [str(self.d)] if self.workdir is not None else []
        roots += [p for p in self._created_outside if p != "/var/lib/cni"]
        netns_dir = "/run/netns/"
        points: list[str] = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if any(mp == r or mp.startswith(r + "/") for r in roots) or (
                mp.startswith(netns_dir + "cni-")
                and mp[len(netns_dir) :] not in self._cni_netns_before
            ):
                points.append(mp)
        for mp in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
        if Path(netns_dir).is_dir():
            for name in os.listdir(netns_dir):
                if name.startswith("cni-") and name not in self._cni_netns_before:
                    with contextlib.suppress(OSError):
                        os.unlink(netns_dir + name)

    @staticmethod
    def _remove_cgroups() -> None:
        root = Path("/sys/fs/cgroup")
        for hierarchy in (
            [root, *(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
        ):
            top = hierarchy / "kubepods"
            if not top.is_dir():
                continue
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    def __enter__(self) -> NodeCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
