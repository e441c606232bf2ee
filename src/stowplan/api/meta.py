"""Shared wire-type plumbing: the base model, object metadata and metav1.Condition.

Callers: every API type in :mod:`stowplan.api`. Pydantic only; no logic, no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class WireModel(BaseModel):
    """Base of all API types: immutable, unknown fields refused, camelCase on the wire.

    Dump with ``model_dump(by_alias=True, exclude_none=True, mode="json")`` to get what the
    API server stores.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict as the API server stores it."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(BaseModel):
    """The subset of metav1.ObjectMeta stowplan reads; everything else is kept as is."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(WireModel):
    """metav1.Condition: the standard shape of a status condition."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Condition type in CamelCase, e.g. Placed.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", ge=0, description="Generation it was set from."
    )
    last_transition_time: str = Field(
        alias="lastTransitionTime",
        json_schema_extra={"format": "date-time"},
        description="When the status last changed (RFC 3339).",
    )
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable reason in CamelCase.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
