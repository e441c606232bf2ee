"""Placement engine: SLO-derived GPU capacity, best-fit and CP-SAT packing, verification.

Pure: no I/O, no Kubernetes, no HTTP, no GPU libraries. See ``placement/README.md``.
"""

from stowplan.placement.models import (
    Assignment,
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    Plan,
    Problem,
    Unplaced,
    UnplacedReason,
)

__all__ = [
    "Assignment",
    "Gpu",
    "LatencyProfile",
    "MemoryProfile",
    "ModelDemand",
    "Plan",
    "Problem",
    "Unplaced",
    "UnplacedReason",
]
