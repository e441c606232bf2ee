"""``stowplan controlplane``: run a real local kube-apiserver + etcd until Ctrl-C.

Prints the kubeconfig path so that ``kubectl`` and ``kopf run -m stowplan.operator`` can be
pointed at it. See :mod:`stowplan.controlplane`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from pathlib import Path

import click

from stowplan import controlplane


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".stowplan/controlplane"),
    show_default=True,
    help="Where etcd data, certificates, logs and the kubeconfig go (kept between runs).",
)
@click.option("--port", type=int, default=6443, show_default=True, help="kube-apiserver port.")
@click.option("--install-crds/--no-install-crds", default=True, show_default=True)
def command(workdir: Path, port: int, install_crds: bool) -> None:
    """Run etcd and kube-apiserver on 127.0.0.1 until interrupted."""
    cp = controlplane.LocalControlPlane(workdir=workdir.resolve(), api_port=port)
    try:
        cp.start()
    except controlplane.ControlPlaneError as err:
        raise click.ClickException(str(err)) from err
    try:
        if install_crds:
            crds = Path(__file__).resolve().parents[3] / "crds"
            if crds.is_dir():
                kubectl = [str(cp.kubectl), "--kubeconfig", str(cp.kubeconfig)]
                if subprocess.run([*kubectl, "apply", "-k", str(crds)]).returncode != 0:
                    raise click.ClickException("installing the CRDs failed (see above)")
        click.echo(f"kube-apiserver {controlplane.K8S_VERSION} ready at {cp.server}")
        click.echo(f"export KUBECONFIG={cp.kubeconfig}")
        click.echo(f"export PATH={cp.kubectl.parent}:$PATH   # kubectl {controlplane.K8S_VERSION}")
        click.echo("then: kopf run --standalone -m stowplan.operator --all-namespaces")
        click.echo("Ctrl-C stops it.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        cp.stop()
