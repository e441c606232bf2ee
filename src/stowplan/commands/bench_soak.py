"""``stowplan bench soak``: a sequential client per model, then mixed load on every example
model with the CPUs contended, a quiet spell, then the sequential client again (issue 12's
wedged-model check).

Thin shell over :mod:`stowplan.agentbench.soak`; prints the Markdown tables, the agent's state
per phase and the issue's criteria (:func:`stowplan.agentbench.soak.criteria`), and exits
non-zero when one failed: a sequential client refused, a refusal while a model's queue was
empty, a 503 without ``Retry-After``, or an after-soak p99 over the SLO that the before-probe
met. A p99 that missed before the load as well is printed as the machine's, not failed.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="soak")
@click.option(
    "--manifests",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("manifests/examples"),
    show_default=True,
    help="InferenceModel YAML files to serve (stowplan up's directory).",
)
@click.option(
    "--minutes",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0, 120),
    help="Length of the mixed-load phase (0: only the sequential client).",
)
@click.option("--quiet-s", default=60.0, show_default=True, type=click.FloatRange(0, 3600))
@click.option(
    "--probe-s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(1, 600),
    help="Seconds of sequential client per model, before the load and after it.",
)
@click.option("--probe-rate", default=120.0, show_default=True, type=click.FloatRange(1, 2000))
@click.option(
    "--scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.01, 100),
    help="Multiplies the load-phase rates (mlp 80, convnet 25, mlp-wide 25 req/s; x4 in bursts).",
)
@click.option("--no-contend", is_flag=True, help="No CPU contender during the load phase.")
@click.option(
    "--contenders",
    type=click.IntRange(1, 256),
    default=None,
    help="Busy processes contending the CPUs (default: one per core).",
)
@click.option(
    "--contend-probe", is_flag=True, help="Keep the CPUs contended during the sequential client."
)
@click.option("--model", "only", multiple=True, help="Only these models (repeatable).")
@click.option("--seed", default=0, show_default=True)
def command(
    manifests: Path,
    minutes: float,
    quiet_s: float,
    probe_s: float,
    probe_rate: float,
    scale: float,
    no_contend: bool,
    contenders: int | None,
    contend_probe: bool,
    only: tuple[str, ...],
    seed: int,
) -> None:
    """Probe, soak the agent (`stowplan up` in a subprocess, loopback only), probe again: check
    that every model still answers a lone sequential client within its SLO, with no refusal."""
    from stowplan.agentbench import soak

    try:
        report = soak.run(
            manifests,
            load_s=minutes * 60.0,
            quiet_s=quiet_s if minutes > 0 else 0.0,
            probe_s=probe_s,
            probe_rate=probe_rate,
            scale=scale,
            contended=not no_contend,
            contenders=contenders,
            probe_contended=contend_probe,
            only=only,
            seed=seed,
            progress=lambda msg: click.echo(msg, err=True),
        )
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(soak.table(report))
    failed = soak.failed(report)
    if failed:
        raise click.ClickException(
            "criteria failed: " + "; ".join(f"{c.rule} ({c.model}: {c.detail})" for c in failed)
        )
