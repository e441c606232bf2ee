"""Replicas that fit a GPU only alone, at a duty cycle between the search's levels.

The search (best-fit, column generation, CP-SAT, LNS) prices every replica at the fixed
``DUTY_LEVELS_MS``. A replica that needs 90-100 % of a GPU may fit only in a narrow band of
duty cycles between two levels (:func:`capacity.alone_capacity` finds it exactly); such a
replica is placed here, before the search, on a GPU of its own that no other replica runs on,
at that exact duty cycle, so the planner never tells a user to add capacity for a replica that
fits; the search then plans the rest on the other GPUs. Its current GPU is kept when it is
still free of others (stability); higher priority goes first. Where we lose: such a replica does
not displace other running replicas to get a GPU, and a lower-priority one of them may take a
GPU that a higher-priority replica of the search would have used. What cannot be
placed gets an ``Unplaced`` whose message says why. Callers: :func:`planner.plan` only. Pure:
no I/O; it does not share the verifier's code (check_plan re-checks the result on its own).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from stowplan.placement.capacity import EPS, ReplicaCapacity, alone_capacity
from stowplan.placement.filters import gpu_admits
from stowplan.placement.models import (
    Assignment,
    Gpu,
    ModelDemand,
    Problem,
    Unplaced,
    UnplacedReason,
)


def fits_only_alone(model: ModelDemand, level_feasible: bool) -> ReplicaCapacity | None:
    """The exact alone capacity of a model no duty-cycle level can run (None otherwise)."""
    if level_feasible or model.gpu_milli or model.gpus_per_replica != 1 or not model.replicas:
        return None
    return alone_capacity(model)


def _admits(gpu: Gpu, model: ModelDemand, cap: ReplicaCapacity, reserve_mib: int) -> bool:
    if not gpu_admits(gpu, model):
        return False
    return cap.memory_mib <= (gpu.memory_mib - reserve_mib) * (1 + EPS)


def place_alone(
    problem: Problem,
    models: Sequence[tuple[ModelDemand, ReplicaCapacity]],
    assignments: Sequence[Assignment],
) -> tuple[list[Assignment], list[Unplaced]]:
    """Place every replica of ``models`` alone on a GPU that ``assignments`` leave empty."""
    taken = {key for a in assignments for key in a.gpu_keys}
    limits = {n.node: n for n in problem.nodes}
    used_cpu: dict[str, int] = defaultdict(int)
    used_mem: dict[str, int] = defaultdict(int)
    demand = {m.name: m for m in problem.models}
    for a in assignments:
        m = demand.get(a.model)
        if m is not None:
            used_cpu[a.node] += m.cpu_milli
            used_mem[a.node] += m.host_memory_mib
    current = {a.replica_key: a.gpu_key for a in problem.current}
    gpus = {g.key: g for g in problem.gpus}

    def node_room(node: str, m: ModelDemand) -> bool:
        lim = limits.get(node)
        if lim is None:
            return True
        cpu_ok = used_cpu[node] + m.cpu_milli <= lim.cpu_milli
        return cpu_ok and used_mem[node] + m.host_memory_mib <= lim.memory_mib

    placed: list[Assignment] = []
    unplaced: list[Unplaced] = []
    order = sorted(models, key=lambda mc: (-mc[0].priority, mc[0].name))
    for m, cap in order:
        eligible = [g for g in problem.gpus if _admits(g, m, cap, problem.memory_reserve_mib)]
        for r in range(m.replicas):
            here = current.get((m.name, r))
            choices = [gpus[here]] if here in gpus and gpus[here] in eligible else []
            choices += [g for g in eligible if g.key != here]
            gpu = next((g for g in choices if g.key not in taken and node_room(g.node, m)), None)
            if gpu is None:
                unplaced.append(_why_not(m, r, cap, eligible))
                continue
            taken.add(gpu.key)
            used_cpu[gpu.node] += m.cpu_milli
            used_mem[gpu.node] += m.host_memory_mib
            placed.append(
                Assignment(
                    model=m.name,
                    replica=r,
                    node=gpu.node,
                    gpu=gpu.index,
                    batch_size=cap.batch_size,
                    duty_cycle_ms=cap.duty_cycle_ms,
                    busy_ms=cap.busy_ms,
                    memory_mib=cap.memory_mib,
                )
            )
    return placed, unplaced


def _why_not(m: ModelDemand, r: int, cap: ReplicaCapacity, eligible: list[Gpu]) -> Unplaced:
    alone = (
        f"one replica fits only alone on a GPU (duty cycle {cap.duty_cycle_ms:.2f} ms, batch "
        f"{cap.batch_size}, {cap.gpu_share:.1%} of the GPU, {cap.memory_mib:.0f} MiB)"
    )
    if not eligible:
        return Unplaced(
            model=m.name,
            replica=r,
            reason=UnplacedReason.NO_MATCHING_NODE,
            message=f"{alone}, and no GPU matches gpu_type={m.gpu_type!r} "
            f"node_selector={dict(m.node_selector)} with that much memory",
        )
    return Unplaced(
        model=m.name,
        replica=r,
        reason=UnplacedReason.NO_CAPACITY,
        message=f"{alone}; no empty GPU is left",
    )
