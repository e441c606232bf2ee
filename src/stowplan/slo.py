"""The one "meets the SLO" formula of a time-sliced GPU (DESIGN §3), shared by plan and agent.

Placement (:mod:`stowplan.placement.capacity`) decides with it whether a replica fits at a duty
cycle; the agent (:func:`stowplan.agent.batching.derive_target_ms`) derives AIMD's per-batch
latency target from it, and the translation of a placed replica into the agent's config
(:func:`stowplan.agent.config.model_config`) takes the batch-fill wait from it. Because both sides
call these functions, the plan and the agent agree by construction: a replica the plan accepts
gets an AIMD target at least as large as the batch time the plan budgeted
(:func:`batch_target_ms` >= ``busy_ms`` exactly when :func:`meets_slo`).

The queueing assumed (a GPU shared round-robin in a duty cycle of ``d`` ms; one model's runs of
the cycle take ``t`` ms, its *turn*; the other models' turns take ``others = d - t``): a request
that arrives just after its model's turn began is not in that turn's batch; it waits for the
turn to finish (``t``), for the other models' turns (``others``) and for at most ``wait`` (the
bound on waiting for a batch to fill), then runs within its model's next turn (``t``). So the
worst-case latency is ``2 t + others + wait`` (:func:`worst_latency_ms`). For a planned lane the
cycle is itself the collection window (a planned lane waits up to ``max(wait, d)`` for its batch,
:func:`batch_wait_ms`), so only the part of the fill wait beyond the cycle adds to it
(:func:`wait_beyond_cycle_ms`): the plan's worst case (``t`` = the replica's planned busy time per
cycle) is ``max(d, wait) + t`` (:func:`planned_latency_ms`), and "meets the SLO" is that value
<= ``slo`` (with a relative slack of :data:`EPS` for floats computed in different orders).
Unplanned (``d`` = 0), AIMD's target keeps the whole wait: ``(slo - wait) / 2``.

That worst case holds only while a replica's turns recur once per cycle, so the executor
(:class:`stowplan.agent.executor.SliceScheduler`) keeps them on the cycle's grid: a lane's turn
is the cycle's start (what it collected by then runs first thing in the cycle, in EDF order
among the ready lanes; by the plan their turns sum to at most ``d``), and a batch picked *off*
its turn (its requests all arrived within the cycle) may run across the cycle's end only by
the least room the other replicas' plans leave their turns (:func:`turn_room_ms`:
``slo - (max(d, wait) + t)``, 0 for a replica planned at exactly ``d + t = slo``); a longer
one waits for the next cycle's start, its own turn, which is never held (so it waits at most
one cycle, within its own worst case, and a batch longer than a cycle is not starved). The
margin is priced from each neighbour's own plan, not by placement: a replica's fit at ``d``
stays independent of its neighbours (the linear per-level formulation of
:mod:`stowplan.placement.capacity`). What the model still does not bound: a turn batch larger
than its plan (AIMD grown beyond the planned batch, or an overrun of the profiled time) or
spare time taken by a backlogged lane (load above the plan) can still cross the cycle's end.

A planned lane waits for its batch to fill for up to a whole cycle (:func:`batch_wait_ms`): its
requests wait for their turn anyway, and a batch taken earlier would be smaller than planned and
cost more GPU time per cycle than the plan budgeted.

Pure arithmetic on floats; imports nothing (placement must stay pure, the agent must not import
placement).
"""

from __future__ import annotations

import math

#: Relative slack when comparing floats computed in different orders (solver vs verifier).
EPS = 1e-9

#: AIMD's target never drops below this share of the SLO (a model slower than its SLO still
#: forms batches of one instead of a target no batch can meet).
_MIN_TARGET_SHARE = 0.05


def per_replica_qps(target_qps: float, replicas: int) -> float:
    """Requests per second each replica receives: ``target_qps / replicas`` (0 if none)."""
    return target_qps / replicas if replicas > 0 else 0.0


def items_per_cycle(qps: float, duty_cycle_ms: float) -> int:
    """Requests one replica collects per cycle: ``max(1, ceil(qps * d / 1000))`` (a count that
    lands within :data:`EPS` of an integer is that integer)."""
    need = qps * duty_cycle_ms / 1000.0
    return max(1, math.ceil(need - EPS * max(1.0, need)))


def worst_latency_ms(turn_ms: float, others_ms: float, max_wait_ms: float = 0.0) -> float:
    """Worst-case latency of a request whose model's turn takes ``turn_ms`` per cycle while the
    other models' turns take ``others_ms``: ``2 turn + others + wait`` (module docstring)."""
    return turn_ms + others_ms + max_wait_ms + turn_ms


def planned_latency_ms(duty_cycle_ms: float, busy_ms: float, max_wait_ms: float = 0.0) -> float:
    """:func:`worst_latency_ms` of a replica planned at ``busy_ms`` per cycle of
    ``duty_cycle_ms`` whose batches may wait ``max_wait_ms`` to fill: ``max(d, wait) + t``
    (``2 t + (d - t) + wait_beyond_cycle``). ``placement.capacity`` evaluates this same
    expression vectorised over many models."""
    return max(duty_cycle_ms, max_wait_ms) + busy_ms


def turn_room_ms(
    slo_ms: float, duty_cycle_ms: float, busy_ms: float, max_wait_ms: float = 0.0
) -> float:
    """How late a replica's turn may start without a request missing ``slo_ms``: the SLO less
    :func:`planned_latency_ms`, at least 0. The executor lets a neighbour's batch run across a
    cycle's end by at most the least such room on the GPU (module docstring)."""
    return max(0.0, slo_ms - planned_latency_ms(duty_cycle_ms, busy_ms, max_wait_ms))


def wait_beyond_cycle_ms(max_wait_ms: float, duty_cycle_ms: float) -> float:
    """The part of a batch-fill wait that a planned cycle does not already cover:
    ``max(0, wait - d)`` (the whole wait when unplanned, ``d`` = 0)."""
    return max(0.0, max_wait_ms - duty_cycle_ms)


def meets_slo(
    slo_ms: float, duty_cycle_ms: float, busy_ms: float, max_wait_ms: float = 0.0
) -> bool:
    """Whether a replica with ``busy_ms`` of GPU time per cycle of ``duty_cycle_ms`` answers
    every request within ``slo_ms`` (:func:`planned_latency_ms` <= slo, up to :data:`EPS`)."""
    return planned_latency_ms(duty_cycle_ms, busy_ms, max_wait_ms) <= slo_ms * (1 + EPS)


def batch_wait_ms(max_queue_delay_ms: float, duty_cycle_ms: float) -> float:
    """How long a lane planned at ``duty_cycle_ms`` may hold a batch that is not full:
    ``max(max_queue_delay_ms, d)`` (the plan's collection window; without a plan, ``d`` = 0,
    the spec's bound)."""
    return max(max_queue_delay_ms, duty_cycle_ms)


def batch_target_ms(
    slo_ms: float, duty_cycle_ms: float = 0.0, busy_ms: float = 0.0, max_wait_ms: float = 0.0
) -> float:
    """The longest one batch may take so that requests still meet ``slo_ms``: the largest
    ``L`` with ``worst_latency_ms(L, others, wait) <= slo`` where ``others = max(0, d - busy)``,
    i.e. ``(slo - others - wait) / 2`` (alone on a device with no wait: ``slo / 2``), and at
    least 5 % of the SLO.

    At ``L = busy`` the worst case is :func:`planned_latency_ms`, hence
    ``batch_target_ms(...) >= busy`` whenever :func:`meets_slo`: the batch the plan budgeted is
    within the agent's target.
    """
    others = max(0.0, duty_cycle_ms - busy_ms)
    target = (slo_ms - others - max(0.0, max_wait_ms)) / 2.0
    return max(_MIN_TARGET_SHARE * slo_ms, target)
