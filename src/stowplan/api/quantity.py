"""Kubernetes resource quantities for CPU and host memory: the wire type and its parsing (pure).

Users write quantities the way they do in a Pod: CPU ``"500m"``, ``"2"``, ``"1.5"``, ``2``;
memory ``"512Mi"``, ``"4Gi"``, ``"1G"``, plain bytes. On the wire a :data:`Quantity` is an int or
a string (``x-kubernetes-int-or-string``) matching :data:`QUANTITY_PATTERN`, which is core's
quantity pattern without the minus sign, so the API server refuses a negative or malformed
value at ``kubectl apply``; the pydantic type accepts exactly the same values, so anything the
API server stored parses here. A fraction must be written as a string (``"1.5"``), as in the
CRDs controller-gen emits for core quantities.

:func:`cpu_milli` and :func:`memory_mib` turn a quantity into the integers the placement engine
takes. Requests round up (a replica never gets less than it asked for), allocatable rounds down
(a node never offers more than it has). Values above :data:`MAX_VALUE` are clamped: such a
request exceeds every node, such an allocatable is no limit.

Callers: :mod:`stowplan.api.inferencemodel` and :mod:`stowplan.api.gpunode` (the field type),
:mod:`stowplan.operator.inventory` (parsing), the agent (flags and ``GPUNode.status``). No I/O;
raises ``ValueError`` (what pydantic and click report) for a value that is not a quantity.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated

from kubernetes.utils.quantity import parse_quantity
from pydantic import Field, StringConstraints, WithJsonSchema

#: core/v1 resource.Quantity's pattern without a leading minus (no negative resources)
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
MAX_LENGTH = 64
#: Largest parsed value (2**53, exact as a float); larger quantities are clamped to it.
MAX_VALUE = 2**53
_MIB = 1024 * 1024
_RE = re.compile(QUANTITY_PATTERN)

Quantity = Annotated[
    Annotated[int, Field(ge=0, strict=True)]
    | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=MAX_LENGTH)],
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": MAX_LENGTH,
            "minimum": 0,
        }
    ),
]


def parse(quantity: int | str) -> Decimal:
    """The quantity's value in base units (cores, bytes); ``ValueError`` if it is not one."""
    if isinstance(quantity, bool) or not isinstance(quantity, int | str):
        raise ValueError(f"{quantity!r} is not a quantity (an integer or a string like 500m)")
    if isinstance(quantity, int):
        if quantity < 0:
            raise ValueError(f"{quantity} is negative")
        return Decimal(quantity)
    if len(quantity) > MAX_LENGTH or not _RE.match(quantity):
        raise ValueError(
            f"{quantity!r} is not a Kubernetes quantity (e.g. 500m, 2, 1.5, 512Mi, 4Gi, 1G)"
        )
    return Decimal(parse_quantity(quantity))


def _integral(value: Decimal, round_up: bool) -> int:
    if value >= MAX_VALUE:
        return MAX_VALUE
    return int(math.ceil(value) if round_up else math.floor(value))


def cpu_milli(quantity: int | str | None, *, round_up: bool = True) -> int:
    """Thousandths of a CPU core (``"1.5"`` -> 1500, ``"250m"`` -> 250); None -> 0."""
    if quantity is None:
        return 0
    return _integral(parse(quantity) * 1000, round_up)


def memory_mib(quantity: int | str | None, *, round_up: bool = True) -> int:
    """Mebibytes (``"4Gi"`` -> 4096, ``"1G"`` -> 954 rounded up); None -> 0."""
    if quantity is None:
        return 0
    return _integral(parse(quantity) / _MIB, round_up)


def format_cpu(milli: int) -> str:
    """The canonical quantity of ``milli`` thousandths of a core: ``"2"``, ``"1500m"``."""
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def format_memory(mib: int) -> str:
    """The canonical quantity of ``mib`` MiB: ``"4Gi"``, ``"1536Mi"``."""
    return f"{mib // 1024}Gi" if mib % 1024 == 0 and mib else f"{mib}Mi"
