"""``stowplan memprobe``: the residency pool's books vs the memory the process really holds, with
the example models on real ONNX Runtime sessions (load, largest batch, offload/prefetch cycles,
unload). Thin shell over :mod:`stowplan.agentbench.memprobe`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click


@click.command(name="memprobe")
@click.option("--pool-mib", default=256, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option(
    "--cycles",
    default=5,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="Offload/prefetch rounds.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the example models are (built there if missing; default: a temp dir).",
)
@click.option(
    "--record-residency",
    "record_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the agent pool's load/offload/prefetch sequence to DIR/device-0.stwres.json "
    "(replay it: stowplan memsim DIR/device-0.stwres.json).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
def command(
    pool_mib: int,
    max_batch: int,
    cycles: int,
    models_dir: Path | None,
    record_dir: Path | None,
    as_json: bool,
) -> None:
    """Load the example models into the agent's pool and print books vs measured memory
    (resident set after malloc_trim, less the model bytes kept in host memory) and the
    prefetch time per model."""
    from stowplan.agentbench.memprobe import probe

    result = probe(models_dir, pool_mib, max_batch, cycles, record_dir)
    if as_json:
        click.echo(json.dumps({**asdict(result), "load_error": result.load_error}, indent=2))
    else:
        click.echo(result.markdown())
    if record_dir is not None:
        click.echo(f"residency trace written to {record_dir / 'device-0.stwres.json'}", err=True)
