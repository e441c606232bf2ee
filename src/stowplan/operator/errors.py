"""The operator's exception tree.

- ``OperatorError``: root of every failure the operator raises on purpose.
  - ``ApiError``: the API server refused or did not answer. :mod:`.kube` maps every
    ``ApiException`` / socket error to exactly one of these, once; nothing else sees the client's
    exceptions.
    - ``NotFound`` (404, 410): the object is gone (deleted between a list and a patch).
    - ``Conflict`` (409): someone else wrote first (a Lease race, an object that exists).
    - ``ApiUnavailable`` (5xx, 429, a refused or timed-out connection): retry after a back-off.
    - ``Forbidden`` (401, 403): RBAC does not allow the call (a deployment error).
    - ``Invalid`` (400, 422 and any other 4xx): the server refused the body (an operator bug).
  - ``PlanRejected``: a plan failed ``placement.check_plan`` before being applied; nothing is
    written and the previous assignments stay (a bug in the engine, never a user error).

Expected outcomes (a model that cannot be placed) are not errors: they are ``Placed=False``
conditions and Warning events. The fleet loop (:class:`stowplan.operator.fleet.FleetLoop`)
is the one edge that catches all of these (and anything else, counted as a bug).
"""

from __future__ import annotations


class OperatorError(Exception):
    """Root of the operator's exception tree."""


class ApiError(OperatorError):
    """The API server refused or did not answer; ``status`` is the HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ApiError):
    """The object does not exist (any more)."""


class Conflict(ApiError):
    """A write lost a race (resourceVersion mismatch, or the object already exists)."""


class ApiUnavailable(ApiError):
    """The API server could not be reached, timed out, or answered 5xx/429."""


class Forbidden(ApiError):
    """The ServiceAccount is not allowed to make the call."""


class Invalid(ApiError):
    """The server refused the request as malformed."""


class PlanRejected(OperatorError):
    """The placement plan did not pass verification; nothing was applied."""


def from_status(status: int, message: str) -> ApiError:
    """The one mapping from an HTTP status to the tree (used by :mod:`.kube` only)."""
    if status in (404, 410):
        return NotFound(message, status)
    if status == 409:
        return Conflict(message, status)
    if status in (401, 403):
        return Forbidden(message, status)
    if status == 429 or status >= 500 or status == 0:
        return ApiUnavailable(message, status)
    return Invalid(message, status)
