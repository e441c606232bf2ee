"""Admission control for the front ends: a bound on the inference requests one server has taken
in and not yet answered, in requests and in request-body bytes, checked before a body is read
(HTTP) or decoded (gRPC), so a flood of requests cannot make the agent parse, inflate and
decode without limit ahead of the models' queues (which shed by SLO on their own).

One :class:`Admission` per agent, shared by HTTP and gRPC (``AgentSettings.max_inflight_requests``
and ``max_inflight_bytes``). A request past either bound is refused with :func:`refusal` (an
Overloaded with reason ``admission``: HTTP 503 + ``Retry-After``, gRPC UNAVAILABLE), counted
under ``stowplan_requests_refused_total{reason="admission"}`` with an empty ``model`` label (the
bound is the server's, and a gRPC request's model is not known before its message is decoded).
A request that arrives while nothing is in flight is always admitted, whatever its size (the
body limit, 413, bounds that one), so a lone client is never refused. Bodies without a
``Content-Length`` (chunked) are counted once read, so they weigh on later requests only.

Callers: :class:`stowplan.agent.server.FastInfer` and :mod:`stowplan.agent.grpc_server`.
"""

from __future__ import annotations

import threading

from stowplan.agent.errors import Overloaded

#: the shed reason of an admission refusal in ``stowplan_requests_refused_total``
REASON = "admission"
#: the ``Retry-After`` (s) an admission refusal carries: in-flight requests drain in well under it
RETRY_AFTER_S = 1


class Admission:
    """In-flight inference requests and their body bytes, against their bounds.

    ``enter`` and ``leave`` take a lock (the front ends share one event loop, but an agent may
    be driven from other threads too): about 0.1 us, off nothing else's path."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def enter(self, nbytes: int) -> bool:
        """Take in one request of ``nbytes`` body bytes (0: not known yet); False (nothing
        taken) when the server already holds ``max_requests`` requests, or when it holds any
        and ``nbytes`` more would pass ``max_bytes``."""
        with self._lock:
            if self.requests and (
                self.requests >= self.max_requests or self.bytes + nbytes > self.max_bytes
            ):
                return False
            self.requests += 1
            self.bytes += nbytes
            return True

    def grow(self, nbytes: int) -> None:
        """Count ``nbytes`` more of a request already taken in (a chunked body, once read)."""
        with self._lock:
            self.bytes += nbytes

    def leave(self, nbytes: int) -> None:
        """One request of ``nbytes`` (all it was counted for) is answered."""
        with self._lock:
            self.requests -= 1
            self.bytes -= nbytes

    def refusal(self) -> Overloaded:
        """The error a refused request is answered with, naming the bound it met."""
        return Overloaded(
            f"server busy: {self.requests} inference requests ({self.bytes} body bytes) in "
            f"flight, the most it takes in is {self.max_requests} requests or "
            f"{self.max_bytes} bytes; retry after {RETRY_AFTER_S} s",
            reason=REASON,
            retry_after_s=RETRY_AFTER_S,
        )


__all__ = ["REASON", "RETRY_AFTER_S", "Admission"]
