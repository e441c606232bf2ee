"""The operator's exception tree.

- ``OperatorError``: root of every failure the operator raises on purpose.
  - ``ApiUnavailable``: the API server could not be reached or answered 5xx/403; the fleet loop
    retries after a back-off (kopf's own watches recover on their own).
  - ``PlanRejected``: a plan failed ``placement.check_plan`` before being applied; nothing is
    written and the previous assignments stay (a bug in the engine, never a user error).

Expected outcomes (a model that cannot be placed) are not errors: they are ``Placed=False``
conditions and Warning events.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Root of the operator's exception tree."""


class ApiUnavailable(OperatorError):
    """The API server could not be reached or refused the request."""


class PlanRejected(OperatorError):
    """The placement plan did not pass verification; nothing was applied."""
