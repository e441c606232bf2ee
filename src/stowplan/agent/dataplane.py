"""The agent's data path, as KServe's ``DataPlane``: decode a request against the model's
inputs, route it to the replica with the fewest queued items, submit it to that device's
executor (or, for a lone sub-millisecond request on an idle device, run it inline on the
calling event loop's thread: :meth:`DeviceExecutor.try_run_inline`), and hand back the
output arrays (``predict``), or encode them as the protocol's JSON response (``infer``).

Callers: :mod:`stowplan.agent.serving` (``Agent.infer``/``Agent.predict``), hence the HTTP
server, which encodes binary outputs itself, and the gRPC server
(:mod:`stowplan.agent.grpc_server`, through ``ready_model`` and ``run``). It looks models up
in the registry and never loads, unloads or schedules anything itself. Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from stowplan.agent import tensors
from stowplan.agent.errors import AgentError, InvalidRequest, ModelNotReady, Overloaded
from stowplan.agent.protocol import InferenceRequest, InferenceResponse
from stowplan.agent.registry import ModelRegistry, ModelState, ServedModel, bare_name


@dataclass(frozen=True)
class Prediction:
    """The outputs of one request: ``names`` in the order to answer them (those asked for,
    else all of the model's), ``outputs`` by name."""

    names: list[str]
    outputs: dict[str, np.ndarray]


class DataPlane:
    """decode -> route -> submit -> (encode), over one registry."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def ready_model(self, name: str) -> ServedModel:
        """The model ``name`` (full or bare: :meth:`ModelRegistry.get`) if it serves now;
        ModelNotFound / AmbiguousModelName / ModelNotReady otherwise."""
        served = self.registry.get(name)
        if served.state is not ModelState.READY or served.runtime is None:
            raise ModelNotReady(
                f"model {name!r} is {served.state.value}"
                + (f": {served.reason}" if served.reason else "")
            )
        return served

    async def predict(
        self,
        name: str,
        request: InferenceRequest,
        raw: Mapping[str, bytes | memoryview] | None = None,
    ) -> Prediction:
        """Run one request; ``raw`` holds the binary contents of inputs sent with the binary
        tensor data extension (by input name)."""
        reg = self.registry
        start = reg.clock()
        served = self.ready_model(name)
        assert served.runtime is not None
        try:
            if request.model_name not in (None, name, served.name, bare_name(served.name)):
                raise InvalidRequest(
                    f"model_name {request.model_name!r} in the body disagrees with the URL's "
                    f"model {name!r}"
                )
            if request.model_version not in (None, "", "1"):
                raise InvalidRequest(
                    f"model_version {request.model_version!r}: model {name!r} has only version '1'"
                )
            arrays, items = tensors.decode_inputs(
                request.inputs, served.runtime.inputs, served.max_items, raw
            )
        except AgentError as exc:
            self._failed(served, start, exc)
            raise
        wanted = [o.name for o in request.outputs or []]
        outputs = await self.run(served, arrays, items, wanted, start)
        return Prediction(list(outputs), outputs)

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
        Shared by every front end (HTTP and gRPC)."""
        reg = self.registry
        name = served.name
        assert served.runtime is not None
        try:
            if wanted:
                known = {o.name for o in served.runtime.outputs}
                bad = [w for w in wanted if w not in known]
                if bad:
                    raise InvalidRequest(f"unknown output(s) {bad}; the model has {sorted(known)}")
            lanes = served.lanes
            if len(lanes) == 1:
                (device,) = lanes
            else:
                device = min(lanes, key=lambda d: reg.executor(d).queued_items(name))
            executor = reg.executor(device)
            # a lone sub-millisecond request on an idle device runs here, on the event loop's
            # thread, which it blocks for that run (DeviceExecutor.try_run_inline's guards);
            # anything else goes to the device thread, and so does a model whose session is
            # not in device memory: its prefetch (up to hundreds of ms) must not block the loop
            runtime = served.runtimes.get(device)
            inline = runtime is not None and runtime.loaded
            fut = executor.try_run_inline(name, arrays, items) if inline else None
            if fut is None:
                fut = executor.submit(name, arrays, items)
            outputs: dict[str, np.ndarray] = fut.result() if fut.done() else await _outcome(fut)
        except Overloaded as exc:
            served.stats.failure((reg.clock() - start) * 1000.0)
            reg.metrics.observe_refusal(name, exc.reason, exc.queue_empty)
            raise
        except AgentError as exc:
            self._failed(served, start, exc)
            raise
        latency = reg.clock() - start
        served.stats.request(latency * 1000.0)
        reg.metrics.observe_request(name, latency, ok=True)
        names = list(wanted) or served.runtime.output_names
        return {n: outputs[n] for n in names}

    def _failed(self, served: ServedModel, start: float, exc: AgentError) -> None:
        reg = self.registry
        served.stats.failure((reg.clock() - start) * 1000.0)
        invalid = exc.status_code < 500
        reg.metrics.observe_request(
            served.name, 0.0, ok=False, reason="invalid" if invalid else "error"
        )

    async def infer(self, name: str, request: InferenceRequest) -> InferenceResponse:
        """Run one request and answer it in the protocol's JSON form."""
        p = await self.predict(name, request)
        return InferenceResponse(
            model_name=name,
            model_version="1",
            id=request.id,
            outputs=[tensors.encode_output(n, p.outputs[n]) for n in p.names],
        )


def _outcome(fut: Future[Any]) -> asyncio.Future[Any]:
    """The executor's ``fut`` as an awaitable of the running loop: when the device thread
    settles it, one ``call_soon_threadsafe`` copies the outcome over (no thread pool).

    Unlike ``asyncio.wrap_future`` a cancelled awaiter (a gRPC deadline, a client gone) does
    not cancel ``fut``: the request still runs in its batch and its answer is dropped here
    (the executor skips a future already done or cancelled, so a cancel elsewhere cannot stop
    the device thread either, but leaving ``fut`` alone keeps the batch as it was formed)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def settled(done: Future[Any]) -> None:  # on the device thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_copy, done, waiter)

    fut.add_done_callback(settled)
    return waiter


def _copy(done: Future[Any], waiter: asyncio.Future[Any]) -> None:
    if waiter.done():  # cancelled while the batch ran
        return
    exc = done.exception()
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(done.result())


__all__ = ["DataPlane", "Prediction"]
