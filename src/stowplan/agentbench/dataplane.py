"""Benchmark: the same ONNX model and input through each data path, side by side in one run
(``stowplan bench dataplane``).

Paths: ``direct`` (an ONNX Runtime session called in this process: the floor), ``http-json``
and ``http-binary`` (the stowplan agent, ``stowplan up`` in a subprocess with batching
``none``, over the Open Inference Protocol's JSON body and its binary tensor data extension).
Each path is driven by the same closed-loop load generator: C workers, each sending its next
request when the previous one is answered, for a fixed time, at every concurrency asked. A
path's overhead is its p50 minus the direct p50 at the same concurrency.

More paths plug in through :data:`PATHS` (name -> :class:`PathFactory`); a gRPC path adds a
factory that opens a stub on the agent's gRPC port (``Target.grpc_port``). Every path's answer
is checked against the direct one before it is timed. Client and agent share this machine's
cores, so the numbers include the load generator's own CPU use (the table says so with the
load average).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stowplan.agentbench import httpload
from stowplan.models import EXAMPLES, build_example

#: one request through a path; returns the model's output (checked once, before timing)
Send = Callable[[], Awaitable[np.ndarray]]
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": (1, 64),
    "convnet": (1, 3, 32, 32),
    "mlp-wide": (1, 256),
}


@dataclass(frozen=True)
class Target:
    """What a path needs to reach the agent: its HTTP address (and gRPC port when served),
    the model's name there, and the input every request carries."""

    host: str
    http_port: int
    model: str
    x: np.ndarray
    grpc_port: int | None = None


class PathFactory:
    """Opens one worker's connection for a path: ``await open(target)`` -> (send, close)."""

    async def open(self, target: Target) -> tuple[Send, Callable[[], None]]:
        raise NotImplementedError


class HttpJson(PathFactory):
    async def open(self, target: Target) -> tuple[Send, Callable[[], None]]:
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(target.x.shape),
                        "datatype": "FP32",
                        "data": target.x.ravel().tolist(),
                    }
                ]
            }
        ).encode()
        client = httpload.RawClient(target.host, target.http_port, max_connections=1)
        path = f"/v2/models/{target.model}/infer"

        async def send() -> np.ndarray:
            status, content, _ = await client.request(path, body)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {content[:200]!r}")
            (out,) = json.loads(content)["outputs"]
            return np.asarray(out["data"], np.float32).reshape(out["shape"])

        return send, client.close


class HttpBinary(PathFactory):
    async def open(self, target: Target) -> tuple[Send, Callable[[], None]]:
        raw = np.ascontiguousarray(target.x, "<f4").tobytes()
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(target.x.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        body = head + raw
        headers = (
            "Content-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(head)}\r\n"
        )
        client = httpload.RawClient(target.host, target.http_port, max_connections=1)
        path = f"/v2/models/{target.model}/infer"

        async def send() -> np.ndarray:
            status, content, end = await client.request(path, body, headers)
            if status != 200 or end is None:
                raise RuntimeError(f"HTTP {status}: {content[:200]!r}")
            (out,) = json.loads(content[:end])["outputs"]
            size = out["parameters"]["binary_data_size"]
            return np.frombuffer(content[end : end + size], "<f4").reshape(out["shape"])

        return send, client.close


#: the paths through the agent, by name (``direct`` is built in); gRPC adds itself here
PATHS: dict[str, PathFactory] = {"http-json": HttpJson(), "http-binary": HttpBinary()}


@dataclass(frozen=True)
class Row:
    path: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.duration_s


def _row(path: str, c: int, lat_ms: list[float], errors: int, elapsed_s: float) -> Row:
    arr = np.asarray(lat_ms) if lat_ms else np.asarray([np.nan])
    return Row(
        path,
        c,
        len(lat_ms),
        errors,
        elapsed_s,
        float(np.percentile(arr, 50)),
        float(np.percentile(arr, 99)),
    )


def run_direct(model_path: Path, x: np.ndarray, concurrency: int, duration_s: float) -> Row:
    """C threads calling one ONNX Runtime session in a closed loop (ORT releases the GIL)."""
    from stowplan.agent.runtime import OnnxModel

    m = OnnxModel(model_path, intra_op_threads=1)
    for _ in range(50):
        m.run({"input": x})
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    stop = time.monotonic() + duration_s

    def worker(out: list[float]) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            m.run({"input": x})
            out.append((time.perf_counter() - t0) * 1000.0)

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(lat[i],)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _row("direct", concurrency, [v for w in lat for v in w], 0, time.monotonic() - start)


async def run_path(
    name: str, factory: PathFactory, target: Target, concurrency: int, duration_s: float
) -> Row:
    """C workers, each with its own connection, in a closed loop for ``duration_s``."""
    opened = [await factory.open(target) for _ in range(concurrency)]
    lat: list[float] = []
    errors = 0
    stop = time.monotonic() + duration_s

    async def worker(send: Send) -> None:
        nonlocal errors
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                await send()
            except (OSError, RuntimeError, ValueError, asyncio.IncompleteReadError):
                errors += 1
                continue
            lat.append((time.perf_counter() - t0) * 1000.0)

    try:
        for send, _ in opened:  # warm every connection
            await send()
        start = time.monotonic()
        stop = start + duration_s
        await asyncio.gather(*(worker(send) for send, _ in opened))
        elapsed = time.monotonic() - start
    finally:
        for _, close in opened:
            close()
    return _row(name, concurrency, lat, errors, elapsed)


async def _check(factory: PathFactory, target: Target, want: np.ndarray, name: str) -> None:
    send, close = await factory.open(target)
    try:
        got = await send()
    finally:
        close()
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"path {name!r} answers differently from a direct ONNX Runtime call")


def run(
    model: str = "mlp",
    concurrencies: tuple[int, ...] = (1, 4, 16, 64),
    duration_s: float = 5.0,
    paths: tuple[str, ...] = ("http-json", "http-binary"),
    slo_ms: float = 1000.0,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> list[Row]:
    """Every path at every concurrency; the agent serves ``model`` with batching ``none``."""
    if model not in EXAMPLES:
        raise ValueError(f"unknown example model {model!r}; choose from {sorted(EXAMPLES)}")
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown path(s) {unknown}; choose from {sorted(PATHS)}")
    x = np.random.default_rng(seed).standard_normal(INPUT_SHAPES[model]).astype(np.float32)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="stowplan-bench-dataplane-") as tmp:
        work = Path(tmp)
        model_path = build_example(model, work / "models")
        from stowplan.agent.runtime import OnnxModel

        want = OnnxModel(model_path, intra_op_threads=1).run({"input": x})["logits"]
        for c in concurrencies:
            rows.append(run_direct(model_path, x, c, duration_s))
            if progress:
                progress()
        with httpload.serve(work, "none", model_path, slo_ms) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            target = Target(host, int(port), "bench", x)
            for name in paths:
                asyncio.run(_check(PATHS[name], target, want, name))
                for c in concurrencies:
                    rows.append(asyncio.run(run_path(name, PATHS[name], target, c, duration_s)))
                    if progress:
                        progress()
    return rows


def table(rows: list[Row], model: str) -> str:
    direct = {r.concurrency: r for r in rows if r.path == "direct"}
    out = [
        f"Model `{model}` (batch 1 per request), agent batching `none`, closed loop.",
        "",
        "| path | concurrency | req/s | p50 ms | p99 ms | p50 overhead over direct ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = direct.get(r.concurrency)
        over = "-" if r.path == "direct" or base is None else f"{r.p50_ms - base.p50_ms:.3f}"
        out.append(
            f"| {r.path} | {r.concurrency} | {r.throughput:.0f} | {r.p50_ms:.3f} "
            f"| {r.p99_ms:.3f} | {over} | {r.errors} |"
        )
    load1, load5, _ = os.getloadavg()
    out += [
        "",
        f"Machine: {os.cpu_count()} cores, load average {load1:.1f} (1 min) / {load5:.1f} "
        "(5 min) at the end; the load generator and the agent share the cores.",
    ]
    return "\n".join(out)


__all__ = [
    "INPUT_SHAPES",
    "PATHS",
    "HttpBinary",
    "HttpJson",
    "PathFactory",
    "Row",
    "Send",
    "Target",
    "run",
    "run_direct",
    "run_path",
    "table",
]
