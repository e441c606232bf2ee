"""kopf handlers: thin glue that starts the fleet loop and wakes it on every watch event.

Run with ``kopf run --standalone -m stowplan.operator --all-namespaces``. The handlers hold no
logic: placement and status computation live in :mod:`.fleet` and the pure modules it calls.
``on.event`` handlers store no progress on the objects, so the operator never writes to
InferenceModel spec or metadata (GitOps tools see no drift).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import kopf

from stowplan import api, placement
from stowplan.api import gpunode, inferencemodel
from stowplan.operator import fleet, kube, leadership


def _settings_from_env() -> fleet.FleetSettings:
    return fleet.FleetSettings(
        solver_time_limit_s=float(os.environ.get("STOWPLAN_SOLVER_TIME_LIMIT_S", "0")),
        memory_reserve_mib=int(os.environ.get("STOWPLAN_MEMORY_RESERVE_MIB", "0")),
        resync_s=float(os.environ.get("STOWPLAN_RESYNC_S", "30")),
        stale_after_s=float(os.environ.get("STOWPLAN_NODE_STALE_AFTER_S", "120")),
        namespace=os.environ.get("STOWPLAN_NAMESPACE", "stowplan-system"),
        autoscaling=os.environ.get("STOWPLAN_AUTOSCALING", "true").lower() == "true",
    )


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    settings.watching.server_timeout = 300  # re-establish long watches (kopf#585)
    settings.posting.level = 20  # INFO and above become events
    kube.login()
    fleet_settings = _settings_from_env()
    memo.elector = leadership.Elector(
        read=kube.read_lease,
        write=kube.write_lease,
        namespace=fleet_settings.namespace,
        name="stowplan-operator",
        identity=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        lease_duration_s=float(os.environ.get("STOWPLAN_LEASE_DURATION_S", "15")),
        renew_s=float(os.environ.get("STOWPLAN_LEASE_RENEW_S", "5")),
    )
    memo.fleet = fleet.FleetLoop(fleet_settings, leader=lambda: memo.elector.is_leader)
    # compile/load the numba kernels now, not inside the first plan's time budget
    search = fleet_settings.solver_time_limit_s > 0
    memo.tasks = [
        asyncio.create_task(asyncio.to_thread(placement.warm_up, search), name="stowplan-warm-up"),
        asyncio.create_task(memo.elector.run(), name="stowplan-leader-election"),
        asyncio.create_task(memo.fleet.run(), name="stowplan-fleet"),
        asyncio.create_task(_poke_on_leading(memo), name="stowplan-poke-on-leading"),
    ]


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


@kopf.on.event(api.GROUP, api.VERSION, inferencemodel.PLURAL)
async def model_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.fleet.poke()


@kopf.on.event(api.GROUP, api.VERSION, gpunode.PLURAL)
async def node_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.fleet.poke()
