"""Benchmark: the same ONNX model and input through each data path, side by side in one run
(``stowplan bench dataplane``).

Paths: ``direct`` (an ONNX Runtime session called in this process: the floor); ``http-json``,
``http-binary`` and ``grpc`` (the stowplan agent, ``stowplan up`` in a subprocess with batching
``none``, over the Open Inference Protocol's JSON body, its binary tensor data extension, and
``inference.GRPCInferenceService`` with ``raw_input_contents`` through stowplan's generated
``grpc.aio`` stub); ``kserve-rest`` (KServe's Python ``ModelServer`` serving the same model with
ONNX Runtime, :mod:`stowplan.agentbench.kserve_onnx` in a subprocess, v2 JSON over REST). Each
server runs alone on the machine in turn (the agent for its paths, then KServe).
Each path is driven by the same closed-loop load generator: C workers, each sending its next
request when the previous one is answered, for a fixed time, at every concurrency asked. A
path's overhead is its p50 minus the direct p50 at the same concurrency.

More paths plug in through :data:`PATHS` (name -> :class:`PathFactory`; its ``server`` says
which server it needs: ``agent`` or ``kserve``). Every path's answer
is checked against the direct one before it is timed. Client and agent share this machine's
cores, so the numbers include the load generator's own CPU use (the table says so with the
load average).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np

from stowplan.agent import grpc_client
from stowplan.agent.oip import grpc_predict_v2_pb2 as pb
from stowplan.agentbench import httpload
from stowplan.models import EXAMPLES, build_example

#: one request through a path; returns the model's output (checked once, before timing)
Send = Callable[[], Awaitable[np.ndarray]]
#: closes one worker's connection (a coroutine function where the client's close is one)
Close = Callable[[], Awaitable[None] | None]
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
    """Opens one worker's connection for a path: ``await open(target)`` -> (send, close).
    ``server`` names the server the path talks to (``agent`` or ``kserve``)."""

    server = "agent"

    async def open(self, target: Target) -> tuple[Send, Close]:
        raise NotImplementedError


class HttpJson(PathFactory):
    async def open(self, target: Target) -> tuple[Send, Close]:
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
    async def open(self, target: Target) -> tuple[Send, Close]:
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


class Grpc(PathFactory):
    """ModelInfer on the agent's gRPC port, the tensor in ``raw_input_contents``; one channel
    (one HTTP/2 connection) per worker."""

    async def open(self, target: Target) -> tuple[Send, Close]:
        if not target.grpc_port:
            raise RuntimeError("the agent serves no gRPC port for path 'grpc'")
        raw = np.ascontiguousarray(target.x, "<f4").tobytes()
        request = pb.ModelInferRequest(
            model_name=target.model,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="input", datatype="FP32", shape=list(target.x.shape)
                )
            ],
            raw_input_contents=[raw],
        )
        channel = grpc.aio.insecure_channel(f"{target.host}:{target.grpc_port}")
        stub = grpc_client.Stub(channel)

        async def send() -> np.ndarray:
            try:
                response = await stub.ModelInfer(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                raise RuntimeError(f"gRPC {exc.code().name}: {exc.details()}") from None
            (out,) = response.outputs
            (blob,) = response.raw_output_contents
            return np.frombuffer(blob, "<f4").reshape(tuple(out.shape))

        async def close() -> None:
            await channel.close()

        return send, close


class KServeRest(HttpJson):
    """The v2 JSON body (as ``http-json``) to KServe's ``ModelServer``."""

    server = "kserve"


#: the paths through a server, by name (``direct`` is built in)
PATHS: dict[str, PathFactory] = {
    "http-json": HttpJson(),
    "http-binary": HttpBinary(),
    "grpc": Grpc(),
    "kserve-rest": KServeRest(),
}


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
            await _close(close)
    return _row(name, concurrency, lat, errors, elapsed)


async def _close(close: Close) -> None:
    done = close()
    if inspect.isawaitable(done):
        await done


async def answer(factory: PathFactory, target: Target) -> np.ndarray:
    """One request through a path on a fresh connection: its output."""
    send, close = await factory.open(target)
    try:
        return await send()
    finally:
        await _close(close)


async def _check(factory: PathFactory, target: Target, want: np.ndarray, name: str) -> None:
    got = await answer(factory, target)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"path {name!r} answers differently from a direct ONNX Runtime call")


@contextlib.contextmanager
def serve_kserve(workdir: Path, model_path: Path, x: np.ndarray) -> Iterator[Target]:
    """KServe's ``ModelServer`` on ``model_path`` (:mod:`.kserve_onnx`) in a subprocess on a
    free loopback port; yields its target (input ``x``) once the model is ready. Its log goes
    to a file in ``workdir``."""
    port = httpload._free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "kserve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stowplan.agentbench.kserve_onnx", str(model_path), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/v2/models/bench/ready"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"kserve ModelServer exited: {tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("kserve ModelServer did not become ready within 60 s")
            time.sleep(0.2)
        yield Target("127.0.0.1", port, "bench", x)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_agent(
    workdir: Path, model_path: Path, x: np.ndarray, slo_ms: float = 1000.0
) -> Iterator[Target]:
    """``stowplan up`` on ``model_path`` (batching ``none``) with HTTP and gRPC on free
    loopback ports (:func:`.httpload.serve`); yields its target (input ``x``) once ready."""
    grpc_port = httpload._free_port()
    with httpload.serve(workdir, "none", model_path, slo_ms, grpc_port=grpc_port) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield Target(host, int(port), "bench", x, grpc_port)


def run(
    model: str = "mlp",
    concurrencies: tuple[int, ...] = (1, 4, 16, 64),
    duration_s: float = 5.0,
    paths: tuple[str, ...] = ("http-json", "http-binary", "grpc", "kserve-rest"),
    slo_ms: float = 1000.0,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> list[Row]:
    """Every path at every concurrency; the agent serves ``model`` with batching ``none``.
    Servers run one at a time: the agent for its paths, then KServe for ``kserve-rest``."""
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
        servers: dict[str, Callable[[], contextlib.AbstractContextManager[Target]]] = {
            "agent": lambda: serve_agent(work, model_path, x, slo_ms),
            "kserve": lambda: serve_kserve(work, model_path, x),
        }
        for server, start in servers.items():
            mine = [p for p in paths if PATHS[p].server == server]
            if not mine:
                continue
            with start() as target:
                for name in mine:
                    asyncio.run(_check(PATHS[name], target, want, name))
                    for c in concurrencies:
                        rows.append(asyncio.run(run_path(name, PATHS[name], target, c, duration_s)))
                        if progress:
                            progress()
    return rows


def table(rows: list[Row], model: str) -> str:
    direct = {r.concurrency: r for r in rows if r.path == "direct"}
    out = [
        f"Model `{model}` (batch 1 per request), closed loop. `direct`: ONNX Runtime in the "
        "load generator's process; `http-json`, `http-binary`, `grpc`: the stowplan agent "
        "(`stowplan up`, batching `none`); `kserve-rest`: KServe's Python ModelServer "
        "(kserve 0.21.0, ONNX Runtime, per-request logging off). Each server alone on the "
        "machine in turn.",
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


def plot(rows: list[Row], model: str, out: Path) -> None:
    """PNG: p50 latency (solid) and p99 (dashed) against concurrency, and throughput, one line
    per path (matplotlib, Agg backend; imported here so the bench runs without it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat_ax, rps_ax) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=72)
    for name in dict.fromkeys(r.path for r in rows):
        mine = sorted((r for r in rows if r.path == name), key=lambda r: r.concurrency)
        cs = [r.concurrency for r in mine]
        (line,) = lat_ax.plot(cs, [r.p50_ms for r in mine], marker="o", label=name)
        lat_ax.plot(cs, [r.p99_ms for r in mine], ls="--", color=line.get_color())
        rps_ax.plot(cs, [r.throughput for r in mine], marker="o", label=name)
    for ax in (lat_ax, rps_ax):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (closed-loop workers)")
        ax.grid(True, which="both", alpha=0.3)
    lat_ax.set_ylabel("latency ms (p50 solid, p99 dashed)")
    rps_ax.set_ylabel("req/s")
    rps_ax.legend(fontsize=8)
    fig.suptitle(f"stowplan bench dataplane: model {model}, batch 1 per request")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


__all__ = [
    "INPUT_SHAPES",
    "PATHS",
    "Close",
    "Grpc",
    "HttpBinary",
    "HttpJson",
    "KServeRest",
    "PathFactory",
    "Row",
    "Send",
    "Target",
    "answer",
    "plot",
    "run",
    "run_direct",
    "run_path",
    "serve_agent",
    "serve_kserve",
    "table",
]
