"""Reading the benchmark's input files: the Alibaba 2023 trace's node and pod lists, the published
FGD simulator results, and the latency fits as ``synth.LatencyFit``.

Callers: ``stowplan bench fgd`` and ``stowplan bench placement``, which turn ``TraceFileError``
(and the ``latencyfits`` / ``shareddata`` errors ``load_fits`` lets through) into a CLI error.
Reads only the paths it is given; no printing, no environment.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

from stowplan import latencyfits
from stowplan.fgdbench.synth import LatencyFit
from stowplan.fgdbench.tracecluster import NodeRow, PodRow


class TraceFileError(Exception):
    """A trace file cannot be read or has a malformed row (the message names file and line)."""


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise TraceFileError(f"{path}: {exc.strerror or exc} (set STOWPLAN_DATA?)") from None


def load_nodes(path: Path) -> list[NodeRow]:
    """The GPU node list (``openb_node_list_gpu_node.csv``)."""
    out = []
    for line, r in enumerate(_rows(path), start=2):
        try:
            out.append(
                NodeRow(
                    r["sn"], int(r["cpu_milli"]), int(r["memory_mib"]), int(r["gpu"]), r["model"]
                )
            )
        except (KeyError, ValueError) as exc:
            raise TraceFileError(f"{path}:{line}: bad node row ({exc})") from None
    return out


def load_pods(path: Path) -> list[PodRow]:
    """A pod list (``openb_pod_list_NAME.csv``)."""
    out = []
    for line, r in enumerate(_rows(path), start=2):
        try:
            out.append(
                PodRow(
                    r["name"],
                    int(r["cpu_milli"]),
                    int(r["memory_mib"]),
                    int(r["num_gpu"]),
                    int(r["gpu_milli"]),
                    r.get("gpu_spec") or "",
                )
            )
        except (KeyError, ValueError) as exc:
            raise TraceFileError(f"{path}:{line}: bad pod row ({exc})") from None
    return out


def load_published(path: Path, column: str) -> dict[tuple[str, str], float]:
    """Mean published allocation per (workload, policy) at the ``column`` arrived percentage."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in _rows(path):
        wl = r["workload"].removeprefix("openb_pod_list_")
        acc[(wl, r["sc_policy"])].append(float(r[column]))
    return {k: statistics.fmean(v) for k, v in acc.items()}


def load_fits(path: Path) -> list[LatencyFit]:
    """The published latency fits (read by :mod:`stowplan.latencyfits`) as ``LatencyFit``."""
    rows = latencyfits.read_fits(path)
    return [
        LatencyFit(r.source_file, r.gpu_model, r.base_ms, r.per_item_ms, r.batch_max) for r in rows
    ]
