"""``stowplan cluster up|down``: a real single-node Kubernetes cluster with stowplan's images.

``up`` builds (or reuses, cached outside the repo) the node binaries and the operator and agent
images with ``tools/build-nodebins.sh`` and ``tools/build-images.sh``, starts
:class:`stowplan.nodecluster.NodeCluster`, prints the ``export`` lines for ``kubectl`` and runs
until Ctrl-C or SIGTERM (``down`` sends that from another shell), then stops everything and
removes what it wrote. It only wires the CLI to :mod:`stowplan.nodecluster`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import click

from stowplan import controlplane, nodecluster

REPO = Path(__file__).resolve().parents[3]


def _build(script: str) -> Path:
    path = REPO / "tools" / script
    if not path.is_file():
        raise click.ClickException(f"{path} not found (run from a checkout of the repository)")
    r = subprocess.run([str(path)], stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise click.ClickException(f"{script} failed (see above)")
    return Path(r.stdout.strip().splitlines()[-1])


@click.group(name="cluster")
def command() -> None:
    """A real single-node Kubernetes cluster (root; its own network namespace)."""


@command.command(name="up")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".stowplan/cluster"),
    show_default=True,
    help="Certificates, configs, logs and the kubeconfig (state is removed on stop, logs kept).",
)
@click.option("--gpus", default=2, show_default=True, help="Simulated GPUs the node advertises.")
@click.option(
    "--build/--no-build",
    default=True,
    show_default=True,
    help="Build (or reuse) the node binaries and the images first.",
)
def up(workdir: Path, gpus: int, build: bool) -> None:
    """Run the cluster until interrupted."""
    t0 = time.monotonic()
    images: tuple[Path, ...] = ()
    if build:
        _build("build-kubebins.sh")
        _build("build-nodebins.sh")
        images_dir = _build("build-images.sh")
        images = (images_dir / "operator.tar", images_dir / "agent.tar")
    t_build = time.monotonic() - t0
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    nc = nodecluster.NodeCluster(workdir=workdir, gpus=gpus, images=images)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        nc.start()
    except nodecluster.NodeClusterError as err:
        raise click.ClickException(str(err)) from err
    except controlplane.ControlPlaneError as err:
        raise click.ClickException(str(err)) from err
    pidfile = workdir / "cluster.pid"
    try:
        pidfile.write_text(str(os.getpid()))
        click.echo(
            f"node {nc.node_name} Ready ({gpus} simulated nvidia.com/gpu): build {t_build:.0f} s, "
            f"cluster {nc.timings_s['node_ready']:.0f} s"
        )
        click.echo(f"export KUBECONFIG={nc.kubeconfig}")
        click.echo(f"export PATH={nc.kubectl.parent}:$PATH   # kubectl {controlplane.K8S_VERSION}")
        click.echo(f"export STOWPLAN_NETNS={nc.netns}   # clients of pod/Service IPs run here:")
        click.echo(
            "#   nsenter --net=/run/netns/$STOWPLAN_NETNS curl http://<pod or cluster IP>:8000/"
        )
        click.echo(
            "then: kubectl apply -k manifests/overlays/local"
            " && kubectl apply -f manifests/examples/"
        )
        click.echo(f"Ctrl-C (or `stowplan cluster down --workdir {workdir}`) stops it.")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        click.echo("stopping the cluster ...")
        nc.stop()
        pidfile.unlink(missing_ok=True)
        click.echo("stopped; nothing of it is left running")


@command.command(name="down")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".stowplan/cluster"),
    show_default=True,
)
@click.option("--timeout", "timeout_s", default=120.0, show_default=True)
def down(workdir: Path, timeout_s: float) -> None:
    """Stop a cluster that `stowplan cluster up` runs (SIGTERM to its process, then wait)."""
    pidfile = workdir.resolve() / "cluster.pid"
    if not pidfile.is_file():
        raise click.ClickException(f"no cluster running from {workdir} ({pidfile} missing)")
    pid = int(pidfile.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise click.ClickException(f"cluster process {pid} still running after {timeout_s} s")
        time.sleep(0.5)
    click.echo("stopped")
