"""In-memory doubles of the Kubernetes client objects the components call, for unit tests.

- :class:`FakeLeases`: one coordination Lease with optimistic concurrency (a write at a stale
  resourceVersion raises ``Conflict``), the reader/writer pair :class:`stowplan.operator.
  leadership.Elector` takes.
- :class:`FakeCustomObjects`: the subset of ``kubernetes.client.CustomObjectsApi`` the agent's
  GPUNode sync calls, storing cluster-scoped objects by name; it raises :class:`ApiError` (an
  exception with ``.status``, like ``ApiException``) for a missing object.

Imported by tests only; never by product code.
"""

from __future__ import annotations

from typing import Any

from stowplan.operator.errors import Conflict
from stowplan.operator.leadership import LeaseState


class FakeLeases:
    """One Lease with optimistic concurrency, like the API server."""

    def __init__(self) -> None:
        self.state: LeaseState | None = None
        self.version = 0
        self.writes = 0

    async def read(self, namespace: str, name: str) -> tuple[LeaseState | None, str | None]:
        return self.state, (str(self.version) if self.state else None)

    async def write(
        self,
        namespace: str,
        name: str,
        *,
        holder: str,
        duration_s: float,
        now: Any,
        resource_version: str | None,
        **_: Any,
    ) -> None:
        if (resource_version or None) != (str(self.version) if self.state else None):
            raise Conflict("lease: resourceVersion mismatch", 409)
        self.version += 1
        self.writes += 1
        self.state = LeaseState(holder, now, duration_s)


class ApiError(Exception):
    """What ``kubernetes.client.ApiException`` looks like to a caller: a ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class FakeCustomObjects:
    """Cluster-scoped custom objects by name; records every status patch."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.status_patches: list[dict[str, Any]] = []

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str) -> Any:
        if name not in self.objects:
            raise ApiError(404)
        return self.objects[name]

    def create_cluster_custom_object(self, group: str, version: str, plural: str, body: Any) -> Any:
        assert (group, version, plural) == ("stowplan.io", "v1alpha1", "gpunodes")
        self.objects[body["metadata"]["name"]] = body
        return body

    def patch_cluster_custom_object_status(
        self, group: str, version: str, plural: str, name: str, body: Any
    ) -> Any:
        assert set(body) == {"status"}  # the agent never writes spec
        self.status_patches.append(body)
        return body

    def list_cluster_custom_object(self, group: str, version: str, plural: str, **kw: Any) -> Any:
        return {"items": list(self.objects.values())}
