"""The fleet-scale benchmark's figure is drawn from the runs it is given (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from stowplan.operatorbench.fleet import Result
from stowplan.operatorbench.plot import plot


def _result(models: int, all_placed_s: float) -> Result:
    return Result(
        nodes=500,
        models=models,
        replicas=models * 10,
        all_placed_s=all_placed_s,
        one_more_p50_s=0.4,
        one_more_max_s=1.2,
        probes=5,
        max_writes_per_pass=models,
        idle_writes_per_pass=0,
        peak_rss_mib=300 + models / 10,
    )


def test_the_plot_is_a_png_of_four_panels(tmp_path: Path) -> None:
    out = tmp_path / "img" / "operator.png"
    plot([_result(1000, 35.0), _result(100, 8.0)], out)
    with Image.open(out) as img:
        assert img.format == "PNG"
        width, height = img.size
    assert width > 3 * height  # four panels side by side


def test_no_runs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to plot"):
        plot([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
