"""Shared data the agent benchmarks read: latency-vs-batch fits and real arrival traces.

The data lives outside the repository, in the shared data folder that
:mod:`stowplan.shareddata` finds. Missing data is a :class:`DataMissing` error naming the path it
looked in; the fits are read by :mod:`stowplan.latencyfits`.
Callers: :mod:`stowplan.agentbench.batching` and :mod:`stowplan.agentbench.timeslice`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from stowplan import latencyfits, shareddata
from stowplan.shareddata import DataMissing

TRACES = {
    "azure-code": "azure-llm-inference/AzureLLMInferenceTrace_code.csv",
    "azure-conv": "azure-llm-inference/AzureLLMInferenceTrace_conv.csv",
}


def data_dir() -> Path:
    """The shared data folder."""
    return shareddata.data_root()


@dataclass(frozen=True)
class DeviceFit:
    """A published latency fit: latency(b) = base_ms + per_item_ms * b on one GPU."""

    label: str
    source: str
    gpu: str
    precision: str
    base_ms: float
    per_item_ms: float
    r2: float
    batch_max: int


@dataclass(frozen=True)
class FitQuery:
    label: str
    source_file: str
    table_id: int
    gpu_model: str
    precision: str


#: The device models the batching benchmark uses (looked up in the fits file, not copied).
DEFAULT_FITS = (
    FitQuery(
        "ResNet-50 T4 FP32 (TF)",
        "TensorFlow/Classification/ConvNets/resnet50v1.5/README.md",
        20,
        "T4",
        "FP32",
    ),
    FitQuery(
        "ResNet-50 A100 FP16 (Triton ORT-TRT)",
        "PyTorch/Classification/ConvNets/triton/resnet50/README.md",
        4,
        "A100-80GB",
        "FP16",
    ),
    FitQuery(
        "BERT-Large A100 FP16 (Triton ORT)",
        "PyTorch/LanguageModeling/BERT/triton/large/README.md",
        20,
        "A100-80GB",
        "FP16",
    ),
)


def load_fit(q: FitQuery) -> DeviceFit:
    path = latencyfits.default_fits_path()
    for row in latencyfits.read_fits(path):
        if (
            row.source_file == q.source_file
            and row.table_id == q.table_id
            and row.gpu_model == q.gpu_model
            and row.precision == q.precision
        ):
            return DeviceFit(
                q.label,
                q.source_file,
                q.gpu_model,
                q.precision,
                row.base_ms,
                row.per_item_ms,
                row.r2,
                row.batch_max,
            )
    raise DataMissing(f"no fit for {q} in {path}")


def trace_arrivals(name: str) -> list[float]:
    """Arrival times (seconds from the first request) of a real trace."""
    out: list[float] = []
    with shareddata.data_path(TRACES[name]).open(newline="") as f:
        reader = csv.DictReader(f)
        t0: datetime | None = None
        for row in reader:
            ts = row["TIMESTAMP"]
            head, _, frac = ts.partition(".")
            t = datetime.strptime(f"{head}.{frac[:6]}", "%Y-%m-%d %H:%M:%S.%f")
            t0 = t0 or t
            out.append((t - t0).total_seconds())
    return out


def scale_trace(
    arrivals: list[float], target_rate_per_s: float, duration_s: float, offset_s: float = 0.0
) -> list[float]:
    """Compress the trace in time so its mean rate is ``target_rate_per_s``, keep the first
    ``duration_s`` seconds after ``offset_s`` (in compressed time). Bursts keep their shape."""
    span = arrivals[-1] - arrivals[0]
    rate = len(arrivals) / span
    factor = rate / target_rate_per_s  # < 1 compresses
    scaled = [(t - arrivals[0]) * factor for t in arrivals]
    return [t - offset_s for t in scaled if offset_s <= t < offset_s + duration_s]
