"""Where one request's time goes inside the agent: ``stowplan up`` with a clock read at each
stage boundary of an inference request (``stowplan bench dataplane --stages``).

Started by :func:`stowplan.agentbench.dataplane.run_stages` in its own process
(``python -m stowplan.agentbench.stages OUT_JSON up ARGS...``): it wraps the agent's functions
at the stage boundaries (no edit to them; wrapping adds about a microsecond a stage), serves
as ``stowplan up ARGS...`` does, and on SIGTERM writes each stage's p50 and mean (µs, the first
200 requests, or half of a shorter run, left out as warm-up) to ``OUT_JSON``. Stages, HTTP
(:class:`FastInfer`): ``receive`` (ASGI entry to the body read), ``parse`` (JSON header and
binary split), ``decode``
(model lookup, checks, tensors, up to the executor's submit), ``hop to device`` (submit to the
device thread starting the batch), ``run`` (the batch function: ONNX Runtime and its
bookkeeping), ``hop back`` (the batch done to the request's coroutine running again),
``encode`` (response body and headers), ``send`` (uvicorn writing both ASGI messages). gRPC
(``ModelInfer``): ``decode`` (handler entry to submit), the same two hops and run, ``encode``.
What happens before the ASGI app or the gRPC handler is called (uvicorn's and grpc's parsing)
and after (grpc's serialisation and write) is not seen here: the ``echo-*`` paths measure those
stacks whole. One request at a time only (the marks are one set, shared by the loop and the
device thread).
"""

from __future__ import annotations

import atexit
import json
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

_marks: dict[str, float] = {}
_spans: dict[str, list[float]] = defaultdict(list)
HTTP_STAGES = [
    ("receive", "a", "b"),
    ("parse", "b", "c"),
    ("decode", "c", "d"),
    ("hop to device", "d", "e"),
    ("run", "e", "f"),
    ("hop back", "f", "g"),
    ("encode", "g", "h"),
    ("send", "h", "i"),
]
GRPC_STAGES = [
    ("decode", "a", "d"),
    ("hop to device", "d", "e"),
    ("run", "e", "f"),
    ("hop back", "f", "g"),
    ("encode", "g", "h"),
]


def _record(prefix: str, stages: list[tuple[str, str, str]], first: str, last: str) -> None:
    m = _marks
    if all(k in m for _, a, b in stages for k in (a, b)):
        for name, a, b in stages:
            _spans[f"{prefix} {name}"].append((m[b] - m[a]) * 1e6)
        _spans[f"{prefix} total"].append((m[last] - m[first]) * 1e6)
    m.clear()


def instrument() -> None:
    """Wrap the agent's stage boundaries with clock reads (in this process only)."""
    from stowplan.agent import dataplane, executor, grpc_server, server

    pc = time.perf_counter
    fast_call = server.FastInfer.__call__

    async def fast(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/infer"):
            await fast_call(self, scope, receive, send)
            return
        _marks.clear()
        _marks["a"] = pc()

        async def rcv() -> Any:
            message = await receive()
            _marks["b"] = pc()
            return message

        async def snd(message: Any) -> None:
            if message["type"] == "http.response.start":
                _marks["h"] = pc()
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                _marks["i"] = pc()
                _record("http", HTTP_STAGES, "a", "i")

        await fast_call(self, scope, rcv, snd)

    server.FastInfer.__call__ = fast  # type: ignore[method-assign]

    parse = server.parse_infer_body

    def parsed(*args: Any, **kwargs: Any) -> Any:
        out = parse(*args, **kwargs)
        _marks["c"] = pc()
        return out

    server.parse_infer_body = parsed

    submit = executor.DeviceExecutor.submit

    def submitted(self: Any, *args: Any, **kwargs: Any) -> Any:
        _marks["d"] = pc()
        return submit(self, *args, **kwargs)

    executor.DeviceExecutor.submit = submitted  # type: ignore[method-assign]

    def never_inline(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    # the stages time the device thread's path with its two hops; a lone sub-millisecond
    # request on an idle device may skip them (DeviceExecutor.try_run_inline), which the plain
    # `--concurrency 1` paths measure, so here every request takes the hops
    executor.DeviceExecutor.try_run_inline = never_inline  # type: ignore[method-assign]

    add_lane = executor.DeviceExecutor.add_lane

    def lane(self: Any, name: str, policy: Any, slo_ms: float, run: Any, *a: Any, **k: Any) -> Any:
        def timed(batch: Any) -> Any:
            _marks["e"] = pc()
            out = run(batch)
            _marks["f"] = pc()
            return out

        return add_lane(self, name, policy, slo_ms, timed, *a, **k)

    executor.DeviceExecutor.add_lane = lane  # type: ignore[method-assign]

    plane_run = dataplane.DataPlane.run

    async def ran(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = await plane_run(self, *args, **kwargs)
        _marks["g"] = pc()
        return out

    dataplane.DataPlane.run = ran  # type: ignore[method-assign]

    model_infer = grpc_server.InferenceService.model_infer

    async def infer(self: Any, request: Any) -> Any:
        _marks.clear()
        _marks["a"] = pc()
        out = await model_infer(self, request)
        _marks["h"] = pc()
        _record("grpc", GRPC_STAGES, "a", "h")
        return out

    grpc_server.InferenceService.model_infer = infer  # type: ignore[method-assign]


def summary(warmup: int = 200) -> dict[str, dict[str, float]]:
    """Each stage's request count, p50 and mean (µs), the first ``warmup`` left out (at most
    half of them, so a short run keeps at least half its requests)."""
    out = {}
    for name, values in _spans.items():
        v = np.asarray(values[min(warmup, len(values) // 2) :])
        out[name] = {
            "n": float(len(v)),
            "p50_us": float(np.percentile(v, 50)),
            "mean_us": float(v.mean()),
        }
    return out


def main(argv: list[str]) -> None:
    out_path = Path(argv[0])
    instrument()
    atexit.register(lambda: out_path.write_text(json.dumps(summary())))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from stowplan.cli import main as cli

    cli(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])

__all__ = ["GRPC_STAGES", "HTTP_STAGES", "instrument", "main", "summary"]
