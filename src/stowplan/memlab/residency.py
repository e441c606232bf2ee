"""Residency traces: the agent's own load/offload/prefetch sequence, recorded and replayed.

The agent's :class:`stowplan.agent.memory.ResidencyManager` (created with ``record=True``; the
agent's ``residency_trace_dir`` setting, ``stowplan memprobe --record-residency``) writes a
:class:`ResidencyTrace` (``.stwres.json``): the pool it had, the placement policy it ran, every
request it was asked (register/acquire/release/offload/unregister, with sizes) and every block
it placed or took out, with offsets. The lab replays it two ways:

* :func:`replay_policies`: the requests through the one residency allocator
  (:class:`stowplan.memlab.pool.ResidencyPool`) under each placement policy of
  :data:`stowplan.memlab.pool.POLICIES`, in the recorded pool: offloads, bytes prefetched back,
  relocations; the recorded policy's row must reproduce the agent's offsets exactly.
* :func:`residency_ops`: the recorded blocks as replay ops of :mod:`stowplan.memlab.simulate`,
  so the growing allocators (BFC, PyTorch caching, ...) are measured on the same sequence.

:func:`demo_workload` is the seeded request sequence ``stowplan memsim --residency`` drives the
agent's manager with. Callers: the ``memsim`` command, the agent's residency manager, tests.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from stowplan.memlab.errors import MemlabError, TraceFileError
from stowplan.memlab.pool import AGENT_POLICY, POLICIES, BlockEvent, Request, replay

MIB = 1 << 20
RESIDENCY_SUFFIX = ".stwres.json"
FORMAT = "stowplan-residency"
FORMAT_VERSION = 1


class ResidencyTraceError(MemlabError):
    """A free of a model with no block in the pool (a malformed residency log)."""


class ResidencyTrace(BaseModel):
    """One pool's recorded residency: what it was asked and what it did."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pool_bytes: int
    alignment_bytes: int
    policy: str = AGENT_POLICY
    requests: list[Request]
    events: list[BlockEvent]

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"format": FORMAT, "version": FORMAT_VERSION, **self.model_dump(mode="json")}
        path.write_text(json.dumps(body, separators=(",", ":")))
        return path


def is_residency_trace(path: str | Path) -> bool:
    return str(path).endswith(RESIDENCY_SUFFIX)


def load_residency(path: str | Path) -> ResidencyTrace:
    """Read a ``.stwres.json`` trace; a bad file is a :class:`TraceFileError` naming it."""
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TraceFileError(str(path), f"cannot read residency trace: {exc}") from exc
    if not isinstance(body, dict) or body.pop("format", None) != FORMAT:
        raise TraceFileError(str(path), f"not a {FORMAT} trace")
    if body.pop("version", None) != FORMAT_VERSION:
        raise TraceFileError(str(path), f"residency trace version is not {FORMAT_VERSION}")
    try:
        return ResidencyTrace.model_validate(body)
    except ValidationError as exc:
        raise TraceFileError(str(path), f"bad residency trace: {exc}") from exc


@dataclass(frozen=True)
class PolicyResult:
    """One placement policy replayed on a residency trace's requests, in its pool."""

    policy: str
    loads: int
    offloads: int
    prefetches: int
    prefetched_bytes: int  # brought back from host memory
    relocations: int
    relocated_bytes: int  # copied inside the pool
    refused: int  # acquires the pool could not serve (503 in the agent)
    same_as_recorded: bool | None  # the recorded policy's row: blocks and offsets identical
    events: tuple[BlockEvent, ...]

    def summary(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "events"}


def replay_policies(
    trace: ResidencyTrace, policies: Sequence[str] = tuple(POLICIES)
) -> list[PolicyResult]:
    """Each policy's replay of ``trace.requests`` (module docstring), best first: fewest
    bytes prefetched back, then refused requests, then bytes relocated."""
    out = []
    for name in policies:
        pool = replay(trace.requests, trace.pool_bytes, trace.alignment_bytes, name)
        assert pool.events is not None
        out.append(
            PolicyResult(
                policy=name,
                loads=pool.loads,
                offloads=pool.offloads,
                prefetches=pool.prefetches,
                prefetched_bytes=pool.prefetched_bytes,
                relocations=pool.relocations,
                relocated_bytes=pool.relocated_bytes,
                refused=pool.refused,
                same_as_recorded=(
                    [tuple(e) for e in pool.events] == [tuple(e) for e in trace.events]
                    if name == trace.policy
                    else None
                ),
                events=tuple(pool.events),
            )
        )
    return sorted(out, key=lambda r: (r.prefetched_bytes, r.refused, r.relocated_bytes))


def residency_ops(events: Sequence[BlockEvent]) -> tuple[list[int], list[int], int]:
    """(ops, sizes, peak live bytes) of a residency log; one slot per placed block."""
    ops: list[int] = []
    sizes: list[int] = []
    live_slot: dict[str, int] = {}
    live = peak = 0
    for kind, model, size, _ in events:
        if kind == "alloc":
            live_slot[model] = len(sizes)
            ops.append(len(sizes))
            sizes.append(size)
            live += size
            peak = max(peak, live)
        else:
            slot = live_slot.pop(model, None)
            if slot is None:
                raise ResidencyTraceError(f"free of {model!r}, which holds no block")
            ops.append(~slot)
            live -= sizes[slot]
    for slot in live_slot.values():  # still resident at the end: freed at teardown
        ops.append(~slot)
    return ops, sizes, peak


def demo_workload(
    models: int = 8, requests: int = 3000, seed: int = 0
) -> tuple[dict[str, int], list[str]]:
    """Model sizes (log-uniform 64-768 MiB, 256 B aligned) and a Zipf(1.1) request order."""
    rng = random.Random(seed)
    sizes = {f"m{i}": int(64 * MIB * (12 ** rng.random())) // 256 * 256 for i in range(models)}
    names = list(sizes)
    weights = [1 / (k + 1) ** 1.1 for k in range(models)]
    return sizes, rng.choices(names, weights=weights, k=requests)


__all__ = [
    "RESIDENCY_SUFFIX",
    "PolicyResult",
    "ResidencyTrace",
    "ResidencyTraceError",
    "demo_workload",
    "is_residency_trace",
    "load_residency",
    "replay_policies",
    "residency_ops",
]
