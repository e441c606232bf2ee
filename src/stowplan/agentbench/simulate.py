"""Discrete-event simulation of one device running the agent's own batching and scheduling code.

The simulated device's batch time follows a linear latency fit (``base + per_item * b``, with
seeded log-normal jitter), and time is simulated, so a minute of traffic runs in well under a
second. Two execution modes:

* ``sliced`` - the agent's design: one batch at a time on the device, chosen by
  :class:`stowplan.agent.executor.SliceScheduler` (EDF with duty-cycle budgets).
* ``threads`` - the baseline: every model dispatches its own batches as soon as its queue is
  ready, unsynchronised, and concurrent batches share the device by processor sharing, each
  slowed by an interference factor ``1 + interference * (k - 1)`` when k run together
  (``interference = 0`` is ideal sharing, which flatters the baseline).

Both modes use the same :mod:`stowplan.agent.batching` policies and queues as the real executor,
including early drop of requests whose deadline passed in the queue. Callers: the
``stowplan bench batching`` and ``stowplan bench timeslice`` commands and the tests. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from stowplan.agent.batching import BatchPolicy, BatchQueue, Pending
from stowplan.agent.executor import Lane, SliceScheduler


@dataclass(frozen=True)
class SimModel:
    """One model on the simulated device."""

    name: str
    base_ms: float
    per_item_ms: float
    slo_ms: float
    arrivals_s: Sequence[float]  # sorted arrival times
    make_policy: Callable[[], BatchPolicy]
    budget_ms: float = 0.0  # busy time per duty cycle (sliced mode)


@dataclass
class SimResult:
    name: str
    arrivals: int
    answered: int = 0
    within_slo: int = 0
    dropped: int = 0
    batches: int = 0
    items: int = 0
    #: of those, the batches (and their items) run on spare time, beyond the lane's budget
    spare_batches: int = 0
    spare_items: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def goodput(self) -> float:
        """Requests answered within the SLO per second."""
        return self.within_slo / self.duration_s if self.duration_s else 0.0

    @property
    def attainment(self) -> float:
        """Fraction of all arrivals answered within the SLO (drops count as misses)."""
        return self.within_slo / self.arrivals if self.arrivals else 1.0

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else math.nan

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass
class _Job:
    lane: Lane
    batch: list[Pending[int]]
    work_ms: float
    remaining_ms: float
    start_s: float
    spare: bool = False


def simulate(
    models: Sequence[SimModel],
    mode: str = "sliced",
    cycle_ms: float = 0.0,
    interference: float = 0.1,
    jitter: float = 0.05,
    seed: int = 0,
    drop_expired: bool = True,
    drop_margin: float = 1.2,
) -> dict[str, SimResult]:
    """Run every model's arrivals through the device; return per-model results."""
    if mode not in ("sliced", "threads"):
        raise ValueError(f"unknown mode {mode!r}")
    rng = np.random.default_rng(seed)
    sched = SliceScheduler(cycle_s=cycle_ms / 1000.0, drop_margin=drop_margin)
    specs = {m.name: m for m in models}
    results = {m.name: SimResult(m.name, len(m.arrivals_s)) for m in models}
    for m in models:
        sched.lanes[m.name] = Lane(
            m.name,
            BatchQueue(m.make_policy(), max_requests=10**9),
            m.slo_ms / 1000.0,
            m.budget_ms / 1000.0,
        )
    events = sorted((t, m.name) for m in models for t in m.arrivals_s)
    horizon = max((t for t, _ in events), default=0.0)
    next_arrival = 0
    running: list[_Job] = []
    now = 0.0

    def finish(job: _Job, t: float) -> None:
        res = results[job.lane.name]
        items = sum(p.items for p in job.batch)
        res.batches += 1
        res.items += items
        if job.spare:
            res.spare_batches += 1
            res.spare_items += items
        missed = False
        for p in job.batch:
            lat = (t - p.arrival_s) * 1000.0
            missed = missed or lat > specs[job.lane.name].slo_ms
            res.answered += 1
            res.latencies_ms.append(lat)
            if lat <= specs[job.lane.name].slo_ms:
                res.within_slo += 1
        busy_ms = (t - job.start_s) * 1000.0
        job.lane.queue.policy.observe(items, busy_ms, missed)
        sched.charge(job.lane, busy_ms / 1000.0, job.spare)

    def start(lane: Lane, t: float) -> None:
        spare = sched.over_budget(lane)
        batch = lane.queue.take()
        m = specs[lane.name]
        items = sum(p.items for p in batch)
        work = (m.base_ms + m.per_item_ms * items) * float(rng.lognormal(0.0, jitter))
        running.append(_Job(lane, batch, work, work, t, spare))

    while True:
        # admit arrivals up to now
        while next_arrival < len(events) and events[next_arrival][0] <= now:
            t, name = events[next_arrival]
            lane = sched.lanes[name]
            lane.queue.push(Pending(next_arrival, 1, t, t + lane.slo_s))
            next_arrival += 1
        if drop_expired:
            for lane, _ in sched.expire(now):
                results[lane.name].dropped += 1
        # dispatch
        t_wake = math.inf  # when the scheduler asked to be woken (sliced mode, device idle)
        if mode == "sliced":
            if not running:
                lane_pick, t_wake = sched.pick(now)
                if lane_pick is not None:
                    start(lane_pick, now)
        else:
            busy = {j.lane.name for j in running}
            for lane in sched.lanes.values():
                if lane.name not in busy and lane.queue.ready_at_s() <= now:
                    start(lane, now)
        # next event
        k = len(running)
        rate = 1.0 / (k * (1.0 + interference * (k - 1))) if k else 0.0
        t_done = min((now + j.remaining_ms / 1000.0 / rate for j in running), default=math.inf)
        t_arr = events[next_arrival][0] if next_arrival < len(events) else math.inf
        if mode == "sliced":
            # the scheduler's own wake-up (a fill wait ending, a deadline, the next cycle),
            # as the real executor's thread waits for it
            t_ready = t_wake if t_wake > now else math.inf
        else:
            running_names = {j.lane.name for j in running}
            idle = [lane for lane in sched.lanes.values() if lane.name not in running_names]
            t_ready = min(
                (max(lane.queue.ready_at_s(), now) for lane in idle if len(lane.queue)),
                default=math.inf,
            )
            if t_ready <= now:
                t_ready = math.inf  # ready lanes were started above
        t_next = min(t_done, t_arr, t_ready)
        if math.isinf(t_next):
            break
        # advance running work
        elapsed_ms = (t_next - now) * 1000.0
        for j in running:
            j.remaining_ms -= elapsed_ms * rate
        now = t_next
        done = [j for j in running if j.remaining_ms <= 1e-9]
        for j in done:
            running.remove(j)
            finish(j, now)
    duration = max(horizon, now)
    for res in results.values():
        res.duration_s = duration
    return results


def poisson_arrivals(rate_per_s: float, duration_s: float, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    n = int(rate_per_s * duration_s * 1.2) + 10
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, n))
    return [float(t) for t in times[times < duration_s]]


def max_goodput_per_s(base_ms: float, per_item_ms: float, slo_ms: float, max_batch: int) -> float:
    """Throughput of the largest batch whose worst case (wait one batch, then run) fits the SLO:
    max b / latency(b) subject to 2 * latency(b) <= slo. The reference capacity loads scale to."""
    best = 0.0
    for b in range(1, max_batch + 1):
        lat = base_ms + per_item_ms * b
        if 2 * lat <= slo_ms:
            best = max(best, b / lat * 1000.0)
    return best
