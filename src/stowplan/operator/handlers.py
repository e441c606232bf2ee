"""kopf handlers: thin glue that starts the fleet loop and wakes it on every watch event.

Run with ``kopf run --standalone -m stowplan.operator --all-namespaces``. The handlers hold no
logic: placement and status computation live in :mod:`.fleet` and the pure modules it calls.
``on.event`` handlers store no progress on the objects, so the operator never writes to
InferenceModel spec or metadata (GitOps tools see no drift).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf

from stowplan import api
from stowplan.api import gpunode, inferencemodel
from stowplan.operator import fleet, kube


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
    memo.fleet = fleet.FleetLoop(_settings_from_env())
    memo.fleet_task = asyncio.create_task(memo.fleet.run(), name="stowplan-fleet")
    memo.fleet.poke()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.fleet_task.cancel()


@kopf.on.event(api.GROUP, api.VERSION, inferencemodel.PLURAL)
async def model_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.fleet.poke()


@kopf.on.event(api.GROUP, api.VERSION, gpunode.PLURAL)
async def node_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.fleet.poke()
