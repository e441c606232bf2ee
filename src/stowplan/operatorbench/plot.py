"""The fleet-scale benchmark's figure: how each measure grows with the number of models.

One PNG of four panels over the runs of one ``stowplan bench operator`` invocation (x: models,
log scale): seconds until all are ``Placed=True`` with the issue's 60 s goal, one more model's
apply -> ``Placed=True`` p50 and max with the 1 s goal, API writes in the busiest pass, and the
operator's peak resident memory. Benchmark code only; matplotlib is imported here so the
benchmark itself runs without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stowplan.operatorbench.fleet import Result

#: Issue 13's goals, drawn as reference lines.
ALL_PLACED_GOAL_S = 60.0
ONE_MORE_GOAL_S = 1.0


def plot(results: Sequence[Result], out: Path) -> None:
    """Write the figure of ``results`` (one point per run, sorted by model count) to ``out``."""
    if not results:
        raise ValueError("nothing to plot: no run finished")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(results, key=lambda r: r.models)
    models = [r.models for r in runs]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), dpi=72)
    placed_ax, more_ax, writes_ax, rss_ax = axes
    placed_ax.plot(models, [r.all_placed_s for r in runs], marker="o")
    placed_ax.axhline(ALL_PLACED_GOAL_S, ls=":", color="grey", label="goal (1,000 models)")
    placed_ax.set_ylabel("s from apply to all Placed")
    placed_ax.set_yscale("log")
    placed_ax.legend(fontsize=8)
    more_ax.plot(models, [r.one_more_p50_s for r in runs], marker="o", label="p50")
    more_ax.plot(models, [r.one_more_max_s for r in runs], ls="--", marker="o", label="max")
    more_ax.axhline(ONE_MORE_GOAL_S, ls=":", color="grey", label="goal (p50)")
    more_ax.set_ylabel("s, one more model to Placed")
    more_ax.set_yscale("log")
    more_ax.legend(fontsize=8)
    writes_ax.plot(models, [r.max_writes_per_pass for r in runs], marker="o", label="busiest")
    writes_ax.plot(models, [r.idle_writes_per_pass for r in runs], marker="o", label="last")
    writes_ax.set_ylabel("API writes per pass")
    writes_ax.set_yscale("symlog")
    writes_ax.legend(fontsize=8)
    rss_ax.plot(models, [r.peak_rss_mib for r in runs], marker="o")
    rss_ax.set_ylabel("operator peak RSS MiB")
    rss_ax.set_ylim(bottom=0)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel(f"InferenceModels ({runs[0].replicas // runs[0].models} replicas each)")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"stowplan bench operator: {runs[0].nodes} GPUNodes x 8 GPUs, real API server")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


__all__ = ["ALL_PLACED_GOAL_S", "ONE_MORE_GOAL_S", "plot"]
