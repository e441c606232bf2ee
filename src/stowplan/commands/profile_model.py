"""``stowplan profile MODEL``: measure a model's latency/memory profile on this device and print
the ``spec.profile`` block for its InferenceModel. Thin shell over
:mod:`stowplan.agentbench.profiling`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="profile")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--batch",
    "batches",
    multiple=True,
    type=click.IntRange(1, 65536),
    help="Batch sizes to time (repeatable; default 1 2 4 8 16 32).",
)
@click.option("--repeats", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--device",
    default=-1,
    show_default=True,
    help="GPU index for the CUDA execution provider; -1 is the CPU.",
)
@click.option("--threads", default=0, show_default=True, help="ORT intra-op threads (0: auto).")
def command(model: Path, batches: tuple[int, ...], repeats: int, device: int, threads: int) -> None:
    """Time MODEL (an .onnx file) at several batch sizes, fit base + perItem * b, and print the
    profile YAML to paste into an InferenceModel."""
    from tqdm import tqdm

    from stowplan.agent.errors import AgentError
    from stowplan.agentbench.profiling import measure

    sizes = tuple(sorted(set(batches))) or (1, 2, 4, 8, 16, 32)
    try:
        with tqdm(total=len(sizes), desc="batch sizes", leave=False) as bar:
            prof = measure(model, sizes, repeats, device, threads, bar.update)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"# {model} on {', '.join(prof.providers)}")
    click.echo("| batch | median ms | fit ms |")
    click.echo("|---:|---:|---:|")
    for b, ms in zip(prof.batch_sizes, prof.median_ms, strict=True):
        click.echo(f"| {b} | {ms:.3f} | {prof.base_ms + prof.per_item_ms * b:.3f} |")
    click.echo(f"# fit R^2 = {prof.r2:.4f}")
    click.echo(prof.yaml(max(sizes)))
