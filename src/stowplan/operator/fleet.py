"""The fleet reconciler: one serialized loop that re-plans the whole fleet when anything changes.

Placement is global (one model's replicas change what fits next to the others), so the kopf
handlers do not reconcile objects one by one: they only wake this loop. Each pass lists every
InferenceModel and GPUNode, builds the placement Problem (with the running placement as the
starting point, so nothing moves without a reason), plans, verifies the plan, and writes only
the differences: ``GPUNode.spec.assignments``, ``InferenceModel.status`` and Events. Running the
pass twice, or after a restart, writes nothing the second time.

Callers: :mod:`stowplan.operator.handlers`. API access goes through :mod:`.kube` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from stowplan import placement
from stowplan.operator import autoscaling, inventory, kube, reconcile
from stowplan.operator.errors import OperatorError, PlanRejected

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetSettings:
    solver_time_limit_s: float = 0.0  # 0: best-fit only (milliseconds)
    memory_reserve_mib: int = 0
    stale_after_s: float = 120.0  # a node's agent silent this long loses its replicas
    namespace: str = "stowplan-system"  # where capacity-request pods go
    autoscaling: bool = True
    debounce_s: float = 0.2
    resync_s: float = 30.0
    retry_s: float = 2.0


@dataclass(frozen=True)
class PassResult:
    """What one reconciliation pass wrote."""

    nodes_patched: int
    models_patched: int
    events: int
    replicas_placed: int
    replicas_unplaced: int
    plan_seconds: float


async def reconcile_once(settings: FleetSettings) -> PassResult:
    models = await kube.list_models()
    nodes = await kube.list_nodes()
    problem = inventory.problem(
        models,
        nodes,
        memory_reserve_mib=settings.memory_reserve_mib,
        now=datetime.now(UTC),
        stale_after_s=settings.stale_after_s,
    )
    started = time.monotonic()
    plan = await asyncio.to_thread(
        placement.plan, problem, time_limit_s=settings.solver_time_limit_s
    )
    violations = placement.check_plan(problem, plan)
    if violations:
        raise PlanRejected("; ".join(str(v) for v in violations[:5]))
    plan_seconds = time.monotonic() - started
    desired = reconcile.desired_state(models, nodes, plan)

    nodes_patched = 0
    for node in nodes:
        want = desired.node_assignments.get(node.metadata.name, [])
        if node.spec.assignments != want:
            await kube.set_assignments(node.metadata.name, want)
            nodes_patched += 1
    models_patched = 0
    for im in models:
        want_status = desired.model_status[inventory.model_key(im)]
        if im.status != want_status:
            await kube.set_model_status(
                im.metadata.namespace or "default", im.metadata.name, want_status
            )
            models_patched += 1
    uids = {(im.metadata.namespace, im.metadata.name): im.metadata.uid for im in models}
    for event in desired.events:
        await kube.post_event(event, uids.get((event.namespace, event.name)))
    if settings.autoscaling:
        await _sync_autoscaler(settings, problem, plan, [n.metadata.name for n in nodes])
    return PassResult(
        nodes_patched=nodes_patched,
        models_patched=models_patched,
        events=len(desired.events),
        replicas_placed=len(plan.assignments),
        replicas_unplaced=len(plan.unplaced),
        plan_seconds=plan_seconds,
    )


async def _sync_autoscaler(
    settings: FleetSettings,
    problem: placement.Problem,
    plan: placement.Plan,
    node_names: list[str],
) -> None:
    """Placeholder pods for replicas waiting for capacity; scale-down protection for nodes
    that host replicas. See :mod:`.autoscaling`."""
    wanted = autoscaling.capacity_requests(problem, plan)
    existing = await kube.list_capacity_pods(settings.namespace)
    create, delete = autoscaling.diff_pods(wanted, existing)
    for request in create:
        await kube.create_pod(autoscaling.placeholder_pod(request, settings.namespace))
    for name in delete:
        await kube.delete_pod(settings.namespace, name)
    busy = autoscaling.busy_nodes(plan)
    for node in node_names:
        await kube.set_scale_down_disabled(node, node in busy)


class FleetLoop:
    """Wakes on :meth:`poke` (debounced) or every ``resync_s`` and runs one pass at a time."""

    def __init__(self, settings: FleetSettings, leader: Callable[[], bool] = lambda: True) -> None:
        self.settings = settings
        self._leader = leader
        self._wake = asyncio.Event()
        self.passes = 0

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.resync_s)
            await asyncio.sleep(self.settings.debounce_s)  # coalesce bursts of watch events
            self._wake.clear()
            if not self._leader():
                continue  # a standby replica keeps watching but never writes
            try:
                result = await reconcile_once(self.settings)
            except OperatorError as err:
                log.error("reconcile pass failed, retrying: %s", err)
                await asyncio.sleep(self.settings.retry_s)
                self._wake.set()
                continue
            self.passes += 1
            level = logging.INFO if result.nodes_patched or result.models_patched else logging.DEBUG
            log.log(
                level,
                "reconcile pass complete: %d placed, %d unplaced, %d nodes and %d models patched, "
                "%d events, plan %.3f s",
                result.replicas_placed, result.replicas_unplaced, result.nodes_patched,
                result.models_patched, result.events, result.plan_seconds,
            )  # fmt: skip
