"""kopf handlers: thin glue that starts the fleet loop and wakes it on every watch event.

Run with ``kopf run --standalone -m stowplan.operator --all-namespaces``. The handlers hold no
logic: placement and status computation live in :mod:`.fleet` and the pure modules it calls.
A model's ADDED event hands the parsed model to the loop (an arrivals pass places it without
a full pass); every other change that matters pokes it.
The settings are read once here (:meth:`.settings.OperatorSettings.from_env`). ``on.event``
handlers store no progress on the objects, so the operator never writes to InferenceModel spec
or metadata (GitOps tools see no drift). The background tasks are watched: if one of them ever
ends (it never should: the fleet loop catches everything at its edge), the process exits with
status 70 so that the Deployment restarts it, instead of running on with nothing placing. The
liveness probe (``--liveness``) fails when the leader's loop has not completed a pass for
``loop.liveness_resyncs`` resync periods.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import kopf
import prometheus_client

from stowplan import api, placement
from stowplan.api import gpunode, inferencemodel
from stowplan.operator import fleet, kube, leadership, wakeups
from stowplan.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

#: The exit status when a background task ends (EX_SOFTWARE).
EXIT_TASK_ENDED = 70


def _exit_if_ended(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return  # kopf's cleanup cancels them on a normal stop
    err = task.exception()
    if err is None and task.get_name() == "stowplan-warm-up":
        return  # the one task that is meant to finish
    log.critical("background task %s ended (%r); exiting", task.get_name(), err, exc_info=err)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_TASK_ENDED)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    settings.watching.server_timeout = 300  # re-establish long watches (kopf#585)
    settings.posting.level = 20  # INFO and above become events
    ours = OperatorSettings.from_env()
    log.info("settings: %s", ours.model_dump_json())
    cluster = kube.KubeCluster(
        kube.api_client(connections=ours.api.max_concurrent_writes + 4),
        request_timeout_s=ours.api.request_timeout_s,
    )
    memo.elector = leadership.Elector(
        read=cluster.read_lease,
        write=cluster.write_lease,
        namespace=ours.autoscaling.namespace,
        name=ours.leader.lease_name,
        identity=ours.leader.identity,
        lease_duration_s=ours.leader.lease_duration_s,
        renew_s=ours.leader.renew_s,
    )
    if ours.metrics.port:
        prometheus_client.start_http_server(ours.metrics.port)
    memo.wakeups = wakeups.Wakeups()  # only events that change what a pass reads wake it
    memo.fleet = fleet.FleetLoop(
        ours,
        cluster,
        leader=lambda: memo.elector.is_leader,
        metrics=fleet.FleetMetrics(prometheus_client.REGISTRY),
        on_assignments=memo.wakeups.expect_assignments,  # its own writes wake no pass
    )
    # compile/load the numba kernels now, not inside the first plan's time budget
    search = ours.placement.solver_time_limit_s > 0
    memo.tasks = [
        asyncio.create_task(asyncio.to_thread(placement.warm_up, search), name="stowplan-warm-up"),
        asyncio.create_task(memo.elector.run(), name="stowplan-leader-election"),
        asyncio.create_task(memo.fleet.run(), name="stowplan-fleet"),
        asyncio.create_task(_poke_on_leading(memo), name="stowplan-poke-on-leading"),
    ]
    for task in memo.tasks:
        task.add_done_callback(_exit_if_ended)


async def _poke_on_leading(memo: kopf.Memo) -> None:
    while True:  # a new leader re-plans at once instead of waiting for the next event
        await memo.elector.became_leader.wait()
        memo.fleet.poke()
        while memo.elector.is_leader:
            await asyncio.sleep(1)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.tasks:
        task.cancel()


@kopf.on.probe(id="fleet")
def fleet_alive(memo: kopf.Memo, **_: Any) -> str:
    if not hasattr(memo, "fleet"):
        return "starting"
    ok, what = memo.fleet.healthy()
    if not ok:
        raise kopf.PermanentError(f"fleet loop stuck: {what}")
    return str(what)


@kopf.on.event(api.GROUP, api.VERSION, inferencemodel.PLURAL)
async def model_changed(memo: kopf.Memo, event: kopf.RawEvent, **_: Any) -> None:
    body = event.get("object") or {}
    if not memo.wakeups.changed("model", event.get("type"), body):
        return
    new = kube.parse_model(dict(body)) if event.get("type") == "ADDED" else None
    if new is not None:
        memo.fleet.arrived(new)  # placed at once into the running placement
    else:
        memo.fleet.poke()


@kopf.on.event(api.GROUP, api.VERSION, gpunode.PLURAL)
async def node_changed(memo: kopf.Memo, event: kopf.RawEvent, **_: Any) -> None:
    if memo.wakeups.changed("node", event.get("type"), event.get("object") or {}):
        memo.fleet.poke()
