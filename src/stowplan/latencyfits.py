"""The one reader of the published latency-vs-batch fits (``gpu-inference-latency/
latency_vs_batch_linear_fits.csv`` in the shared data folder): latency(b) = base + per_item * b.

Callers: the placement benchmark's instance builder (:mod:`stowplan.commands.bench_placement`) and
the agent benchmarks (:mod:`stowplan.agentbench.data`). A malformed row is a
:class:`FitsFileError` naming the file and line; a missing file is
:class:`stowplan.shareddata.DataMissing`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from stowplan import shareddata

__all__ = ["FITS_FILE", "FitRow", "FitsFileError", "default_fits_path", "read_fits"]

#: Where the fits live inside the shared data folder.
FITS_FILE = "gpu-inference-latency/latency_vs_batch_linear_fits.csv"


class FitsFileError(ValueError):
    """A row of the fits file cannot be read; the message is ``path:line: what``."""


@dataclass(frozen=True)
class FitRow:
    """One published fit: ``latency_ms(b) = base_ms + per_item_ms * b`` for b up to batch_max."""

    source_file: str
    table_id: int
    gpu_model: str
    precision: str
    base_ms: float
    per_item_ms: float
    r2: float
    batch_max: int


def default_fits_path() -> Path:
    """The fits file in the shared data folder (DataMissing if it is not there)."""
    return shareddata.data_path(FITS_FILE)


def read_fits(path: Path | None = None) -> list[FitRow]:
    """Every row of the fits file, in file order."""
    path = default_fits_path() if path is None else path
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise shareddata.DataMissing(f"{path} not found") from None
    out = []
    for line, r in enumerate(rows, start=2):
        try:
            out.append(
                FitRow(
                    source_file=r["source_file"],
                    table_id=int(r["table_id"]),
                    gpu_model=r["gpu_model"],
                    precision=r["precision"],
                    base_ms=float(r["fit_a_ms"]),
                    per_item_ms=float(r["fit_b_ms_per_item"]),
                    r2=float(r["fit_r2"]),
                    batch_max=int(float(r["batch_max"])),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FitsFileError(f"{path}:{line}: bad fit row ({exc})") from None
    return out
