"""The agent's one exception tree; the HTTP boundary (:mod:`stowplan.agent.server`) maps it to
status codes. Callers raise these; nothing here does I/O.

    AgentError
    ├── ModelNotFound            404  no model of that name
    ├── ModelNotReady            503  known but loading, failed or unloaded
    ├── InvalidRequest           400  malformed body, wrong tensor name/shape/dtype/data
    │   └── AmbiguousModelName   400  a bare NAME that two namespaces' models share here
    ├── PayloadTooLarge          413  body or batch over the configured limit
    ├── Overloaded               503  queue full, or the request expired before it could run
    ├── ModelLoadError           (internal) fetching or opening the model failed
    └── ExecutionError           500  the runtime failed while running a batch
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    status_code = 500


class ModelNotFound(AgentError):
    status_code = 404


class ModelNotReady(AgentError):
    status_code = 503


class InvalidRequest(AgentError):
    status_code = 400


class AmbiguousModelName(InvalidRequest):
    """A bare model name (``NAME``) that more than one served model has, in different
    namespaces (``NS1.NAME``, ``NS2.NAME``): the client must ask for ``NAMESPACE.NAME``."""


class PayloadTooLarge(AgentError):
    status_code = 413


class Overloaded(AgentError):
    """Load shedding. ``reason`` labels the refusal in the metrics (``queue_full``,
    ``deadline``, ``unloading``); ``queue_empty`` says no other request was queued for the
    model when this one was refused (an alarm: it must never happen); ``retry_after_s`` is the
    ``Retry-After`` the HTTP boundary sends."""

    status_code = 503

    def __init__(
        self,
        message: str,
        reason: str = "overloaded",
        queue_empty: bool = False,
        retry_after_s: int = 1,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.queue_empty = queue_empty
        self.retry_after_s = retry_after_s


class ModelLoadError(AgentError):
    status_code = 500


class ExecutionError(AgentError):
    status_code = 500
