"""``stowplan place INSTANCE.json``: solve one placement instance and print the plan.

Thin shell: read the file with ``placement.instances.read_instance``, call ``placement.plan``,
print a table (default) or JSON. Bad input (missing file, bad JSON with its line, unknown or
negative fields) is a clear error naming the file and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from stowplan import placement
from stowplan.placement.instances import plan_to_json, read_instance


@click.command(name="place")
@click.argument("instance", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--time-limit",
    "time_limit_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds of CP-SAT/LNS improvement; 0 = best-fit only.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def command(instance: Path, time_limit_s: float, as_json: bool) -> None:
    """Place the models of INSTANCE (JSON: gpus, models, optional nodes) and print the plan.

    A multi-GPU replica lists all its GPUs in the gpu column (JSON: gpu + extra_gpus). See
    placement/README.md for the instance format; examples are in placement/instances/.
    """
    try:
        problem = read_instance(instance)
    except placement.PlacementError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        result = placement.plan(problem, time_limit_s=time_limit_s)
    except placement.PlacementError as exc:
        raise click.ClickException(f"{instance}: {exc}") from None
    violations = placement.check_plan(problem, result)
    if violations:  # never print an invalid plan as if it were fine
        raise click.ClickException(
            "internal error, invalid plan: " + "; ".join(map(str, violations))
        )
    if as_json:
        click.echo(json.dumps(plan_to_json(result), indent=2))
        return
    click.echo("| model | replica | node | gpu | batch | duty cycle ms | busy ms | memory MiB |")
    click.echo("|---|---|---|---|---|---|---|---|")
    for a in result.assignments:
        click.echo(
            f"| {a.model} | {a.replica} | {a.node} | {','.join(map(str, (a.gpu, *a.extra_gpus)))} "
            f"| {a.batch_size} | "
            f"{a.duty_cycle_ms:g} | {a.busy_ms:.2f} | {a.memory_mib:.0f} |"
        )
    for u in result.unplaced:
        click.echo(f"unplaced {u.model}/{u.replica}: {u.reason} ({u.message})")
    click.echo(
        f"GPUs used {result.gpus_used}, lower bound {result.lower_bound}, "
        f"unplaced {len(result.unplaced)}, solved in {result.solve_seconds:.3f} s"
    )
