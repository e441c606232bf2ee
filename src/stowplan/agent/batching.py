"""Batch-size policies (AIMD, static, none, Triton-style) and the per-model batch queue.

Everything here is pure and single-threaded: no locks, no clocks read, no I/O. Time is passed in
as seconds from an injected monotonic clock, so the same code drives the real executor
(:mod:`stowplan.agent.executor`) and the discrete-event simulator
(:mod:`stowplan.agentbench.simulate`), and is unit-tested with a fake clock.

AIMD (Clipper, NSDI'17; AI-System 8.4): after each batch, if its latency exceeded the target
(or one of its requests missed its SLO end to end) the cap is cut multiplicatively (x0.9 by
default, at least by one item); if it stayed under the target *and the batch filled the cap*
the cap grows by a fixed step. The end-to-end miss signal catches what batch latency alone
cannot see: under a burst, requests already waited in the queue, and smaller batches get the
remaining ones out within their deadline (measured: it lifts AIMD from 0.92-0.94 to 0.97-0.99
of the best static batch's goodput on the bursty Azure code trace). Growing only on full
batches is the TCP "cwnd-limited" rule: a batch of 3 under a cap of 40 says nothing about
whether 41 would be fast enough, and a cap inflated during a quiet spell would make the next
burst miss its SLO for many batches while the cap decays 10 % at a time.

Under sustained overload the miss signal used to fire on nearly every batch (0.94-0.97 of the
best static goodput at 150 % load): the scheduler's early drop kept requests whose slack was
just the *mean* batch time, so with any jitter the oldest requests of each batch finished a
little late and the cap was cut although the batch size was not the cause. The fix is in the
early drop (:class:`stowplan.agent.executor.SliceScheduler`, ``drop_margin``), not here: with a
safety margin there, misses again mean "the batch or the queue is too slow", and the controller
keeps Clipper's plain rule. A queue-aware variant (ignore misses while the backlog exceeds the
cap) was measured too and rejected: it fixes sustained overload but loses 5-7 % on the bursty
code trace, where the miss-triggered cuts are what drains a burst in time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from stowplan import slo
from stowplan.agent.config import BatchingConfig, Policy
from stowplan.agent.errors import Overloaded

T = TypeVar("T")


class BatchPolicy(Protocol):
    """Decides how many items a batch may hold and how long to wait for it to fill."""

    @property
    def cap(self) -> int: ...

    @property
    def max_wait_s(self) -> float: ...

    def observe(self, batch_items: int, latency_ms: float, missed: bool = False) -> None: ...


class AimdController:
    """Clipper's additive-increase / multiplicative-decrease batch cap (pure)."""

    def __init__(
        self,
        max_batch: int,
        target_ms: float,
        step: int = 1,
        decrease: float = 0.9,
        initial: int = 1,
        max_wait_s: float = 0.005,
    ) -> None:
        if max_batch < 1 or step < 1 or not 0 < decrease < 1 or target_ms <= 0:
            raise ValueError("need max_batch >= 1, step >= 1, 0 < decrease < 1, target_ms > 0")
        self.max_batch = max_batch
        self.target_ms = target_ms
        self.step = step
        self.decrease = decrease
        self._cap = max(1, min(initial, max_batch))
        self._max_wait_s = max_wait_s

    @property
    def cap(self) -> int:
        return self._cap

    @property
    def max_wait_s(self) -> float:
        return self._max_wait_s

    def observe(self, batch_items: int, latency_ms: float, missed: bool = False) -> None:
        if latency_ms > self.target_ms or missed:
            self._cap = max(1, min(self._cap - 1, math.floor(self._cap * self.decrease)))
        elif batch_items >= self._cap:
            self._cap = min(self.max_batch, self._cap + self.step)


@dataclass
class FixedPolicy:
    """A constant cap: ``static`` (cap = chosen size), ``triton`` (cap = max batch) and
    ``none`` (cap 1, no wait) are all this with different numbers."""

    fixed_cap: int
    wait_s: float = 0.0

    @property
    def cap(self) -> int:
        return self.fixed_cap

    @property
    def max_wait_s(self) -> float:
        return self.wait_s

    def observe(self, batch_items: int, latency_ms: float, missed: bool = False) -> None:
        return None


def derive_target_ms(
    slo_ms: float, duty_cycle_ms: float = 0.0, busy_ms: float = 0.0, max_wait_ms: float = 0.0
) -> float:
    """AIMD's per-batch latency target from the SLO: :func:`stowplan.slo.batch_target_ms`, the
    longest batch with which a request still meets ``slo_ms`` under the queueing the plan
    assumes (a request waits for its model's running batch and the other models' slices, or
    for the bounded wait, then runs in the next batch; alone on a device with no wait, slo / 2).
    The same formula placement uses, so the batch the plan budgeted is never above the target.
    """
    return slo.batch_target_ms(slo_ms, duty_cycle_ms, busy_ms, max_wait_ms)


def make_policy(
    cfg: BatchingConfig,
    max_batch: int,
    slo_ms: float,
    duty_cycle_ms: float = 0.0,
    busy_ms: float = 0.0,
    planned_batch: int = 0,
) -> BatchPolicy:
    """The policy ``cfg`` names; AIMD starts at ``planned_batch`` (the plan's batch; 0: 1)."""
    wait_s = cfg.max_queue_delay_ms / 1000.0
    if cfg.policy is Policy.AIMD:
        target = cfg.target_batch_ms or derive_target_ms(
            slo_ms, duty_cycle_ms, busy_ms, cfg.max_queue_delay_ms
        )
        return AimdController(
            max_batch,
            target,
            cfg.additive_step,
            cfg.multiplicative_decrease,
            initial=max(1, planned_batch),
            max_wait_s=wait_s,
        )
    if cfg.policy is Policy.STATIC:
        return FixedPolicy(min(max_batch, cfg.static_batch_size or 1), wait_s)
    if cfg.policy is Policy.TRITON:
        return FixedPolicy(max_batch, wait_s)
    return FixedPolicy(1, 0.0)


@dataclass
class Pending(Generic[T]):
    """One queued request: ``items`` batch rows, answered by ``deadline_s`` (SLO)."""

    payload: T
    items: int
    arrival_s: float
    deadline_s: float


@dataclass
class BatchQueue(Generic[T]):
    """FIFO of requests for one model; forms batches under a policy's cap and bounded wait.

    The bounded wait is spent only when it can buy something: a partial batch waits for more
    requests only while requests have been overlapping (recent arrivals found others queued)
    and, from the smoothed gap between arrivals, at least one more is expected before its
    timer; otherwise it is ready at once. A sequential client (the next request is sent only
    after this one is answered) can never fill a batch, and waiting the full
    ``max_queue_delay`` for it used to cost it half of a 10 ms SLO on every request. Under
    load, requests queue behind running batches, the overlap appears, and the wait is back.
    Given the lane's smoothed batch time (the executor passes it), a fill is also not waited
    for when the next arrival is expected after a batch started now would have finished: the
    device would be idle when it came, so waiting buys no throughput (the example MLP on a
    CPU: 0.1 ms batches, a planned 6 ms wait in a 10 ms SLO, arrivals 3 ms apart at 300/s).
    """

    policy: BatchPolicy
    max_requests: int = 4096
    _q: deque[Pending[T]] = field(default_factory=deque)
    _items: int = 0
    #: smoothed gap between arrivals (EWMA, 0.2 weight on the newest); inf until two arrive
    gap_s: float = math.inf
    #: smoothed fraction of arrivals that found the queue non-empty (EWMA, 0.2 on the newest)
    overlap: float = 0.0
    _last_arrival_s: float = -math.inf

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[Pending[T]]:
        return iter(self._q)

    @property
    def items(self) -> int:
        return self._items

    def push(self, pending: Pending[T]) -> None:
        if len(self._q) >= self.max_requests:
            raise Overloaded(
                f"queue full ({self.max_requests} requests waiting)", reason="queue_full"
            )
        self.note_arrival(pending.arrival_s)
        self._q.append(pending)
        self._items += pending.items

    def _stats_after(self, arrival_s: float) -> tuple[float, float]:
        """(gap_s, overlap) once an arrival at ``arrival_s`` is counted."""
        gap_s = self.gap_s
        if math.isfinite(self._last_arrival_s):
            gap = max(0.0, arrival_s - self._last_arrival_s)
            gap_s = gap if math.isinf(gap_s) else 0.8 * gap_s + 0.2 * gap
        return gap_s, 0.8 * self.overlap + (0.2 if self._q else 0.0)

    def note_arrival(self, arrival_s: float) -> None:
        """Count an arrival in the statistics that decide whether a batch waits to fill
        (:meth:`push` does; so does a request that runs without queueing,
        :meth:`stowplan.agent.executor.DeviceExecutor.try_run_inline`)."""
        self.gap_s, self.overlap = self._stats_after(arrival_s)
        self._last_arrival_s = max(self._last_arrival_s, arrival_s)

    def ready_alone(self, items: int, arrival_s: float, busy_s: float = 0.0) -> bool:
        """Whether a request of ``items`` arriving at ``arrival_s`` would, pushed into this
        queue while it is empty, make a batch ready at once (:meth:`ready_at_s` with the same
        ``busy_s`` at or before its arrival): it fills the cap, or the policy never waits, or
        no fill (worth it) is expected."""
        wait_s = self.policy.max_wait_s
        if items >= self.policy.cap or wait_s <= 0:
            return True
        gap_s, overlap = self._stats_after(arrival_s)
        next_s = max(self._last_arrival_s, arrival_s) + gap_s
        return (
            overlap < 0.1
            or next_s > arrival_s + wait_s
            or (busy_s > 0 and next_s > arrival_s + busy_s)
        )

    def oldest_deadline_s(self) -> float:
        return self._q[0].deadline_s if self._q else math.inf

    def oldest_arrival_s(self) -> float:
        return self._q[0].arrival_s if self._q else math.inf

    def ready_at_s(self, busy_s: float = 0.0) -> float:
        """When a batch may be dispatched: now (-inf) if the cap is reached; the oldest
        request's arrival if requests have not been overlapping (``overlap`` under 0.1), or no
        further arrival is expected before its bounded wait ends, or (``busy_s`` > 0: the
        lane's smoothed batch time) the next arrival is expected after a batch started at
        that arrival would have finished (the device would be idle when it comes, so a fill
        buys no throughput, only latency); else that arrival + max_wait; +inf when empty."""
        if not self._q:
            return math.inf
        if self._items >= self.policy.cap:
            return -math.inf
        head = self._q[0].arrival_s
        timer = head + self.policy.max_wait_s
        next_s = self._last_arrival_s + self.gap_s
        if self.overlap < 0.1 or next_s > timer or (busy_s > 0 and next_s > head + busy_s):
            return head  # no fill expected in time (or none worth it): waiting only adds latency
        return timer

    def ready_since_s(self, busy_s: float = 0.0) -> float:
        """When the next batch became dispatchable: the arrival that completed a full batch,
        else :meth:`ready_at_s` (for the executor's added-wait metric)."""
        if self._items < self.policy.cap:
            return self.ready_at_s(busy_s)
        items = 0
        for p in self._q:
            items += p.items
            if items >= self.policy.cap:
                return p.arrival_s
        return self._q[-1].arrival_s  # unreachable: the loop reaches the cap

    def expire(self, now_s: float) -> list[Pending[T]]:
        """Remove and return the requests whose deadline has passed (they cannot meet the SLO)."""
        dead = [p for p in self._q if p.deadline_s <= now_s]
        if dead:
            self._q = deque(p for p in self._q if p.deadline_s > now_s)
            self._items -= sum(p.items for p in dead)
        return dead

    def shed(self, deadline_before_s: float) -> list[Pending[T]]:
        """Remove and return the queued requests with a deadline at or before
        ``deadline_before_s``, except the newest one: a lone request is never shed, and after
        shedding the lane always has a batch to run, whose latency and result refresh the
        estimates that drive the shedding (so no state of theirs is absorbing). Keeping the
        newest *batch* instead was tried and rejected: with a large cap (the Triton-style
        policy, cap = maxBatch) a whole queue of doomed requests then ran late, and its goodput
        at 150 % load fell from 200 to 13 req/s in ``stowplan bench batching --quick``."""
        if len(self._q) < 2:
            return []
        keep_from = len(self._q) - 1
        dead = [
            p for i, p in enumerate(self._q) if i < keep_from and p.deadline_s <= deadline_before_s
        ]
        if dead:
            gone = {id(p) for p in dead}
            self._q = deque(p for p in self._q if id(p) not in gone)
            self._items -= sum(p.items for p in dead)
        return dead

    def take(self) -> list[Pending[T]]:
        """Pop the next batch: requests in arrival order while their items fit the cap (the first
        request always goes, even if it alone is larger than the cap)."""
        cap = self.policy.cap
        batch: list[Pending[T]] = []
        items = 0
        while self._q and (not batch or items + self._q[0].items <= cap):
            p = self._q.popleft()
            batch.append(p)
            items += p.items
        self._items -= items
        return batch

    def drain(self) -> list[Pending[T]]:
        """Remove and return every queued request."""
        out = list(self._q)
        self._q.clear()
        self._items = 0
        return out
