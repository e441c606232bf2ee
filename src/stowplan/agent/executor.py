"""The time-sliced device executor: one per device, one worker thread, batches in EDF order.

:class:`SliceScheduler` is the pure decision (which model's batch runs next, or when to wake
up); :class:`DeviceExecutor` wraps it in a thread with a condition variable. Rules:

* A model's batch is *ready* when its queue holds a full batch (the policy's cap) or its oldest
  request has waited the policy's bounded delay.
* Among ready models the one whose oldest request has the earliest deadline runs first (EDF).
* Placement gives each model a busy budget per duty cycle (``busy_ms`` of ``duty_cycle_ms``),
  and the executor keeps it (issue 14 item 5): in each cycle (fixed windows of the duty cycle)
  a planned lane's first batch always may run, a further one only if its smoothed batch time
  fits what is left of the budget. A lane over its budget waits for the next cycle, whose
  start is its turn for what it collected (so a request waits at most a cycle for it, the
  plan's ``max(d, wait) + t``). It takes time beyond its budget (*spare* time, accounted
  apart from its budget: :attr:`Lane.spare_s`, :attr:`BatchRecord.spare`) in two cases only:
  a *backlogged* lane (more than one full batch queued: load above the plan) when no lane
  within budget has a ready batch (work-conserving), and any lane when it alone has a batch
  ready and that batch fits the cycle's *slack* (the cycle's end less now less what the
  other planned lanes may still run this cycle: :meth:`SliceScheduler.slack_s`), so no
  neighbour's planned turn moves past its cycle. The second is issue 14 item 5's "idle time
  beyond the budget only when nobody else needs it": a lone sequential client on an idle
  device is not held to the next cycle (measured: a 10 ms SLO model's p50 went from 2.4 to
  4-5 ms when it was). Spare time is GPU time the plan did not price (a lane planned at
  batch 15 that runs batches of one on idle time uses many times its budget), so
  ``tests/agent/test_plan_is_runtime.py`` holds a lane's *budgeted* time to its plan and
  prints the total apart.
* A planned lane's batch picked *off* its turn (its requests all arrived within the current
  cycle) runs only if it ends by the cycle's end, or past it by no more than the least room
  the other planned lanes' plans leave their turns (:meth:`SliceScheduler.crossing_room_s`,
  :func:`stowplan.slo.turn_room_ms`); otherwise it is *held* (:meth:`SliceScheduler.holds`)
  for the next cycle's start, which is its turn and never held. Without this a lone request
  arriving just before the cycle's end ran across it and a neighbour planned at exactly
  ``d + t = slo`` got its next turn late and shed (the cycle-end fleets of
  ``tests/agent/test_plan_is_runtime.py``: 98.7 and 98.4 % within SLO). Turns are not held,
  else a batch longer than what its turn leaves of a cycle waits cycle after cycle (``stowplan
  bench timeslice``, measured: BERT-Large 100 -> 97.9 % in the 3-model mix when turns were
  held too, and 54.9 % in the 2-model mix for an earlier attempt that deferred every batch
  crossing the end), so a held batch waits one cycle at most.
  Its held cycle counts as a wait for its turn (:attr:`Lane.gate_open_s`), so the aged rule
  below does not run it ahead of an earlier deadline.
* A planned lane's shedding margin is at most the room its plan leaves a request after its
  collection window (``slo - max(d, wait)``), so a request served as planned is not shed.
* A partial batch waiting to fill stops waiting while its oldest request can still finish in
  time (deadline less twice the margin: ``drop_margin`` x the lane's smoothed batch latency,
  at most half the SLO, once for the batch and once for a late wake-up), or at once when no
  further arrival is expected before its timer (:class:`stowplan.agent.batching.BatchQueue`).
* Under real overload (more than one request queued for a lane) the requests that can no longer
  meet their deadline (deadline < now + that margin) are failed with ``Overloaded`` before a
  batch forms (early drop, as Clockwork and Nexus do), so a backlog never makes every later
  request late too. The margin (1.2 by default) covers batch-time jitter: with the bare mean,
  under overload the oldest requests of every batch had slack of about one mean batch time,
  about half of them finished a little late, and each such batch both wasted its slots on
  late answers and made AIMD cut its cap (measured: 0.94 -> 0.99 of the best static goodput
  at 150 % Poisson load on the simulated A100, and static batching gains too).
* A lane never sheds its newest request, so a lone request (a model with an empty queue) is
  always admitted and run, late if it must be. The first version early-dropped from any
  lane, and that state was absorbing (issue 12's wedged model): a lone request held
  ``max_queue_delay`` (5 ms) for its batch to fill reached the drop test with 5 ms of slack
  against a 10 ms SLO; one slow batch under CPU contention had raised the smoothed batch time
  so that the margin was SLO/2 = 5 ms, every request was dropped, and since the estimate and
  the AIMD cap change only when a batch runs, nothing ever lowered it again. Now a lane
  always keeps a batch to run, and a lane that keeps shedding for a whole SLO with no batch
  run halves its estimate.
* A batch that has been ready for about one duty cycle runs next whatever EDF says, so the
  executor's added wait (ready to started, ``BatchRecord.wait_s``, exported as
  ``stowplan_executor_wait_seconds``) is bounded by one duty cycle while batches take the
  time their lanes' estimates say. For a lane its budget held, that wait counts from the
  start of the cycle that let it through (:attr:`Lane.gate_open_s`): waiting for its next
  turn is the plan's collection window (itself less than a cycle), and counting it made the
  aged rule run such a lane before an earlier deadline.

Callers: :mod:`stowplan.agent.serving` (real sessions) and :mod:`stowplan.agentbench.simulate` (the
pure scheduler with simulated time). Batches never run concurrently on one device.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from stowplan import slo
from stowplan.agent.batching import BatchPolicy, BatchQueue, Pending
from stowplan.agent.errors import AgentError, ExecutionError, Overloaded

Clock = Callable[[], float]

log = logging.getLogger("stowplan.agent.executor")

#: A batch runs on the submitting thread (:meth:`DeviceExecutor.try_run_inline`) only if its
#: lane's smoothed batch time is under this: that thread is the server's event loop, which
#: serves no other request while the batch runs.
INLINE_MAX_BATCH_S = 0.001

#: ... and only if it is under this share of the lane's SLO. While a batch runs inline, requests
#: that arrive wait unread in the server (the event loop is busy), where the executor cannot see
#: them, count them or shed them; at a tenth of the SLO, ten requests backed up behind inline
#: runs still meet it (a burst to a model whose batch is close to its SLO goes through the queue,
#: where it is shed with a 503).
INLINE_MAX_SLO_SHARE = 0.1

#: After an unexpected error in the device loop, wait this long before the next round, so a
#: fault that repeats cannot spin the thread (it is logged every time, and the loop goes on).
_LOOP_ERROR_PAUSE_S = 0.01

#: Relative slack of the budget test (floats summed in different orders).
_BUDGET_EPS = 1e-9

#: A planned lane's shedding margin stays this share below the room its plan leaves, so a
#: request that starts exactly when the plan says is not shed by float rounding.
_ROOM_SLACK = 1e-6


@dataclass
class Lane:
    """One model's queue on one device plus its duty-cycle budget."""

    name: str
    queue: BatchQueue[Any]
    slo_s: float
    budget_s: float = 0.0  # busy time per duty cycle from placement; 0: no budget
    priority: int = 0
    used_s: float = 0.0
    #: Smoothed latency of this lane's recent batches: a request that cannot finish by its
    #: deadline even if its batch started now is dropped instead of run late.
    est_batch_s: float = 0.0
    #: when this lane first shed requests since it last ran a batch (None: it has not): if it
    #: keeps shedding for a whole SLO with no batch run, est_batch_s is halved (once per SLO),
    #: as an estimate no batch confirms must not keep shedding
    shedding_since_s: float | None = None
    #: the start of the cycle in which this lane's queued requests were last let through its
    #: budget (-inf: never held): waiting for that cycle is the plan's own collection window,
    #: so the executor's added wait (:meth:`SliceScheduler.ready_since_s`) counts from there
    gate_open_s: float = -math.inf
    #: GPU time this lane ran beyond its budget (batches picked while over it), cumulative
    spare_s: float = 0.0
    #: its ready batch was held in the current cycle because it would have run across the
    #: cycle's end (:meth:`SliceScheduler.holds`): the next cycle's start is its turn
    held: bool = False
    #: how long the lane has run no batch and had nothing queued, in whole duty cycles
    #: (counted at cycle starts): past its SLO its smoothed batch time is stale
    #: (:meth:`SliceScheduler._left_s`)
    idle_s: float = 0.0


@dataclass
class SliceScheduler:
    """Pure EDF-with-budgets choice over lanes. ``cycle_s`` 0 disables the budgets."""

    cycle_s: float = 0.0
    lanes: dict[str, Lane] = field(default_factory=dict)
    cycle_start_s: float = 0.0
    #: early drop keeps a request only if it can finish within drop_margin x the smoothed batch
    #: time (1.0 = the bare mean, which lets jitter make the oldest requests late)
    drop_margin: float = 1.2

    def roll(self, now_s: float) -> None:
        """Start the cycle ``now_s`` falls in, if it is a later one: budgets reset."""
        if self.cycle_s > 0 and now_s >= self.cycle_start_s + self.cycle_s:
            # at least one: at now = start + cycle the quotient may round to 0.999...
            cycles = max(1, math.floor((now_s - self.cycle_start_s) / self.cycle_s))
            self.cycle_start_s += cycles * self.cycle_s
            for lane in self.lanes.values():
                if (self.over_budget(lane) or lane.held) and len(lane.queue):
                    lane.gate_open_s = self.cycle_start_s  # its requests waited for this cycle
                idle = lane.used_s <= 0 and not len(lane.queue)
                lane.idle_s = lane.idle_s + cycles * self.cycle_s if idle else 0.0
                lane.used_s = 0.0
                lane.held = False

    def planned(self, lane: Lane) -> bool:
        """Whether ``lane`` runs under a plan: a duty cycle and a busy budget per cycle."""
        return self.cycle_s > 0 and lane.budget_s > 0

    def over_budget(self, lane: Lane) -> bool:
        """Whether ``lane``'s next batch would not fit what is left of its budget in the
        current cycle (its smoothed batch time against budget less used). The first batch of
        a cycle always fits, so a planned lane runs at least once per cycle."""
        if not self.planned(lane) or lane.used_s <= 0:
            return False
        return lane.used_s + lane.est_batch_s > lane.budget_s * (1 + _BUDGET_EPS)

    @staticmethod
    def backlogged(lane: Lane) -> bool:
        """Whether more than one full batch waits in ``lane``: its load is above what its
        batch per cycle serves (at or below the planned qps, a lane served once per cycle
        holds at most one planned batch)."""
        return lane.queue.items > lane.queue.policy.cap

    def _left_s(self, lane: Lane) -> float:
        """What a planned lane may still run this cycle by its budget: the budget less what
        it used, or, before its first batch of the cycle (which always runs), the larger of
        its budget and its smoothed batch time; only its budget once it has been idle (no
        batch run, nothing queued) for a whole SLO (:attr:`Lane.idle_s`). An idle lane's
        estimate is from its last batch, however long ago (a lane that stays idle never
        refreshes it), and one inflated by a contended CPU held a lone neighbour's spare
        batches to the next cycle for as long as it stayed idle (issue 12's soak). Claiming
        just the budget as soon as the queue is empty was tried and rejected: in
        ``stowplan bench timeslice --quick`` BERT-dist4l, which runs nearly every cycle, fell
        from 97.60 to 96.78 % within SLO, its turn taken by neighbours' spare batches."""
        if not self.planned(lane):
            return 0.0
        if lane.used_s <= 0:
            if not len(lane.queue) and lane.idle_s >= lane.slo_s:
                return lane.budget_s
            return max(lane.budget_s, lane.est_batch_s)
        return max(0.0, lane.budget_s - lane.used_s)

    def slack_s(self, lane: Lane, now_s: float) -> float:
        """The time left in the current cycle that no other lane's budget claims: the
        cycle's end less ``now_s`` less what the other planned lanes may still run this
        cycle (:meth:`_left_s`). A batch of ``lane`` that fits it delays no neighbour's
        planned turn past this cycle."""
        others = sum(self._left_s(o) for o in self.lanes.values() if o is not lane)
        return self.cycle_start_s + self.cycle_s - now_s - others

    def fits_slack(self, lane: Lane, now_s: float) -> bool:
        """Whether ``lane``'s next batch (its smoothed batch time) fits :meth:`slack_s`."""
        return self.cycle_s > 0 and lane.est_batch_s <= self.slack_s(lane, now_s)

    def crossing_room_s(self, lane: Lane) -> float:
        """How far a batch of ``lane`` may run past the current cycle's end: the least room
        the other planned lanes' plans leave their turns (:func:`stowplan.slo.turn_room_ms`:
        the SLO less ``max(d, wait) + t``), inf when ``lane`` has no planned neighbour."""
        cycle_ms = self.cycle_s * 1000.0
        rooms = [
            slo.turn_room_ms(
                o.slo_s * 1000.0, cycle_ms, o.budget_s * 1000.0, o.queue.policy.max_wait_s * 1000.0
            )
            / 1000.0
            for o in self.lanes.values()
            if o is not lane and self.planned(o)
        ]
        return min(rooms, default=math.inf) * (1 - _ROOM_SLACK)

    def would_cross(self, lane: Lane, now_s: float) -> bool:
        """Whether ``lane``'s next batch (its smoothed batch time), started at ``now_s``, would
        end past the current cycle's end by more than :meth:`crossing_room_s`."""
        end_s = self.cycle_start_s + self.cycle_s
        return now_s + lane.est_batch_s > end_s + self.crossing_room_s(lane)

    def holds(self, lane: Lane, now_s: float) -> bool:
        """Whether a planned lane's batch, ready at ``now_s``, waits for the next cycle: it is
        not the lane's turn (its requests all arrived in this cycle, :meth:`_turn_s`) and it
        :meth:`would_cross` the cycle's end. At the next cycle's start it is the lane's turn,
        which is never held, so a batch waits at most one cycle and a long one is not starved;
        and no batch picked off-turn moves a neighbour's next turn later than its plan
        allows."""
        return (
            self.planned(lane)
            and len(lane.queue) > 0
            and math.isinf(self._turn_s(lane))
            and self.would_cross(lane, now_s)
        )

    def gate_s(self, lane: Lane) -> float:
        """The earliest time ``lane`` may start its next batch by its budget: the next cycle
        when it is over budget, else -inf (a backlogged lane over budget may also run on
        spare time, :meth:`pick`)."""
        return self.cycle_start_s + self.cycle_s if self.over_budget(lane) else -math.inf

    def _turn_s(self, lane: Lane) -> float:
        """When a planned lane's turn of this cycle is due: the cycle's start if its oldest
        request arrived before it (the plan runs what a lane collected by its turn; a request
        waits at most one cycle for it), else inf."""
        if not self.planned(lane) or not len(lane.queue):
            return math.inf
        return (
            self.cycle_start_s if lane.queue.oldest_arrival_s() < self.cycle_start_s else math.inf
        )

    def margin_s(self, lane: Lane) -> float:
        """How long before its deadline a request must start: drop_margin x the smoothed batch
        time, capped at half the SLO (a model slower than its SLO still answers, late). For a
        planned lane also at most what the plan leaves a request after its collection window
        (``slo - max(d, wait)``, :func:`stowplan.slo.planned_latency_ms`), but not under the
        bare smoothed batch time: a request the plan serves in time is never shed, however
        little slack the plan leaves."""
        margin = min(self.drop_margin * lane.est_batch_s, 0.5 * lane.slo_s)
        if self.cycle_s > 0 and lane.budget_s > 0:
            window_s = max(self.cycle_s, lane.queue.policy.max_wait_s)
            room_s = (lane.slo_s - window_s) * (1 - _ROOM_SLACK)
            margin = min(margin, max(lane.est_batch_s, room_s))
        return margin

    def ready_at_s(self, lane: Lane) -> float:
        """When the lane's next batch may run: the queue's own rule (full, or its bounded wait
        over), but never later than the oldest deadline less twice the margin, so a partial
        batch stops waiting to fill while its oldest request can still finish in time even if
        the device thread wakes up to one margin late (then it is not yet shed either)."""
        ready = lane.queue.ready_at_s(lane.est_batch_s)
        if math.isinf(ready):
            return ready
        deadline_s = lane.queue.oldest_deadline_s() - 2.0 * self.margin_s(lane)
        return min(ready, deadline_s, self._turn_s(lane))

    def ready_since_s(self, lane: Lane) -> float:
        """When the lane's next batch became ready (the start of the executor's added wait),
        not before the cycle its budget let it through (:attr:`Lane.gate_open_s`)."""
        since = lane.queue.ready_since_s(lane.est_batch_s)
        if math.isinf(since):
            return since
        deadline_s = lane.queue.oldest_deadline_s() - 2.0 * self.margin_s(lane)
        return max(min(since, deadline_s, self._turn_s(lane)), lane.gate_open_s)

    def expire(self, now_s: float) -> list[tuple[Lane, Pending[Any]]]:
        """Shed the queued requests that would miss their deadline even if their batch
        started now. Never a lane's newest request (:meth:`BatchQueue.shed`): a lone request
        is run (late if it must be), never refused."""
        out: list[tuple[Lane, Pending[Any]]] = []
        for lane in self.lanes.values():
            dead = lane.queue.shed(now_s + self.margin_s(lane))
            if not dead:
                continue
            if lane.shedding_since_s is None:
                lane.shedding_since_s = now_s
            elif now_s - lane.shedding_since_s >= lane.slo_s:  # no batch ran for a whole SLO
                lane.est_batch_s *= 0.5
                lane.shedding_since_s = now_s
            out += [(lane, p) for p in dead]
        return out

    def pick(self, now_s: float) -> tuple[Lane | None, float]:
        """Return (lane to run now, inf) or (None, time at which some lane may run).

        A lane within its budget whose batch is ready runs first (EDF among them, a batch
        ready for about a cycle before the others); a lane over its budget waits for the next
        cycle, unless it is backlogged and no lane within budget has a ready batch (then it
        takes the spare time, work-conserving), or it alone has a batch ready and that batch
        fits the cycle's slack (:meth:`fits_slack`: idle time nobody else's plan claims).
        The caller must only ask while the device is idle. Whether a pick is spare time:
        :meth:`over_budget` of the lane picked, before its batch runs."""
        self.roll(now_s)
        ready_at = {name: self.ready_at_s(lane) for name, lane in self.lanes.items()}
        ready = [lane for lane in self.lanes.values() if ready_at[lane.name] <= now_s]
        allowed = []
        for lane in ready:
            if self.over_budget(lane):
                continue
            if self.holds(lane, now_s):
                lane.held = True  # its turn is the next cycle's start
                continue
            allowed.append(lane)
        if not allowed:
            spare = [lane for lane in ready if self.over_budget(lane) and self.backlogged(lane)]
            if spare:
                return self._edf(spare), math.inf
            if len(ready) == 1 and self.fits_slack(ready[0], now_s):
                return ready[0], math.inf  # alone on an idle device, within the cycle's slack
            return None, min((self._wake_s(lane, ready_at[lane.name], now_s) for lane in
                              self.lanes.values()), default=math.inf)  # fmt: skip
        if self.cycle_s > 0 and len(allowed) > 1:
            # Bound the executor's added wait by one duty cycle: a batch that has waited
            # nearly a cycle (a cycle less the longest batch another ready lane may run) goes
            # first, whatever EDF says; the longest-waiting one first.
            longest = max(lane.est_batch_s for lane in allowed)
            since = {lane.name: self.ready_since_s(lane) for lane in allowed}
            aged = [lane for lane in allowed if now_s - since[lane.name] >= self.cycle_s - longest]
            if aged:
                return min(aged, key=lambda lane: since[lane.name]), math.inf
        return self._edf(allowed), math.inf

    def _wake_s(self, lane: Lane, ready_at_s: float, now_s: float) -> float:
        """When ``lane`` may run next (none may now): when its batch is ready, not before its
        budget lets it (:meth:`gate_s`); a planned lane with requests queued is due at the next
        cycle's start at the latest (its turn, :meth:`_turn_s`)."""
        wake = max(ready_at_s, self.gate_s(lane))
        end_s = self.cycle_start_s + self.cycle_s
        if ready_at_s < end_s and self.holds(lane, max(now_s, ready_at_s)):
            wake = max(wake, end_s)  # held off-turn: its turn is the next cycle's start
        if now_s < ready_at_s < wake and lane.est_batch_s <= self.slack_s(lane, ready_at_s):
            wake = ready_at_s  # its batch may fit the slack once ready (pick decides then)
        if self.planned(lane) and len(lane.queue):
            wake = min(wake, self.cycle_start_s + self.cycle_s)
        return wake

    @staticmethod
    def _edf(lanes: Sequence[Lane]) -> Lane:
        """The lane whose oldest request has the earliest deadline (higher priority on ties)."""
        return min(lanes, key=lambda lane: (lane.queue.oldest_deadline_s(), -lane.priority))

    def charge(self, lane: Lane, busy_s: float, spare: bool = False) -> None:
        """Account a batch of ``busy_s`` to ``lane``'s cycle (and to its spare time when it
        ran beyond the budget) and fold it into its smoothed batch time."""
        lane.used_s += busy_s
        if spare:
            lane.spare_s += busy_s
        lane.shedding_since_s = None
        lane.est_batch_s = (
            busy_s if lane.est_batch_s == 0 else (0.8 * lane.est_batch_s + 0.2 * busy_s)
        )


@dataclass(frozen=True)
class BatchRecord:
    """What one batch did: handed to the lane's observer (metrics, stats)."""

    model: str
    items: int
    requests: int
    start_s: float
    latency_s: float
    queue_s: Sequence[float]
    ok: bool
    #: the executor's added wait: from when the batch was ready to run until it started
    wait_s: float = 0.0
    #: the device's duty cycle, the bound on ``wait_s`` (0: no duty cycle, no bound)
    cycle_s: float = 0.0
    #: whether the batch ran on spare time, beyond its lane's budget
    spare: bool = False


RunBatch = Callable[[list[Any]], Sequence[Any]]
Observer = Callable[[BatchRecord], None]


@dataclass
class _Job:
    payload: Any
    future: Future[Any]


def _settle(fut: Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    """Settle a caller's future unless it is already done: a caller may cancel its future
    while the request is queued or running (``Future.cancel`` on a pending future), and
    settling a cancelled ``concurrent.futures.Future`` raises, which must not reach the device
    thread. The check and the set race with a cancel, so the error is caught too."""
    if fut.done():
        return
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except InvalidStateError:  # cancelled between the check and the set
        pass


class DeviceExecutor:
    """Runs the batches of every model resident on one device, one at a time, in one thread."""

    def __init__(
        self,
        device_index: int,
        cycle_ms: float = 0.0,
        drop_expired: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        self.device_index = device_index
        self.clock = clock
        self.drop_expired = drop_expired
        self._sched = SliceScheduler(cycle_s=cycle_ms / 1000.0, cycle_start_s=clock())
        self._runs: dict[str, tuple[RunBatch, Observer | None]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.busy_s_total = 0.0
        self._busy_marks: list[tuple[float, float]] = []  # (end time, busy seconds)
        #: a batch is running (on the device thread or inline on a caller's): no other starts
        self._running = False

    # -- configuration -------------------------------------------------------------------
    @property
    def cycle_ms(self) -> float:
        return self._sched.cycle_s * 1000.0

    def queued_items(self, name: str) -> int:
        """Items waiting in ``name``'s lane (0 if it has none); a hint, read without the lock."""
        lane = self._sched.lanes.get(name)
        return lane.queue.items if lane is not None else 0

    def set_cycle_ms(self, cycle_ms: float) -> None:
        with self._cond:
            self._sched.cycle_s = cycle_ms / 1000.0

    def add_lane(
        self,
        name: str,
        policy: BatchPolicy,
        slo_ms: float,
        run: RunBatch,
        observer: Observer | None = None,
        budget_ms: float = 0.0,
        priority: int = 0,
        max_requests: int = 4096,
    ) -> Lane:
        lane = Lane(
            name, BatchQueue(policy, max_requests), slo_ms / 1000.0, budget_ms / 1000.0, priority
        )
        with self._cond:
            self._sched.lanes[name] = lane
            self._runs[name] = (run, observer)
            self._cond.notify_all()
        return lane

    def remove_lane(self, name: str) -> None:
        with self._cond:
            lane = self._sched.lanes.pop(name, None)
            self._runs.pop(name, None)
        if lane is not None:
            for p in lane.queue.drain():
                _settle(
                    p.payload.future,
                    exc=Overloaded(f"model {name} was unloaded", reason="unloading"),
                )

    def lane(self, name: str) -> Lane | None:
        return self._sched.lanes.get(name)

    # -- requests ------------------------------------------------------------------------
    def submit(self, name: str, payload: Any, items: int = 1) -> Future[Any]:
        fut: Future[Any] = Future()
        now = self.clock()
        with self._cond:
            lane = self._sched.lanes.get(name)
            if lane is None:
                raise Overloaded(
                    f"model {name} has no lane on device {self.device_index}", reason="unloading"
                )
            lane.queue.push(Pending(_Job(payload, fut), items, now, now + lane.slo_s))
            self._cond.notify()
        return fut

    def try_run_inline(self, name: str, payload: Any, items: int = 1) -> Future[Any] | None:
        """Run one request on the calling thread now, if that is what the device thread
        would do anyway, and return its settled future; else None (then :meth:`submit` it).

        It runs inline only when no batch is running (on the device thread or another
        caller's), ``name``'s lane has nothing queued, the request alone would make a batch
        ready at once (:meth:`BatchQueue.ready_alone`: batching ``none``, or a batching lane
        that expects no fill before its bounded wait ends, as at low load; then its arrival is
        counted in the queue's statistics as a push would), may run now by its budget
        (within it, or alone with a batch ready and within the cycle's slack:
        :meth:`SliceScheduler.pick`'s rules) and
        its smoothed batch time is known and under :data:`INLINE_MAX_BATCH_S` and
        :data:`INLINE_MAX_SLO_SHARE` of its SLO. The device
        thread waits while it runs, and the batch is charged, observed and fed to the policy
        exactly as the device thread's are. This saves the two thread hops of a lone
        request (caller -> device thread -> caller's event loop); the price is that the
        calling thread (the server's event loop) is blocked for the run, which is why only a
        batch known to take under a millisecond runs this way."""
        now = self.clock()
        with self._cond:
            lane = self._sched.lanes.get(name)
            if (
                lane is None
                or self._thread is None
                or self._stopping
                or self._running
                or len(lane.queue)
                or not 0 < lane.est_batch_s < INLINE_MAX_BATCH_S
                or lane.est_batch_s > INLINE_MAX_SLO_SHARE * lane.slo_s
                or not lane.queue.ready_alone(items, now, lane.est_batch_s)
            ):
                return None
            sched = self._sched
            sched.roll(now)
            if any(
                sched.ready_at_s(other) <= now
                for other in sched.lanes.values()
                if other is not lane
            ):
                return None  # the device thread has a batch to run first
            spare = sched.over_budget(lane)
            if spare and not sched.fits_slack(lane, now):
                return None
            if sched.planned(lane) and sched.would_cross(lane, now):
                return None  # off-turn across the cycle's end: the device thread holds it
            lane.queue.note_arrival(now)
            fut: Future[Any] = Future()
            batch = [Pending(_Job(payload, fut), items, now, now + lane.slo_s)]
            run, observer = self._runs[name]
            cycle_s = sched.cycle_s
            self._running = True
        self._run(lane, batch, run, observer, now, cycle_s, spare)
        return fut

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(
                target=self._loop, name=f"stowplan-device-{self.device_index}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def utilisation(self, window_s: float = 10.0) -> float:
        """Fraction of the last ``window_s`` seconds this device spent running batches."""
        now = self.clock()
        with self._cond:
            self._busy_marks = [(t, b) for t, b in self._busy_marks if t >= now - window_s]
            busy = sum(b for _, b in self._busy_marks)
        return min(1.0, busy / window_s)

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        """The device thread: :meth:`_round` until stopped. An unexpected error in a round
        (a bug, an observer that raises) is logged and the thread keeps serving: a device
        thread that dies leaves every later request of its models waiting forever."""
        while not self._stopping:
            try:
                if not self._round():
                    return
            except Exception:
                log.exception("device %d executor: unexpected error; serving on", self.device_index)
                time.sleep(_LOOP_ERROR_PAUSE_S)

    def _round(self) -> bool:
        """Wait for a batch to be due, run it; False when the executor is stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return False
                if self._running:  # a caller runs a batch inline (try_run_inline)
                    self._cond.wait()
                    continue
                now = self.clock()
                if self.drop_expired:
                    for dead_lane, p in self._sched.expire(now):
                        _settle(
                            p.payload.future,
                            exc=Overloaded(
                                f"request for {dead_lane.name} could not finish within its "
                                f"{dead_lane.slo_s * 1000:.0f} ms SLO: "
                                f"{len(dead_lane.queue)} more queued behind it",
                                reason="deadline",
                                queue_empty=len(dead_lane.queue) == 0,
                            ),
                        )
                picked, wake = self._sched.pick(now)
                if picked is not None:
                    lane = picked
                    ready_s = self._sched.ready_since_s(lane)
                    cycle_s = self._sched.cycle_s
                    spare = self._sched.over_budget(lane)
                    batch = lane.queue.take()
                    run, observer = self._runs[lane.name]
                    self._running = True
                    break
                timeout = None if math.isinf(wake) else max(0.0, wake - now)
                self._cond.wait(timeout)
        self._run(lane, batch, run, observer, ready_s, cycle_s, spare)
        return True

    def _run(
        self,
        lane: Lane,
        batch: list[Pending[Any]],
        run: RunBatch,
        observer: Observer | None,
        ready_s: float,
        cycle_s: float,
        spare: bool = False,
    ) -> None:
        """Run a taken ``batch`` (``_running`` is set), charge the lane, feed the policy,
        clear ``_running``, call the observer, then settle the batch's futures: a caller
        that has its answer finds its batch counted in the model's statistics and metrics
        (the observer's; settling first let a client read them before the device thread
        recorded the batch)."""
        try:
            record, outcomes = self._run_batch(lane, batch, run, ready_s, cycle_s, spare)
        except BaseException as exc:  # a bookkeeping bug: no caller may wait forever
            err = ExecutionError(f"batch bookkeeping failed: {type(exc).__name__}: {exc}")
            for p in batch:
                _settle(p.payload.future, exc=err)
            raise
        finally:
            with self._cond:
                self._running = False
                # the device thread has work only if some lane holds requests (with every
                # queue empty it would wait for a submit anyway); waking it after each
                # inline run cost a thread switch and a GIL hand-over per request
                if any(len(other.queue) for other in self._sched.lanes.values()):
                    self._cond.notify_all()
        try:
            if observer is not None:
                observer(record)
        finally:
            for fut, result, error in outcomes:
                _settle(fut, result, error)

    def _run_batch(
        self,
        lane: Lane,
        batch: list[Pending[Any]],
        run: RunBatch,
        ready_s: float,
        cycle_s: float,
        spare: bool,
    ) -> tuple[BatchRecord, list[tuple[Future[Any], Any, BaseException | None]]]:
        """Run ``batch`` and do its bookkeeping; its record and each future's outcome
        (result, or the one error fanned out to every caller), not yet settled."""
        start = self.clock()
        ok = True
        outcomes: list[tuple[Future[Any], Any, BaseException | None]]
        try:
            results = run([p.payload.payload for p in batch])
            if len(results) != len(batch):
                raise ExecutionError(
                    f"batch function returned {len(results)} results for {len(batch)} requests"
                )
        except Exception as exc:  # fan the one failure out to every caller (Ray Serve's rule)
            ok = False
            err = exc if isinstance(exc, AgentError) else ExecutionError(str(exc))
            outcomes = [(p.payload.future, None, err) for p in batch]
        else:
            outcomes = [(p.payload.future, r, None) for p, r in zip(batch, results, strict=True)]
        end = self.clock()
        busy = end - start
        items = sum(p.items for p in batch)
        with self._cond:
            self._sched.charge(lane, busy, spare)
            self.busy_s_total += busy
            self._busy_marks.append((end, busy))
            if len(self._busy_marks) > 100_000:
                del self._busy_marks[:50_000]
            if ok:
                missed = any(end > p.deadline_s for p in batch)
                lane.queue.policy.observe(items, busy * 1000.0, missed)
        record = BatchRecord(
            lane.name,
            items,
            len(batch),
            start,
            busy,
            [start - p.arrival_s for p in batch],
            ok,
            max(0.0, start - ready_s) if math.isfinite(ready_s) else 0.0,
            cycle_s,
            spare,
        )
        return record, outcomes
