"""Placement engine: SLO-derived GPU capacity, best-fit and CP-SAT packing, verification.

Pure: no I/O, no Kubernetes, no HTTP, no GPU libraries. See ``placement/README.md``.

Public API: ``plan(problem, time_limit_s=0.0) -> Plan``, ``check_plan(problem, plan) ->
list[Violation]``, ``replica_capacity(model, duty_cycle_ms) -> ReplicaCapacity | None``, the
online mode ``place_arrivals(problem)``, ``place_models(problem, names)`` /
``defragment(problem, max_moves)`` and the exception tree rooted at ``PlacementError``.
"""

from stowplan.placement.capacity import DUTY_LEVELS_MS, ReplicaCapacity, replica_capacity
from stowplan.placement.errors import InvalidProblem, PlacementError, SolverFailed
from stowplan.placement.models import (
    Assignment,
    BatchingPolicy,
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    NodeResources,
    Plan,
    Problem,
    Unplaced,
    UnplacedReason,
)
from stowplan.placement.online import defragment, place_arrivals, place_models
from stowplan.placement.planner import plan, warm_up
from stowplan.placement.verify import Violation, check_plan

__all__ = [
    "DUTY_LEVELS_MS",
    "Assignment",
    "BatchingPolicy",
    "Gpu",
    "InvalidProblem",
    "LatencyProfile",
    "MemoryProfile",
    "ModelDemand",
    "NodeResources",
    "PlacementError",
    "Plan",
    "Problem",
    "ReplicaCapacity",
    "SolverFailed",
    "Unplaced",
    "UnplacedReason",
    "Violation",
    "check_plan",
    "defragment",
    "place_arrivals",
    "place_models",
    "plan",
    "replica_capacity",
    "warm_up",
]
