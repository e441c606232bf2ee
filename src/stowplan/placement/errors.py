"""The placement engine's exception tree (failures only; expected outcomes are values).

Callers catch ``PlacementError`` at their boundary (the operator, the CLI). An unplaceable
replica is NOT an error: it is an ``Unplaced`` entry of the ``Plan``. This module must not import
anything but the standard library.

Tree::

    PlacementError            root; never raised itself
    ├── InvalidProblem        the Problem is inconsistent (duplicate GPU, non-finite number, ...)
    └── SolverFailed          the solver misbehaved (model invalid); a bug, never a capacity issue
"""

from __future__ import annotations


class PlacementError(Exception):
    """Root of every exception raised by :mod:`stowplan.placement`."""


class InvalidProblem(PlacementError, ValueError):
    """The problem cannot be planned as given; the message says which field and why."""


class SolverFailed(PlacementError, RuntimeError):
    """CP-SAT returned MODEL_INVALID or another impossible status (a bug in the model)."""
