"""``check_plan``: re-check every constraint of a plan, independently of how it was made.

The oracle of the property tests, and the last step before the operator applies a plan. It
recomputes the DESIGN §3 constraints from the raw ``Problem`` fields and the numbers written in
each ``Assignment`` with its own arithmetic: it imports only the contract types (``models``),
never the capacity model, the engine's filters or a solver (an import-linter contract), so a
bug in the packing code cannot hide itself; plus the fixed demands: per-node CPU and host-memory
sums on the nodes of ``Problem.nodes``, and multi-GPU replicas holding exactly
``gpus_per_replica`` distinct GPUs of one node, none shared with another replica. A pinned
replica may move only when it could not stay alone on its GPUs at any of the engine's duty-cycle
levels (``_LEVELS_MS``, the verifier's copy of the levels the engine prices replicas at);
``tests/placement/test_verify_independent.py`` checks that the verifier and the engine agree on
random replicas. Returns values (``Violation``), never raises for a bad plan.
"""

from __future__ import annotations

import math
from collections import defaultdict

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

# The duty cycles (ms) the engine prices replicas at (DESIGN §3): a pinned replica must stay
# where it is when it fits there alone at one of them. The verifier's own copy; a test checks
# it against the engine's.
_LEVELS_MS: tuple[float, ...] = (
    1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0,
    50.0, 60.0, 80.0, 100.0, 120.0, 160.0, 200.0, 250.0, 320.0, 400.0, 500.0, 640.0, 800.0,
    1000.0,
)  # fmt: skip
# Relative slack the engine allows itself when deciding that a replica fits (float rounding):
# a pinned replica counts as able to stay exactly when the engine would have kept it.
_FIT_SLACK = 1e-9


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


def _gpu_matches(gpu: Gpu, m: ModelDemand) -> bool:
    """The model's GPU type (``""`` = any) and every label of its node selector."""
    type_ok = m.gpu_type in ("", gpu.gpu_type)
    return type_ok and all(gpu.labels.get(key) == want for key, want in m.node_selector.items())


def _check_assignment(a: Assignment, m: ModelDemand, gpu: Gpu) -> list[Violation]:
    out: list[Violation] = []

    def bad(code: str, msg: str) -> None:
        out.append(
            Violation(
                code=code, message=msg, model=a.model, replica=a.replica, node=a.node, gpu=a.gpu
            )
        )

    where = f"{a.model}/{a.replica} on {a.node}:{a.gpu}"
    if not _gpu_matches(gpu, m):
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
    # the batch collects for a cycle, or longer if its fill wait is longer, then runs
    w = max(d, m.max_queue_delay_ms)
    if not _le(w + t, m.slo_ms):
        bad("Slo", f"{where}: collection {w} ms (cycle {d}) + runs {t:.3f} ms > SLO {m.slo_ms} ms")
    mem = m.memory.weights_mib + m.memory.per_item_mib * b
    if not _le(mem, a.memory_mib):
        bad("Memory", f"{where}: memory {a.memory_mib} < {mem} MiB needed at batch {b}")
    return out


def _could_stay(m: ModelDemand, gpus: list[Gpu | None], reserve_mib: int) -> bool:
    """Whether a pinned replica could stay alone on its GPUs (else the planner may move it)."""
    if len(gpus) != m.gpus_per_replica or len(set(map(id, gpus))) != len(gpus):
        return False
    for gpu in gpus:
        if gpu is None or not _gpu_matches(gpu, m):
            return False
        if not _could_stay_one(m, gpu, reserve_mib):
            return False
    return True


def _could_stay_one(m: ModelDemand, gpu: Gpu, reserve_mib: int) -> bool:
    return any(_fits_alone(m, d, gpu.memory_mib - reserve_mib) for d in _LEVELS_MS)


def _fits_alone(m: ModelDemand, d: float, free_mib: float) -> bool:
    """Whether one replica of ``m`` runs alone at duty cycle ``d`` on a GPU with ``free_mib``:
    the requests one cycle collects, the runs its batching policy makes of them, their time
    against the cycle and the SLO, and the memory of one batch (DESIGN §3, derived here)."""
    if m.gpu_milli:  # a fixed share of every cycle (at most all of it) and the weights
        return _le(m.memory.weights_mib, free_mib)
    per_replica_qps = m.target_qps / m.replicas if m.replicas else 0.0
    arriving = per_replica_qps * d / 1000.0
    requests = max(1, math.ceil(arriving - _FIT_SLACK * max(1.0, arriving)))
    policy = str(m.batching)
    if policy == "aimd":  # the cycle's requests as one batch
        b, runs = requests, 1
    elif policy == "none":  # one run per request
        b, runs = 1, requests
    else:  # static: as many runs of the fixed size as the requests need
        b, runs = m.static_batch_size, -(-requests // m.static_batch_size)
    t = runs * (m.latency.base_ms + m.latency.per_item_ms * b)
    return (
        b <= m.max_batch
        and max(d, m.max_queue_delay_ms) + t <= m.slo_ms * (1 + _FIT_SLACK)
        and t <= d * (1 + _FIT_SLACK)
        and _le(m.memory.weights_mib + m.memory.per_item_mib * b, free_mib)
    )


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
