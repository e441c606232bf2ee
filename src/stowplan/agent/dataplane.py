"""The agent's data path, as KServe's ``DataPlane``: decode a request against the model's
inputs, route it to the replica with the fewest queued items, submit it to that device's
executor, and encode the outputs.

Callers: :mod:`stowplan.agent.serving` (``Agent.infer``), hence the HTTP server, and the gRPC
server (:mod:`stowplan.agent.grpc_server`, through ``ready_model`` and ``run``). It looks
models up in the registry and never loads, unloads or schedules anything itself. Must not
import FastAPI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from stowplan.agent import tensors
from stowplan.agent.errors import AgentError, InvalidRequest, ModelNotReady, Overloaded
from stowplan.agent.protocol import InferenceRequest, InferenceResponse
from stowplan.agent.registry import ModelRegistry, ModelState, ServedModel


class DataPlane:
    """decode -> route -> submit -> encode, over one registry."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def infer(self, name: str, request: InferenceRequest) -> InferenceResponse:
        start = self.registry.clock()
        served = self.ready_model(name)
        assert served.runtime is not None
        arrays, items = tensors.decode_inputs(
            request.inputs, served.runtime.inputs, served.max_items
        )
        wanted = [o.name for o in request.outputs or []]
        outputs = await self.run(served, arrays, items, wanted, start)
        return InferenceResponse(
            model_name=name,
            model_version="1",
            id=request.id,
            outputs=[tensors.encode_output(n, a) for n, a in outputs.items()],
        )

    def ready_model(self, name: str) -> ServedModel:
        """The model ``name`` if it serves now; ModelNotFound / ModelNotReady otherwise."""
        served = self.registry.get(name)
        if served.state is not ModelState.READY or served.runtime is None:
            raise ModelNotReady(
                f"model {name!r} is {served.state.value}"
                + (f": {served.reason}" if served.reason else "")
            )
        return served

    async def run(
        self,
        served: ServedModel,
        arrays: dict[str, np.ndarray],
        items: int,
        wanted: Sequence[str],
        start: float,
    ) -> dict[str, np.ndarray]:
        """Route decoded ``arrays`` (``items`` batch items, checked against the model) to a
        replica, await the outputs, record the request; return the ``wanted`` outputs (all,
        when empty) in that order. ``start`` is the registry clock when the request arrived.
        Shared by every front end (HTTP here, gRPC in :mod:`stowplan.agent.grpc_server`)."""
        reg = self.registry
        name = served.name
        assert served.runtime is not None
        known = {o.name for o in served.runtime.outputs}
        bad = [w for w in wanted if w not in known]
        if bad:
            raise InvalidRequest(f"unknown output(s) {bad}; the model has {sorted(known)}")
        try:
            device = min(served.lanes, key=lambda d: reg.executor(d).queued_items(name))
            fut = reg.executor(device).submit(name, arrays, items)
            outputs: dict[str, np.ndarray] = await asyncio.wrap_future(fut)
        except Overloaded:
            reg.metrics.observe_request(name, 0.0, ok=False, reason="overloaded")
            reg.metrics.dropped.labels(name, "1").inc()
            raise
        except AgentError:
            reg.metrics.observe_request(name, 0.0, ok=False, reason="error")
            raise
        latency = reg.clock() - start
        served.stats.request(latency * 1000.0)
        reg.metrics.observe_request(name, latency, ok=True)
        names = wanted or [o.name for o in served.runtime.outputs]
        return {n: outputs[n] for n in names}


__all__ = ["DataPlane"]
