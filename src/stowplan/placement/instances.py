"""Instances: the file format of ``stowplan place`` (JSON) <-> ``Problem``, and ``Plan`` -> JSON.

The instance format (issue 3)::

    {"gpus":   [{"node": "n0", "index": 0, "memory_mib": 81920, "type": "A100"}, ...],
     "models": [{"name": "m0", "replicas": 3, "slo_ms": 50, "target_qps": 400,
                 "latency_ms": {"base": 4.1, "per_item": 0.5},
                 "memory_mib": {"weights": 500, "per_item": 20}, "max_batch": 128}, ...]}

Optional keys: gpus ``labels``; models ``priority``, ``node_selector``, ``gpu_type``,
``gpu_milli`` (a fixed GPU fraction in thousandths), ``cpu_milli`` and ``host_memory_mib`` (per
replica, counted against its node), ``gpus`` (whole GPUs per replica, one node; needs
``gpu_milli: 1000``), ``batching`` (``{"policy": "aimd" | "static" | "none", "batch_size": N}``,
N with static only; aimd when absent: see ``capacity`` for what each costs); top level
``memory_reserve_mib`` and ``nodes``
(``[{"node", "cpu_milli", "memory_mib"}]``: CPU and host memory of a node; a node not listed has
no limit). Unknown keys and negative numbers are refused with the field path. The ``--json``
output lists ``extra_gpus`` (the other GPU indices of a multi-GPU replica) only where non-empty.
``read_instance(path)`` reads one file: a missing or unreadable file, text that is not UTF-8,
bad JSON (with its line and column) and a bad field are each an ``InvalidProblem`` whose message
starts with the path. ``problem_from_json`` / ``problem_to_json`` / ``instance_text`` convert
parsed JSON; ``plan_to_json`` is the ``--json`` output. Callers: the place CLI, the tests (the
shipped ``placement/instances/*.json``). The builders of test problems are in
``stowplan.testing.placement_problems``, those of the benchmark problems in ``fgdbench.synth``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from stowplan.placement.errors import InvalidProblem
from stowplan.placement.models import (
    BatchingPolicy,
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    NodeResources,
    Plan,
    Problem,
    _Frozen,
)


class _LatencyIn(_Frozen):
    base: float = Field(ge=0)
    per_item: float = Field(ge=0)


class _MemoryIn(_Frozen):
    weights: float = Field(ge=0)
    per_item: float = Field(ge=0)


class _BatchingIn(_Frozen):
    policy: BatchingPolicy = BatchingPolicy.AIMD
    batch_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _size_with_static_only(self) -> _BatchingIn:
        if (self.policy is BatchingPolicy.STATIC) != (self.batch_size is not None):
            raise ValueError("batch_size is required with policy static and only there")
        return self


class _GpuIn(_Frozen):
    node: str = Field(min_length=1)
    index: int = Field(ge=0)
    memory_mib: int = Field(gt=0)
    type: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class _ModelIn(_Frozen):
    name: str = Field(min_length=1)
    replicas: int = Field(ge=0)
    slo_ms: float = Field(gt=0, allow_inf_nan=False)
    target_qps: float = Field(ge=0, allow_inf_nan=False)
    latency_ms: _LatencyIn
    memory_mib: _MemoryIn
    max_batch: int = Field(ge=1)
    priority: int = 0
    node_selector: dict[str, str] = Field(default_factory=dict)
    gpu_type: str = ""
    gpu_milli: int = Field(default=0, ge=0, le=1000)
    cpu_milli: int = Field(default=0, ge=0)
    host_memory_mib: int = Field(default=0, ge=0)
    gpus: int = Field(default=1, ge=1, le=16)
    batching: _BatchingIn = Field(default_factory=_BatchingIn)

    @model_validator(mode="after")
    def _gang_is_whole_gpus(self) -> _ModelIn:
        if self.gpus > 1 and self.gpu_milli != 1000:
            raise ValueError(f"gpus={self.gpus} needs gpu_milli=1000 (whole GPUs)")
        return self


class _NodeIn(_Frozen):
    node: str = Field(min_length=1)
    cpu_milli: int = Field(ge=0)
    memory_mib: int = Field(ge=0)


class _InstanceIn(_Frozen):
    gpus: list[_GpuIn]
    models: list[_ModelIn]
    memory_reserve_mib: int = Field(default=0, ge=0)
    nodes: list[_NodeIn] = Field(default_factory=list)


def read_instance(path: Path) -> Problem:
    """The Problem in instance file ``path``; ``InvalidProblem`` starts with the path (then the
    line and column of bad JSON, or the bad field)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidProblem(f"{path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidProblem(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidProblem(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    try:
        return problem_from_json(data)
    except InvalidProblem as exc:
        raise InvalidProblem(f"{path}: {exc}") from None


def problem_from_json(data: Any) -> Problem:
    """Build a Problem from parsed instance JSON; ``InvalidProblem`` names the bad field."""
    try:
        inst = _InstanceIn.model_validate(data)
        return Problem(
            gpus=tuple(
                Gpu(
                    node=g.node,
                    index=g.index,
                    memory_mib=g.memory_mib,
                    gpu_type=g.type,
                    labels=g.labels,
                )
                for g in inst.gpus
            ),
            models=tuple(
                ModelDemand(
                    name=m.name,
                    replicas=m.replicas,
                    slo_ms=m.slo_ms,
                    target_qps=m.target_qps,
                    latency=LatencyProfile(
                        base_ms=m.latency_ms.base, per_item_ms=m.latency_ms.per_item
                    ),
                    memory=MemoryProfile(
                        weights_mib=m.memory_mib.weights, per_item_mib=m.memory_mib.per_item
                    ),
                    max_batch=m.max_batch,
                    priority=m.priority,
                    node_selector=m.node_selector,
                    gpu_type=m.gpu_type,
                    gpu_milli=m.gpu_milli,
                    cpu_milli=m.cpu_milli,
                    host_memory_mib=m.host_memory_mib,
                    gpus_per_replica=m.gpus,
                    batching=m.batching.policy,
                    static_batch_size=m.batching.batch_size or 0,
                )
                for m in inst.models
            ),
            memory_reserve_mib=inst.memory_reserve_mib,
            nodes=tuple(
                NodeResources(node=n.node, cpu_milli=n.cpu_milli, memory_mib=n.memory_mib)
                for n in inst.nodes
            ),
        )
    except ValidationError as exc:
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()[:5]
        ]
        more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise InvalidProblem("; ".join(parts) + more) from None


def problem_to_json(problem: Problem) -> dict[str, Any]:
    """The instance JSON of a Problem (current/pinned are not part of the format)."""
    return {
        "gpus": [
            {
                "node": g.node,
                "index": g.index,
                "memory_mib": g.memory_mib,
                "type": g.gpu_type,
                **({"labels": dict(g.labels)} if g.labels else {}),
            }
            for g in problem.gpus
        ],
        "models": [_model_json(m) for m in problem.models],
        **(
            {"memory_reserve_mib": problem.memory_reserve_mib} if problem.memory_reserve_mib else {}
        ),
        **(
            {
                "nodes": [
                    {"node": n.node, "cpu_milli": n.cpu_milli, "memory_mib": n.memory_mib}
                    for n in problem.nodes
                ]
            }
            if problem.nodes
            else {}
        ),
    }


def _model_json(m: ModelDemand) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": m.name,
        "replicas": m.replicas,
        "slo_ms": m.slo_ms,
        "target_qps": m.target_qps,
        "latency_ms": {"base": m.latency.base_ms, "per_item": m.latency.per_item_ms},
        "memory_mib": {"weights": m.memory.weights_mib, "per_item": m.memory.per_item_mib},
        "max_batch": m.max_batch,
    }
    if m.priority:
        out["priority"] = m.priority
    if m.node_selector:
        out["node_selector"] = dict(m.node_selector)
    if m.gpu_type:
        out["gpu_type"] = m.gpu_type
    if m.gpu_milli:
        out["gpu_milli"] = m.gpu_milli
    if m.cpu_milli:
        out["cpu_milli"] = m.cpu_milli
    if m.host_memory_mib:
        out["host_memory_mib"] = m.host_memory_mib
    if m.gpus_per_replica > 1:
        out["gpus"] = m.gpus_per_replica
    if m.batching is not BatchingPolicy.AIMD:
        out["batching"] = {"policy": str(m.batching)}
        if m.batching is BatchingPolicy.STATIC:
            out["batching"]["batch_size"] = m.static_batch_size
    return out


def instance_text(problem: Problem) -> str:
    """The instance JSON of ``problem`` as text, one GPU / model / node per line (small diffs,
    readable files; what ``placement/instances/*.json`` use)."""
    doc = problem_to_json(problem)
    parts = []
    for key, value in doc.items():
        if isinstance(value, list):
            rows = ",\n".join("  " + json.dumps(v) for v in value)
            parts.append(f"{json.dumps(key)}: [\n{rows}\n ]" if value else f'"{key}": []')
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return "{" + ",\n ".join(parts) + "}\n"


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The ``stowplan place --json`` output."""
    return {
        "gpus_used": plan.gpus_used,
        "lower_bound": plan.lower_bound,
        "solve_seconds": round(plan.solve_seconds, 6),
        "moves": plan.moves,
        "unplaced": [
            {"model": u.model, "replica": u.replica, "reason": str(u.reason), "message": u.message}
            for u in plan.unplaced
        ],
        "assignments": [
            {
                "model": a.model,
                "replica": a.replica,
                "node": a.node,
                "gpu": a.gpu,
                "batch_size": a.batch_size,
                "duty_cycle_ms": a.duty_cycle_ms,
                "busy_ms": round(a.busy_ms, 6),
                "memory_mib": round(a.memory_mib, 3),
                **({"extra_gpus": list(a.extra_gpus)} if a.extra_gpus else {}),
            }
            for a in plan.assignments
        ],
    }
