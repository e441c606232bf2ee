"""A real single-node cluster for the node tests (marker ``node``).

One session fixture builds or reuses the node binaries and the images (``tools/build-nodebins.sh``,
``tools/build-images.sh``; cached outside the repo), starts :class:`NodeCluster` with them, and on
teardown stops it and asserts that nothing of it is left (processes, network namespace, mounts,
cgroups, host sysctls). Helpers turn a refusal into a test failure that carries the admission's or
the kubelet's own reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stowplan import nodecluster

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.node


def _build(script: str) -> Path:
    r = subprocess.run([str(REPO / "tools" / script)], capture_output=True, text=True)
    assert r.returncode == 0, f"{script} failed:\n{r.stderr[-4000:]}"
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nodecluster.NodeCluster]:
    if os.environ.get("STOWPLAN_NODE_TESTS") == "0":
        pytest.skip("STOWPLAN_NODE_TESTS=0: the real-node tests are switched off")
    if os.geteuid() != 0:
        pytest.skip(
            "the real-node tests need root (a network namespace, cgroups, mounts, containerd): "
            "run scripts/test as root"
        )
    _build("build-kubebins.sh")
    _build("build-nodebins.sh")
    images = _build("build-images.sh")
    sysctls = {name: nodecluster._read_sysctl(name) for name in nodecluster.HOST_SYSCTLS}
    nc = nodecluster.NodeCluster(
        workdir=tmp_path_factory.mktemp("node"),
        images=(images / "operator.tar", images / "agent.tar"),
    )
    nc.start()
    t = nc.timings_s
    print(
        f"\nnode cluster: API ready in {t['apiserver_ready']:.1f} s, node Ready with "
        f"nvidia.com/gpu in {t['node_ready']:.1f} s (images imported: "
        + ", ".join(f"{k[7:]} {v:.1f} s" for k, v in t.items() if k.startswith("import_"))
        + ")"
    )
    try:
        yield nc
    finally:
        nc.stop()
        assert not Path(f"/run/netns/{nc.netns}").exists()
        assert {n: nodecluster._read_sysctl(n) for n in sysctls} == sysctls
        left = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(nc.d) in line.split()[4]
        ]
        assert not left, f"mounts left behind: {left}"
        assert not any(Path("/sys/fs/cgroup").glob("*/kubepods")), "kubepods cgroups left"


class Kubectl:
    def __init__(self, nc: nodecluster.NodeCluster) -> None:
        self.nc = nc

    def run(
        self, *args: str, check: bool = True, timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = self.nc.kubectl_run(*args, timeout_s=timeout_s)
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} refused:\n{proc.stderr.strip()}", pytrace=False)
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def pod_problems(self, namespace: str, selector: str = "") -> list[str]:
        """Why pods are not running, in the kubelet's and scheduler's words."""
        args = ["get", "pods", "-n", namespace] + (["-l", selector] if selector else [])
        problems = []
        for pod in self.json(*args)["items"]:
            name = pod["metadata"]["name"]
            for cond in pod.get("status", {}).get("conditions", []):
                if cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
                    problems.append(f"{name}: Unschedulable: {cond.get('message')}")
            for cs in pod.get("status", {}).get("containerStatuses", []):
                for key in ("waiting", "terminated"):
                    st = cs.get("state", {}).get(key) or cs.get("lastState", {}).get(key)
                    if st and st.get("reason") not in (None, "Completed", "ContainerCreating"):
                        problem = (
                            f"{name}/{cs['name']}: {st.get('reason')}: {st.get('message', '')}"
                        )
                        if st.get("reason") == "CrashLoopBackOff":  # the container's own words
                            logs = self.run(
                                "logs", "-n", namespace, name, "-c", cs["name"],
                                "--previous", "--tail=20", check=False,
                            )  # fmt: skip
                            problem += "\n  last log lines:\n" + (
                                logs.stdout[-2000:] + logs.stderr[-500:]
                            )
                        problems.append(problem)
        events = self.json("get", "events", "-n", namespace, "--field-selector", "type=Warning")
        problems += [
            f"event {e['involvedObject'].get('name')}: {e.get('reason')}: {e.get('message')}"
            for e in events["items"]
        ]
        return problems

    @staticmethod
    def wait_for(
        predicate: Callable[[], Any],
        timeout_s: float,
        what: str,
        why: Callable[[], list[str]] | None = None,
    ) -> Any:
        """Poll until truthy. On timeout fail with ``why()``: the cluster's own reasons."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            reasons = why() if why else []
            fatal = [r for r in reasons if any(k in r for k in FATAL_REASONS)]
            if fatal:
                pytest.fail(f"{what}: refused:\n" + "\n".join(fatal), pytrace=False)
            time.sleep(1)
        reasons = why() if why else []
        pytest.fail(
            f"timed out after {timeout_s:.0f} s waiting for {what}\n" + "\n".join(reasons),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def kubectl(node: nodecluster.NodeCluster) -> Kubectl:
    return Kubectl(node)


#: kubelet/scheduler reasons that never resolve by waiting
FATAL_REASONS = (
    "violates PodSecurity",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CrashLoopBackOff",
)
