"""``stowplan bench operator``: the operator at fleet scale on a real local control plane.

Thin shell over :mod:`stowplan.operatorbench.fleet`; prints one Markdown row per fleet size and,
with ``--plot``, draws them (:mod:`stowplan.operatorbench.plot`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click


@click.command(name="operator")
@click.option("--nodes", default=500, show_default=True, type=click.IntRange(1, 5000),
              help="GPUNodes of 8 A100-80GB each.")  # fmt: skip
@click.option("--models", "models_list", default="100,1000", show_default=True,
              help="Comma-separated InferenceModel counts, one run each.")  # fmt: skip
@click.option("--replicas", default=10, show_default=True, type=click.IntRange(1, 100),
              help="Replicas per model.")  # fmt: skip
@click.option("--probes", default=5, show_default=True, type=click.IntRange(1, 100),
              help="One-more-model placements timed on the full fleet.")  # fmt: skip
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a PNG of every measure against the model count.")  # fmt: skip
def command(nodes: int, models_list: str, replicas: int, probes: int,
            plot_path: Path | None) -> None:  # fmt: skip
    """Apply every model at once; time to all Placed=True, then one more model's latency."""
    from stowplan.operatorbench import fleet

    print("| GPUNodes | models | replicas | all Placed s | one more p50 s | one more max s "
          "| writes/pass max | writes, last pass | operator peak MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    results: list[fleet.Result] = []
    for models in (int(m) for m in models_list.split(",")):
        with tempfile.TemporaryDirectory() as d:
            r = fleet.run(nodes, models, replicas, probes, Path(d))
        results.append(r)
        print(f"| {r.nodes} | {r.models} | {r.replicas} | {r.all_placed_s:.1f} "
              f"| {r.one_more_p50_s:.2f} | {r.one_more_max_s:.2f} (n={r.probes}) "
              f"| {r.max_writes_per_pass} | {r.idle_writes_per_pass} "
              f"| {r.peak_rss_mib:.0f} |", flush=True)  # fmt: skip
    if plot_path is not None:
        from stowplan.operatorbench.plot import plot

        plot(results, plot_path)
        print(f"plot: {plot_path}")
