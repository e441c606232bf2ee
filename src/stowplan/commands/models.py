"""``stowplan models build DIR``: write the example ONNX models (real graphs, seeded weights).

Thin shell over :mod:`stowplan.models`; ``stowplan models list`` shows the recipes.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group(name="models")
def command() -> None:
    """Build the example ONNX models the project ships as recipes (no downloads)."""


@command.command(name="build")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the weights.")
@click.option("--overwrite", is_flag=True, help="Rebuild files that already exist.")
def build(directory: Path, seed: int, overwrite: bool) -> None:
    """Write every example model into DIRECTORY."""
    from stowplan.models import build_all

    for path in build_all(directory, seed=seed, overwrite=overwrite):
        click.echo(f"{path}  ({path.stat().st_size:,} bytes)")


@command.command(name="list")
def list_() -> None:
    """List the example models."""
    from stowplan.models import EXAMPLES

    for m in EXAMPLES.values():
        click.echo(f"{m.name:<10} {m.filename:<14} {m.description}")
