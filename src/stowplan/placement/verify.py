"""``check_plan``: re-check every constraint of a plan, independently of how it was made.

The oracle of the property tests, and the last step before the operator applies a plan. It
recomputes the DESIGN §3 constraints from the raw ``Problem`` fields and the numbers written in
each ``Assignment`` (it does not call the capacity module or any solver), so a bug in the packing
code cannot hide itself; plus the fixed demands: per-node CPU and host-memory sums on the nodes
of ``Problem.nodes``, and multi-GPU replicas holding exactly ``gpus_per_replica`` distinct GPUs
of one node, none shared with another replica. Returns values (``Violation``), never raises for
a bad plan.
"""

from __future__ import annotations

import math
from collections import defaultdict

from stowplan.placement.capacity import DUTY_LEVELS_MS, replica_capacity
from stowplan.placement.models import (
    Assignment,
    Gpu,
    ModelDemand,
    NodeResources,
    Plan,
    Problem,
    _Frozen,
)

_TOL = 1e-6  # relative tolerance for float comparisons


class Violation(_Frozen):
    """One broken constraint; ``message`` is meant for people (logs, events, test failures)."""

    code: str
    message: str
    model: str = ""
    replica: int | None = None
    node: str = ""
    gpu: int | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _le(a: float, b: float) -> bool:
    return a <= b + _TOL * max(1.0, abs(b))


def gpu_admits(gpu: Gpu, model: ModelDemand) -> bool:
    """GPU type and node selector filter (``""``/empty = any)."""
    if model.gpu_type and model.gpu_type != gpu.gpu_type:
        return False
    return all(gpu.labels.get(k) == v for k, v in model.node_selector.items())


def _check_assignment(a: Assignment, m: ModelDemand, gpu: Gpu) -> list[Violation]:
    out: list[Violation] = []

    def bad(code: str, msg: str) -> None:
        out.append(
            Violation(
                code=code, message=msg, model=a.model, replica=a.replica, node=a.node, gpu=a.gpu
            )
        )

    where = f"{a.model}/{a.replica} on {a.node}:{a.gpu}"
    if not gpu_admits(gpu, m):
        bad("GpuFilter", f"{where}: GPU type {gpu.gpu_type!r}/labels do not match the model")
    d = a.duty_cycle_ms
    if m.gpu_milli:
        need = m.gpu_milli / 1000.0 * d
        if not _le(need, a.busy_ms):
            bad("BusyTime", f"{where}: busy {a.busy_ms:.4f} ms < {m.gpu_milli}/1000 of {d} ms")
        if not _le(m.memory.weights_mib, a.memory_mib):
            bad("Memory", f"{where}: memory {a.memory_mib} < weights {m.memory.weights_mib}")
        return out
    qps = m.target_qps / m.replicas if m.replicas else 0.0
    b = a.batch_size
    if b < 1:
        bad("Batch", f"{where}: batch {b} < 1")
        return out
    if b > m.max_batch:
        bad("Batch", f"{where}: batch {b} > max_batch {m.max_batch}")
    policy = str(m.batching)
    if policy == "none" and b != 1:
        bad("Batch", f"{where}: batching none runs batches of 1, not {b}")
    if policy == "static" and b != m.static_batch_size:
        bad("Batch", f"{where}: batching static runs batches of {m.static_batch_size}, not {b}")
    # aimd: one batch per cycle; static and none: as many runs of b as the cycle's requests need
    arriving = qps * d / 1000.0
    runs = 1 if policy == "aimd" else max(1, math.ceil(arriving / b - _TOL * max(1.0, arriving)))
    if not _le(arriving, runs * b):
        bad("Throughput", f"{where}: {runs} x batch {b} per {d} ms cycle < {qps:.3f} qps arriving")
    t = runs * (m.latency.base_ms + m.latency.per_item_ms * b)
    if not _le(t, a.busy_ms):
        bad("BusyTime", f"{where}: busy {a.busy_ms:.4f} ms < {runs} x latency({b}) = {t:.4f} ms")
    if not _le(d + t, m.slo_ms):
        bad("Slo", f"{where}: cycle {d} + runs {t:.3f} ms > SLO {m.slo_ms} ms")
    mem = m.memory.weights_mib + m.memory.per_item_mib * b
    if not _le(mem, a.memory_mib):
        bad("Memory", f"{where}: memory {a.memory_mib} < {mem} MiB needed at batch {b}")
    return out


def _could_stay(m: ModelDemand, gpus: list[Gpu | None], reserve_mib: int) -> bool:
    """Whether a pinned replica could stay alone on its GPUs (else the planner may move it)."""
    if len(gpus) != m.gpus_per_replica or len(set(map(id, gpus))) != len(gpus):
        return False
    for gpu in gpus:
        if gpu is None or not gpu_admits(gpu, m):
            return False
        if not _could_stay_one(m, gpu, reserve_mib):
            return False
    return True


def _could_stay_one(m: ModelDemand, gpu: Gpu, reserve_mib: int) -> bool:
    for d in DUTY_LEVELS_MS:
        cap = replica_capacity(m, d)
        if cap is not None and _le(cap.memory_mib, gpu.memory_mib - reserve_mib):
            return True
    return False


def check_plan(problem: Problem, plan: Plan) -> list[Violation]:
    """Every constraint ``plan`` breaks for ``problem``; an empty list means the plan is valid."""
    out: list[Violation] = []
    models = {m.name: m for m in problem.models}
    gpus = {g.key: g for g in problem.gpus}
    seen: set[tuple[str, int]] = set()
    per_gpu: dict[tuple[str, int], list[Assignment]] = defaultdict(list)
    per_node: dict[str, list[tuple[Assignment, ModelDemand]]] = defaultdict(list)

    for a in plan.assignments:
        m = models.get(a.model)
        if m is None or a.replica >= m.replicas:
            out.append(
                Violation(
                    code="UnknownReplica",
                    message=f"{a.model}/{a.replica} is not a replica of the problem",
                    model=a.model,
                    replica=a.replica,
                )
            )
            continue
        if a.replica_key in seen:
            out.append(
                Violation(
                    code="Duplicate",
                    message=f"{a.model}/{a.replica} placed twice",
                    model=a.model,
                    replica=a.replica,
                )
            )
        seen.add(a.replica_key)
        unknown = [k for k in a.gpu_keys if k not in gpus]
        if unknown:
            out.append(
                Violation(
                    code="UnknownGpu",
                    message=f"{a.model}/{a.replica} on unknown GPU "
                    + ", ".join(f"{n}:{i}" for n, i in unknown),
                    model=a.model,
                    replica=a.replica,
                )
            )
            continue
        if not (math.isfinite(a.duty_cycle_ms) and math.isfinite(a.busy_ms)):
            out.append(
                Violation(
                    code="NotFinite",
                    message=f"{a.model}/{a.replica}: non-finite times",
                    model=a.model,
                    replica=a.replica,
                )
            )
            continue
        n_gpus = len(a.gpu_keys)
        if n_gpus != m.gpus_per_replica or len(set(a.gpu_keys)) != n_gpus:
            out.append(
                Violation(
                    code="GangSize",
                    message=f"{a.model}/{a.replica} holds GPUs {a.gpu} + {list(a.extra_gpus)} "
                    f"of {a.node}; the model needs {m.gpus_per_replica} distinct GPUs",
                    model=a.model,
                    replica=a.replica,
                    node=a.node,
                    gpu=a.gpu,
                )
            )
        for k in dict.fromkeys(a.gpu_keys):
            per_gpu[k].append(a)
            out.extend(_check_assignment(a, m, gpus[k]))
        if a.extra_gpus or m.cpu_milli or m.host_memory_mib:
            per_node[a.node].append((a, m))

    for u in plan.unplaced:
        m = models.get(u.model)
        if m is None or u.replica >= m.replicas:
            out.append(
                Violation(
                    code="UnknownReplica",
                    message=f"unplaced {u.model}/{u.replica} is not a replica of the problem",
                    model=u.model,
                )
            )
        elif (u.model, u.replica) in seen:
            out.append(
                Violation(
                    code="Duplicate",
                    message=f"{u.model}/{u.replica} both placed and unplaced",
                    model=u.model,
                    replica=u.replica,
                )
            )
        seen.add((u.model, u.replica))
    for m in problem.models:
        for r in range(m.replicas):
            if (m.name, r) not in seen:
                out.append(
                    Violation(
                        code="Missing",
                        message=f"{m.name}/{r} neither placed nor unplaced",
                        model=m.name,
                        replica=r,
                    )
                )

    reserve = problem.memory_reserve_mib
    for key, members in per_gpu.items():
        gpu = gpus[key]
        where = f"GPU {key[0]}:{key[1]}"
        cycles = {a.duty_cycle_ms for a in members}
        if len(cycles) > 1:
            out.append(
                Violation(
                    code="DutyCycle",
                    message=f"{where}: several duty cycles {sorted(cycles)}",
                    node=key[0],
                    gpu=key[1],
                )
            )
        d = min(cycles)
        busy = sum(a.busy_ms for a in members)
        if not _le(busy, d):
            out.append(
                Violation(
                    code="CycleOverfull",
                    message=f"{where}: busy {busy:.4f} ms > cycle {d} ms",
                    node=key[0],
                    gpu=key[1],
                )
            )
        mem = sum(a.memory_mib for a in members)
        if not _le(mem, gpu.memory_mib - reserve):
            out.append(
                Violation(
                    code="MemoryOverfull",
                    message=f"{where}: {mem:.1f} MiB > {gpu.memory_mib} - reserve {reserve} MiB",
                    node=key[0],
                    gpu=key[1],
                )
            )
        gangs = [a for a in members if a.extra_gpus]
        if gangs and len(members) > 1:
            out.append(
                Violation(
                    code="GangShared",
                    message=f"{where}: held by multi-GPU replica {gangs[0].model}/"
                    f"{gangs[0].replica} and {len(members) - 1} other replica(s)",
                    model=gangs[0].model,
                    replica=gangs[0].replica,
                    node=key[0],
                    gpu=key[1],
                )
            )
        names = [a.model for a in members]
        for name in {n for n in names if names.count(n) > 1}:
            out.append(
                Violation(
                    code="SameModelTwice",
                    message=f"{where}: several replicas of {name}",
                    model=name,
                    node=key[0],
                    gpu=key[1],
                )
            )

    out.extend(_check_nodes(problem, per_node))

    if plan.gpus_used != len(per_gpu):
        out.append(
            Violation(
                code="GpusUsed",
                message=f"gpus_used {plan.gpus_used} but {len(per_gpu)} GPUs hold replicas",
            )
        )

    placed = {a.replica_key: a.placement_key for a in plan.assignments}
    limits = {n.node: n for n in problem.nodes}
    moves = 0
    for c in problem.current:
        new = placed.get(c.replica_key)
        if new is not None and new != c.placement_key:
            moves += 1
        if (
            c.replica_key in problem.pinned
            and new != c.placement_key
            and c.model in models
            and c.replica < models[c.model].replicas
            and _could_stay(
                models[c.model], [gpus.get(k) for k in c.gpu_keys], problem.memory_reserve_mib
            )
            and _node_could_hold(models[c.model], limits.get(c.node))
        ):
            out.append(
                Violation(
                    code="PinnedMoved",
                    message=f"pinned {c.model}/{c.replica} left {c.node}:{c.gpu}",
                    model=c.model,
                    replica=c.replica,
                )
            )
    if plan.moves != moves:
        out.append(
            Violation(
                code="Moves", message=f"plan.moves {plan.moves} but {moves} replicas changed GPU"
            )
        )
    return out


def _node_could_hold(m: ModelDemand, node: NodeResources | None) -> bool:
    return node is None or (m.cpu_milli <= node.cpu_milli and m.host_memory_mib <= node.memory_mib)


def _check_nodes(
    problem: Problem, per_node: dict[str, list[tuple[Assignment, ModelDemand]]]
) -> list[Violation]:
    """Node CPU and host memory sums (listed nodes only) and one node per gang."""
    out: list[Violation] = []
    limits = {n.node: n for n in problem.nodes}
    for node, members in per_node.items():
        lim = limits.get(node)
        if lim is None:
            continue
        cpu = sum(m.cpu_milli for _, m in members)
        mem = sum(m.host_memory_mib for _, m in members)
        if cpu > lim.cpu_milli:
            out.append(
                Violation(
                    code="NodeCpu",
                    message=f"node {node}: replicas request {cpu} CPU milli > {lim.cpu_milli}",
                    node=node,
                )
            )
        if mem > lim.memory_mib:
            out.append(
                Violation(
                    code="NodeMemory",
                    message=f"node {node}: replicas request {mem} MiB host memory "
                    f"> {lim.memory_mib}",
                    node=node,
                )
            )
    return out
