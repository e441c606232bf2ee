"""The fleet reconciler: one serialized loop that re-plans the whole fleet when anything changes.

Placement is global (one model's replicas change what fits next to the others), so the kopf
handlers do not reconcile objects one by one: they only wake this loop. Each pass lists every
InferenceModel and GPUNode, builds the placement Problem (with the running placement as the
starting point, so nothing moves without a reason), plans, verifies the plan, and writes only
the differences, in this order: the EndpointSlices that change (first, so an address leaves
before its copy goes: :mod:`.endpoints`), ``GPUNode.spec.assignments``, ``InferenceModel.status``,
then the Services and EndpointSlices of new models (they list no agent yet, so a new model's
``Placed`` does not wait for them) and Events. Running the pass twice, or after a restart,
writes nothing the second time. A new model alone does not need all that: an arrivals pass
(:func:`reconcile_arrivals`, :mod:`.arrivals`) places it into what the last full pass left.

Failure boundary: :meth:`FleetLoop.run` is the one edge that catches everything a pass raises.
An :class:`~.errors.OperatorError` (the API refused or timed out, a plan was rejected) is logged
with the pass number and retried after the next delay of ``loop.retry_backoff_s``; anything else
is a bug, logged with its traceback as one and counted in ``stowplan_operator_pass_failures_total
{kind="bug"}``, then retried the same way. The loop never returns; :attr:`FleetLoop.last_success`
feeds the liveness probe. Inside a pass, an object deleted between the list and its patch
(``NotFound``) is skipped and the pass asks for a re-run, never fails.

Callers: :mod:`stowplan.operator.handlers`. API access goes through the
:class:`~.cluster.Cluster` it is given (:class:`.kube.KubeCluster`, or a fake in unit tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import prometheus_client

from stowplan import api, placement
from stowplan import demands as demands_
from stowplan.api import gpunode as gn
from stowplan.api import inferencemodel as imapi
from stowplan.operator import arrivals, autoscaling, endpoints, health, inventory, moves, reconcile
from stowplan.operator.clock import SYSTEM, Clock
from stowplan.operator.cluster import Cluster, K8sNode
from stowplan.operator.errors import (
    ApiError,
    ApiUnavailable,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    OperatorError,
    PlanRejected,
)
from stowplan.operator.settings import OperatorSettings

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class PassResult:
    """What one reconciliation pass wrote."""

    nodes_patched: int
    models_patched: int
    events: int
    replicas_placed: int
    replicas_unplaced: int
    plan_seconds: float
    #: objects that vanished between the list and their patch: the next pass runs at once
    gone: int = 0
    #: what the next pass must remember (moves in flight, Kubernetes Nodes seen)
    memory: PassMemory = field(default_factory=lambda: PassMemory())
    #: seconds until the next live node turns stale or a drained copy may be removed (the loop
    #: wakes then); None: never
    next_stale_in_s: float | None = None
    #: wall seconds per phase of the pass (list, plan, desired, endpoints, nodes, models,
    #: events), in order: where a slow pass spends its time (the log line shows them)
    phases_s: tuple[tuple[str, float], ...] = ()
    #: the fleet as this pass left it, for placing new models without a full pass (None:
    #: the next new model waits for a full pass; :mod:`.arrivals`)
    view: arrivals.FleetView | None = None
    #: "full" (list, re-plan, compare) or "arrivals" (new models into the view)
    kind: str = "full"


#: called just before each write of a GPUNode's assignments (wire form), so that the watch
#: event echoing it (which may come in before the write's own answer) wakes no other pass
#: (:meth:`.wakeups.Wakeups.expect_assignments`)
OnAssignments = Callable[[str, list[dict[str, Any]]], None]


class _Yielded(Exception):
    """A routine full pass gave way to new models before writing anything."""


class _Phases:
    """Seconds spent in each phase of one pass, on the pass's clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = clock.monotonic()
        self.seen: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = self._clock.monotonic()
        self.seen.append((name, now - self._last))
        self._last = now


@dataclass(frozen=True)
class PassMemory:
    """State one pass hands to the next (in the leader's memory only)."""

    #: moves in flight (make before break), by when they started (monotonic seconds)
    moves_started_s: dict[moves.MoveKey, float] = field(default_factory=dict)
    #: Kubernetes Nodes seen so far: one of them gone means its GPUNode is evacuated
    k8s_nodes_seen: frozenset[str] = frozenset()
    #: copies held while their address drains from the model's EndpointSlice, by start time
    drains_started_s: dict[endpoints.DrainKey, float] = field(default_factory=dict)


async def reconcile_once(
    cluster: Cluster,
    settings: OperatorSettings,
    clock: Clock = SYSTEM,
    memory: PassMemory | None = None,
    on_assignments: OnAssignments | None = None,
    should_yield: Callable[[], bool] | None = None,
) -> PassResult:
    """One full pass (see the module docstring). ``should_yield``: asked before the plan and
    before the first write; True ends the pass there (nothing written) with ``_Yielded``."""
    memory = memory or PassMemory()
    phases = _Phases(clock)
    models = await cluster.list_models()
    nodes = await cluster.list_nodes()
    k8s_nodes = await cluster.list_k8s_nodes()
    services = await cluster.list_model_services()
    slices = await cluster.list_model_slices()
    now = clock.now()
    phases.done("list")
    if should_yield is not None and should_yield():
        raise _Yielded
    stale_after_s = settings.nodes.stale_after_s
    avail = health.availability(
        (n.metadata.name for n in nodes),
        {name: k.unschedulable for name, k in k8s_nodes.items()},
        memory.k8s_nodes_seen,
    )
    problem = inventory.problem(
        models,
        nodes,
        memory_reserve_mib=settings.placement.memory_reserve_mib,
        now=now,
        stale_after_s=stale_after_s,
        unavailable=avail.unavailable,
    )
    started = clock.monotonic()
    plan = await asyncio.to_thread(
        placement.plan, problem, time_limit_s=settings.placement.solver_time_limit_s
    )
    violations = placement.check_plan(problem, plan)
    if violations:
        raise PlanRejected("; ".join(str(v) for v in violations[:5]))
    plan_seconds = clock.monotonic() - started
    phases.done("plan")
    in_flight = moves.make_before_break(
        nodes,
        plan,
        live={g.node for g in problem.gpus},
        started_s=memory.moves_started_s,
        now_s=clock.monotonic(),
        timeout_s=settings.nodes.move_timeout_s,
    )
    desired = reconcile.desired_state(models, nodes, plan, keep=in_flight.keep)
    events = list(desired.events) + [_timed_out(m, old, settings) for m, old in in_flight.timed_out]
    live = {n.metadata.name for n in nodes} - set(avail.unavailable)
    live -= {n.metadata.name for n in nodes if inventory.is_stale(n, now, stale_after_s)}
    want_slices = endpoints.slices(models, nodes, desired.node_assignments, live)
    drains = endpoints.drain(
        nodes,
        desired.node_assignments,
        live=live,
        listed=slices,
        want=want_slices,
        started_s=memory.drains_started_s,
        now_s=clock.monotonic(),
        drain_s=settings.nodes.endpoint_drain_s,
    )
    node_assignments = endpoints.with_held(desired.node_assignments, drains.keep)
    phases.done("desired")
    if should_yield is not None and should_yield():
        raise _Yielded

    gone = 0
    stamp = reconcile.now_rfc3339()
    for node in nodes:
        cond = health.stale_condition(node, now, stale_after_s, stamp)
        if cond is not None:
            log.warning("GPUNode %s: %s", node.metadata.name, cond.message)
            with contextlib.suppress(NotFound):
                await cluster.set_gpunode_conditions(node.metadata.name, [cond])
    for name, why in sorted(avail.unavailable.items()):
        if any(a for n in nodes if n.metadata.name == name for a in n.spec.assignments):
            log.warning("GPUNode %s offers nothing (%s); evacuating its replicas", name, why)
    limit = settings.api.max_concurrent_writes
    gone += await _update_slices(cluster, slices, want_slices, limit)
    phases.done("slices")

    def write_node(node: api.GPUNode) -> Coroutine[Any, Any, str]:
        name = node.metadata.name
        return _write_node(cluster, name, node_assignments.get(name, []), on_assignments)

    changed = [n for n in nodes if n.spec.assignments != node_assignments.get(n.metadata.name, [])]
    gaining = _gaining(changed, node_assignments)
    outcomes = await _bounded([write_node(n) for n in changed if n.metadata.name in gaining], limit)
    # only once every gain is written: the nodes that only lose replicas
    outcomes += await _bounded(
        [write_node(n) for n in changed if n.metadata.name not in gaining], limit
    )
    nodes_patched = outcomes.count("patched")
    gone += outcomes.count("gone")
    phases.done("nodes")
    statuses = [(im, desired.model_status[inventory.model_key(im)]) for im in models]
    outcomes = await _bounded(
        [_write_model(cluster, im, st) for im, st in statuses if im.status != st], limit
    )
    models_patched = outcomes.count("patched")
    gone += outcomes.count("gone")
    phases.done("models")
    gone += await _create_endpoints(cluster, models, services, slices, want_slices, limit)
    phases.done("endpoints")
    await _post_events(cluster, models, events, limit)
    view = None
    if not (gone or in_flight.keep or drains.keep):
        view = arrivals.view_of(problem, plan, node_assignments, nodes, live, models)
    if settings.autoscaling.enabled:
        await _sync_autoscaler(cluster, settings, problem, plan, k8s_nodes)
    phases.done("events")
    return PassResult(
        nodes_patched=nodes_patched,
        models_patched=models_patched,
        events=len(events),
        replicas_placed=len(plan.assignments),
        replicas_unplaced=len(plan.unplaced),
        plan_seconds=plan_seconds,
        gone=gone,
        memory=PassMemory(in_flight.started_s, avail.seen, drains.started_s),
        next_stale_in_s=_earliest(
            health.next_stale_in_s(nodes, now, stale_after_s), drains.next_release_in_s
        ),
        phases_s=tuple(phases.seen),
        view=view,
    )


async def reconcile_arrivals(
    cluster: Cluster,
    settings: OperatorSettings,
    view: arrivals.FleetView,
    new: list[api.InferenceModel],
    clock: Clock = SYSTEM,
    on_assignments: OnAssignments | None = None,
) -> PassResult | None:
    """Place the new models ``new`` into ``view`` (see :mod:`.arrivals`): write the GPUNodes
    that gain, the new models' statuses, Services, EndpointSlices and events; ``view`` is
    updated. None (nothing written) when a full pass must place them instead."""
    phases = _Phases(clock)
    known = [im for im in new if inventory.model_key(im) in view.demands]
    if any(view.uids.get(inventory.model_key(im)) != im.metadata.uid for im in known):
        return None  # deleted and created again: the full pass releases the old replicas
    fresh = [im for im in new if inventory.model_key(im) not in view.demands]
    wanted = [inventory.demand(im) for im in fresh]
    if not all(arrivals.fits_view(d) for d in wanted):
        return None
    if not fresh:  # the last full pass placed them already
        return PassResult(0, 0, 0, 0, 0, 0.0, view=view, kind="arrivals")
    names = {d.name for d in wanted}
    problem = view.slice_problem(wanted)
    started = clock.monotonic()
    plan = await asyncio.to_thread(placement.place_models, problem, names)
    plan_seconds = clock.monotonic() - started
    if plan.unplaced:
        return None  # the full planner looks at every GPU and may preempt
    violations = await asyncio.to_thread(arrivals.check_slice, problem, plan, names)
    if violations:
        raise PlanRejected("; ".join(str(v) for v in violations[:5]))
    phases.done("plan")
    placed = [a for a in plan.assignments if a.model in names]
    by_key = {inventory.model_key(im): im for im in fresh}
    gained: dict[str, list[gn.Assignment]] = {}
    for a in placed:
        if a.node not in gained:
            gained[a.node] = list(view.node_assignments.get(a.node, []))
        gained[a.node].append(demands_.node_assignment(by_key[a.model].spec, a))
    for kept in gained.values():
        kept.sort(key=lambda a: (a.model, a.replica))
    limit = settings.api.max_concurrent_writes
    outcomes = await _bounded(
        [_write_node(cluster, n, want, on_assignments) for n, want in sorted(gained.items())],
        limit,
    )
    gone = outcomes.count("gone")
    phases.done("nodes")
    nodes = [view.nodes[n] for n in sorted(gained) if n in view.nodes]
    sub_plan = plan.model_copy(update={"assignments": tuple(placed)})
    desired = reconcile.desired_state(fresh, nodes, sub_plan)
    statuses = [(im, desired.model_status[inventory.model_key(im)]) for im in fresh]
    outcomes = await _bounded([_write_model(cluster, im, st) for im, st in statuses], limit)
    gone += outcomes.count("gone")
    phases.done("models")
    want_slices = endpoints.slices(fresh, nodes, {}, view.live)
    gone += await _create_endpoints(cluster, fresh, {}, {}, want_slices, limit)
    phases.done("endpoints")
    await _post_events(cluster, fresh, desired.events, limit)
    phases.done("events")
    view.add(wanted, placed, gained, {k: im.metadata.uid for k, im in by_key.items()})
    return PassResult(
        nodes_patched=len(gained) - gone,
        models_patched=len(fresh),
        events=len(desired.events),
        replicas_placed=len(placed),
        replicas_unplaced=0,
        plan_seconds=plan_seconds,
        gone=gone,
        phases_s=tuple(phases.seen),
        view=None if gone else view,
        kind="arrivals",
    )


async def _write_node(
    cluster: Cluster,
    name: str,
    assignments: list[gn.Assignment],
    on_assignments: OnAssignments | None,
) -> str:
    if on_assignments is not None:
        on_assignments(name, [a.wire() for a in assignments])
    try:
        await cluster.set_assignments(name, assignments)
    except NotFound:
        log.info("GPUNode %s was deleted during the pass; re-planning", name)
        return "gone"
    return "patched"


async def _write_model(
    cluster: Cluster, im: api.InferenceModel, status: imapi.InferenceModelStatus
) -> str:
    try:
        await cluster.set_model_status(im.metadata.namespace or "default", im.metadata.name, status)
    except NotFound:
        return "gone"  # deleted meanwhile: nothing to report on
    return "patched"


async def _post_events(
    cluster: Cluster,
    models: list[api.InferenceModel],
    events: list[reconcile.Event],
    limit: int,
) -> None:
    uids = {(im.metadata.namespace, im.metadata.name): im.metadata.uid for im in models}

    async def post(event: reconcile.Event) -> None:
        try:
            await cluster.post_event(event, uids.get((event.namespace, event.name)))
        except ApiError as err:  # best effort: an event is never worth a failed pass
            log.warning(
                "could not post event %s on %s/%s: %s",
                event.reason, event.namespace, event.name, err,
            )  # fmt: skip

    await _bounded([post(e) for e in events], limit)


def _earliest(*delays_s: float | None) -> float | None:
    known = [d for d in delays_s if d is not None]
    return min(known) if known else None


async def _update_slices(
    cluster: Cluster,
    listed: Mapping[endpoints.ModelRef, endpoints.ModelSlice],
    want: Mapping[endpoints.ModelRef, endpoints.ModelSlice],
    limit: int,
) -> int:
    """Write the listed EndpointSlices that differ (before any GPUNode write, so an address
    leaves before its copy goes); returns how many models vanished meanwhile."""
    outcomes = await _bounded(
        [
            _write_slice(cluster, k, s, exists=True)
            for k, s in want.items()
            if k in listed and (listed[k].port, listed[k].endpoints) != (s.port, s.endpoints)
        ],
        limit,
    )
    return outcomes.count("gone")


async def _create_endpoints(
    cluster: Cluster,
    models: list[api.InferenceModel],
    services: Mapping[endpoints.ModelRef, str | None],
    listed: Mapping[endpoints.ModelRef, endpoints.ModelSlice],
    want: Mapping[endpoints.ModelRef, endpoints.ModelSlice],
    limit: int,
) -> int:
    """Create the missing Services and EndpointSlices (after the statuses: a new model's
    address lists no agent yet, so nothing waits for it); returns how many models vanished
    meanwhile (their objects are garbage-collected with them). A Service the API server
    refuses (e.g. its ClusterIP range is full) leaves that model without an address, logged,
    and never stops the pass."""
    uids = {endpoints.ref(im): im.metadata.uid for im in models}
    refused: list[str] = []

    async def service(key: endpoints.ModelRef) -> str:
        try:
            await cluster.create_model_service(*key, uids.get(key))
        except Conflict:
            log.warning(
                "Service %s/%s exists and is not the operator's: the model has no address", *key
            )
        except NotFound:
            return "gone"  # its namespace went with the model
        except (Invalid, Forbidden, ApiUnavailable) as err:
            refused.append(f"{key[0]}/{key[1]}: {err}")
        return "ok"

    gone = await _bounded([service(k) for k in want if k not in services], limit)
    if refused:
        log.error(
            "%d Services could not be created (these models have no address): %s",
            len(refused), "; ".join(refused[:3]),
        )  # fmt: skip
    outcomes = await _bounded(
        [_write_slice(cluster, k, s, exists=False) for k, s in want.items() if k not in listed],
        limit,
    )
    return outcomes.count("gone") + gone.count("gone")


async def _write_slice(
    cluster: Cluster, key: endpoints.ModelRef, s: endpoints.ModelSlice, *, exists: bool
) -> str:
    try:
        await cluster.write_model_slice(*key, s, exists=exists)
    except (NotFound, Conflict):
        return "gone"  # the model (and its slice) went, or a racing writer: re-plan
    except Invalid as err:  # one model's address must never stop the fleet's placement
        log.error("EndpointSlice %s/%s refused: %s", *key, err)
    return "ok"


def _gaining(nodes: list[api.GPUNode], want: Mapping[str, list[gn.Assignment]]) -> set[str]:
    """Nodes that gain a replica: written before the nodes that only lose some, so a pass cut
    off half-way leaves a moving replica in two places, never in none."""
    out = set()
    for node in nodes:
        have = {(a.model, a.replica, a.gpu) for a in node.spec.assignments}
        if any((a.model, a.replica, a.gpu) not in have for a in want.get(node.metadata.name, [])):
            out.add(node.metadata.name)
    return out


async def _bounded(calls: list[Coroutine[Any, Any, _T]], limit: int) -> list[_T]:
    """Await ``calls`` with at most ``limit`` in flight; every one finishes before the first
    error (if any) is raised."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Coroutine[Any, Any, _T]) -> _T:
        async with gate:
            return await call

    results = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if not isinstance(r, BaseException)]


def _timed_out(move: moves.MoveKey, old_node: str, settings: OperatorSettings) -> reconcile.Event:
    model, replica, node, gpu = move
    namespace, name = model.split("/", 1)
    return reconcile.Event(
        namespace, name, "Warning", "MoveTimedOut",
        f"replica {replica} removed from {old_node} although its new copy on {node}/gpu{gpu} "
        f"is not Ready after {settings.nodes.move_timeout_s:g} s",
    )  # fmt: skip


async def _sync_autoscaler(
    cluster: Cluster,
    settings: OperatorSettings,
    problem: placement.Problem,
    plan: placement.Plan,
    k8s_nodes: Mapping[str, K8sNode],
) -> None:
    """Placeholder pods for replicas waiting for capacity; scale-down protection for nodes
    that host replicas, written only where the annotation listed this pass differs (a GPUNode
    without a Node has none to protect). See :mod:`.autoscaling`."""
    namespace = settings.autoscaling.namespace
    wanted = autoscaling.capacity_requests(problem, plan)[
        : settings.autoscaling.max_capacity_requests
    ]
    existing = await cluster.list_capacity_pods(namespace)
    create, delete = autoscaling.diff_pods(wanted, existing)
    for request in create:
        with contextlib.suppress(Conflict):  # already there
            await cluster.create_pod(autoscaling.placeholder_pod(request, namespace))
    for name in delete:
        with contextlib.suppress(NotFound):  # already gone
            await cluster.delete_pod(namespace, name)
    busy = autoscaling.busy_nodes(plan)
    for node, k8s in sorted(k8s_nodes.items()):
        if not autoscaling.protection_patch(k8s.protection, node in busy):
            continue
        with contextlib.suppress(NotFound):  # the Node vanished between the list and the patch
            await cluster.set_protection(node, node in busy)


class FleetMetrics:
    """The loop's Prometheus metrics, in ``registry`` (the process's default one in
    production; a fresh one per loop in tests)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self.passes = prometheus_client.Counter(
            "stowplan_operator_passes", "Fleet passes completed", registry=registry
        )
        self.failures = prometheus_client.Counter(
            "stowplan_operator_pass_failures",
            "Fleet passes that failed, by kind: api (the API server refused or timed out), "
            "plan (a plan failed verification), bug (an unexpected exception)",
            ["kind"],
            registry=registry,
        )
        self.last_success = prometheus_client.Gauge(
            "stowplan_operator_last_successful_pass_timestamp_seconds",
            "Wall time of the last completed fleet pass",
            registry=registry,
        )


def _failure_kind(err: BaseException) -> str:
    if isinstance(err, ApiError):
        return "api"
    if isinstance(err, OperatorError):
        return "plan"
    return "bug"


#: a routine (resync) full pass gives way to new models at most this many times in a row
MAX_YIELDS = 3


class FleetLoop:
    """Wakes on :meth:`poke` or :meth:`arrived` (debounced) or every ``loop.resync_s`` and runs
    one pass at a time: a full pass after a poke, a resync or a failure; an arrivals pass
    (:func:`reconcile_arrivals`) when the only news since the last pass are new models and that
    pass left a view; a full pass at once when the arrivals pass cannot place them."""

    def __init__(
        self,
        settings: OperatorSettings,
        cluster: Cluster,
        *,
        leader: Callable[[], bool] = lambda: True,
        clock: Clock = SYSTEM,
        metrics: FleetMetrics | None = None,
        on_assignments: OnAssignments | None = None,
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self._on_assignments = on_assignments
        self._leader = leader
        self._clock = clock
        self.metrics = metrics or FleetMetrics()
        self._wake = asyncio.Event()
        self.passes = 0  # completed
        self.attempts = 0  # started
        self.failures_in_a_row = 0
        self._leading_since = clock.monotonic()
        #: monotonic time of the last completed pass (None: none yet)
        self.last_success: float | None = None
        self._memory = PassMemory()
        self._next_wake_s: float | None = None
        #: why the next pass must be a full one: "change" (a watch event, a node turning stale,
        #: a failure: new models wait for it), "resync" (routine: new models may go first), None
        self._full: str | None = "change"
        self._view: arrivals.FleetView | None = None
        self._arrivals: dict[str, api.InferenceModel] = {}
        self._yields = 0  # routine full passes in a row that gave way to new models

    def poke(self) -> None:
        """Something changed: the next pass is a full one."""
        self._full = "change"
        self._wake.set()

    def arrived(self, model: api.InferenceModel) -> None:
        """A new InferenceModel (a watch ADDED event): placed by an arrivals pass if nothing
        else changed meanwhile."""
        self._arrivals[inventory.model_key(model)] = model
        self._wake.set()

    def healthy(self) -> tuple[bool, str]:
        """The liveness verdict: a leader whose last completed pass (or, before any, the moment
        it started leading) is older than ``loop.liveness_resyncs`` resync periods is stuck.
        A standby is always healthy."""
        if not self._leader():
            return True, "standby"
        since = max(self.last_success or self._leading_since, self._leading_since)
        age_s = self._clock.monotonic() - since
        limit_s = self.settings.loop.liveness_resyncs * self.settings.loop.resync_s
        what = f"last pass {age_s:.1f} s ago (limit {limit_s:g} s), {self.passes} passes"
        return age_s <= limit_s, what

    async def run(self) -> None:
        loop = self.settings.loop
        while True:
            timeout_s, why = loop.resync_s, "resync"
            if self._next_wake_s is not None and self._next_wake_s + 0.1 < timeout_s:
                timeout_s, why = self._next_wake_s + 0.1, "change"  # a node turns stale, a drain
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout_s)
            except TimeoutError:
                self._full = "change" if "change" in (why, self._full) else "resync"
            await self._clock.sleep(loop.debounce_s)  # coalesce bursts of watch events
            self._wake.clear()
            if not self._leader():
                self._leading_since = self._clock.monotonic()
                continue  # a standby replica keeps watching but never writes
            await self.run_pass()

    async def _one_pass(self) -> PassResult:
        arrived, self._arrivals = list(self._arrivals.values()), {}
        if arrived and self._view is not None and self._full != "change":
            result = await reconcile_arrivals(
                self.cluster, self.settings, self._view, arrived, self._clock,
                self._on_assignments,
            )  # fmt: skip
            if result is not None:
                if self._full is not None:
                    self._wake.set()  # the routine full pass comes next
                return result
            log.info("%d new models need a full pass", len(arrived))
        reason, self._full = self._full, None
        view, self._view = self._view, None  # until this pass completes

        def should_yield() -> bool:  # a routine pass gives way to new models a few times
            return (
                reason == "resync"
                and view is not None
                and bool(self._arrivals)
                and self._yields < MAX_YIELDS
            )

        try:
            result = await reconcile_once(
                self.cluster, self.settings, self._clock, self._memory, self._on_assignments,
                should_yield,
            )  # fmt: skip
        except _Yielded:
            self._yields += 1
            self._full, self._view = reason, view
            return await self._one_pass()
        self._yields = 0
        return result

    async def run_pass(self) -> PassResult | None:
        """One guarded pass: never raises (but CancelledError)."""
        self.attempts += 1
        number = self.attempts
        try:
            result = await self._one_pass()
        except Exception as err:
            self._full, self._view = "change", None
            kind = _failure_kind(err)
            self.metrics.failures.labels(kind).inc()
            backoff = self.settings.loop.retry_backoff_s
            delay = backoff[min(self.failures_in_a_row, len(backoff) - 1)]
            self.failures_in_a_row += 1
            if kind == "bug":
                log.exception("BUG in reconcile pass %d; retrying in %g s", number, delay)
            else:
                log.error(
                    "reconcile pass %d failed (%s: %s); retrying in %g s",
                    number, type(err).__name__, err, delay,
                )  # fmt: skip
            await self._clock.sleep(delay)
            self._wake.set()
            return None
        self.failures_in_a_row = 0
        self._view = result.view
        if result.kind == "full":
            self._memory = result.memory
            self._next_wake_s = result.next_stale_in_s
        self.passes += 1
        self.last_success = self._clock.monotonic()
        self.metrics.passes.inc()
        self.metrics.last_success.set(self._clock.now().timestamp())
        if result.gone:
            self.poke()  # something vanished mid-pass: re-plan without it now
        wrote = result.nodes_patched or result.models_patched
        slow = sum(s for _, s in result.phases_s) > 1.0  # worth a line: where the time went
        level = logging.INFO if wrote or slow else logging.DEBUG
        log.log(
            level,
            "reconcile pass %d (%s) complete: %d placed, %d unplaced, %d nodes and %d models "
            "patched, %d events, %d gone, plan %.3f s (%s)",
            number, result.kind, result.replicas_placed, result.replicas_unplaced,
            result.nodes_patched, result.models_patched, result.events, result.gone,
            result.plan_seconds,
            " ".join(f"{name} {s:.2f}" for name, s in result.phases_s),
        )  # fmt: skip
        return result
