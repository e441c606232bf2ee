"""Benchmark: the same ONNX model and input through each data path, side by side in one run
(``stowplan bench dataplane``).

Paths: ``direct`` (an ONNX Runtime session called in this process: the floor); ``http-json``,
``http-binary`` and ``grpc`` (the stowplan agent, ``stowplan up`` in a subprocess with batching
``none``, over the Open Inference Protocol's JSON body, its binary tensor data extension, and
``inference.GRPCInferenceService`` with ``raw_input_contents`` through stowplan's generated
``grpc.aio`` stub); ``echo-http`` and ``echo-grpc`` (asked for by name: the same requests to
the agent's HTTP and gRPC stacks answering a fixed response, :mod:`.echo`, the floor under the
agent's paths); ``kserve-rest`` (KServe's Python ``ModelServer`` serving the same model with
ONNX Runtime, :mod:`stowplan.agentbench.kserve_onnx` in a subprocess, v2 JSON over REST). Each
server runs alone on the machine in turn (the agent for its paths, then KServe).
Each path is driven by the same closed-loop load generator: C workers, each sending its next
request when the previous one is answered, for a fixed time, at every concurrency asked. A
path's overhead is its p50 minus the direct p50 at the same concurrency.

Open loop (:func:`run_open`): Poisson arrivals at each rate asked, sent on schedule whether or
not earlier ones were answered, for a bounded time per rate, at most ``max_in_flight`` requests
outstanding (an arrival beyond that is not sent and is counted, so a slow server cannot make
the generator unbounded); latency counts from each arrival's scheduled time (no coordinated
omission). Here the agent serves the example's own manifest (its SLO, and its batching policy,
the API's default where it names none), once as written and once with batching ``none``;
goodput is the answers within that SLO per second, the number :func:`verdict` compares with
KServe's.

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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import yaml

from stowplan.agent import grpc_client
from stowplan.agent.oip import grpc_predict_v2_pb2 as pb
from stowplan.agentbench import httpload, stages
from stowplan.api.inferencemodel import Batching
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
    ``server`` names the server the path talks to (``agent``, ``kserve`` or ``echo``);
    ``default`` whether a run with no ``--path`` includes it."""

    server = "agent"
    default = True

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


class EchoHttp(HttpBinary):
    """The ``http-binary`` request to a bare uvicorn app (:mod:`.echo`): the HTTP stack's
    floor, with the agent's loop and parser and nothing of stowplan."""

    server = "echo"
    default = False


class EchoGrpc(Grpc):
    """The ``grpc`` request to a bare ``grpc.aio`` server (:mod:`.echo`): the gRPC stack's
    floor."""

    server = "echo"
    default = False


#: the paths through a server, by name (``direct`` is built in)
PATHS: dict[str, PathFactory] = {
    "http-json": HttpJson(),
    "http-binary": HttpBinary(),
    "grpc": Grpc(),
    "kserve-rest": KServeRest(),
    "echo-http": EchoHttp(),
    "echo-grpc": EchoGrpc(),
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
        httpload.stop(proc)


@contextlib.contextmanager
def serve_echo(workdir: Path, want: np.ndarray, x: np.ndarray) -> Iterator[Target]:
    """The bare stacks of :mod:`.echo` (HTTP and gRPC, answering ``want`` to everything) in a
    subprocess on free loopback ports; yields their target once HTTP answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = workdir / "echo-answer.npy"
    np.save(out_path, want)
    port, grpc_port = httpload._free_port(), httpload._free_port()
    log_path = workdir / "echo.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stowplan.agentbench.echo",
                str(out_path),
                str(port),
                str(grpc_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"echo server exited: {tail}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"http://127.0.0.1:{port}/", content=b"", timeout=1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError("echo server did not answer within 30 s")
            time.sleep(0.1)
        yield Target("127.0.0.1", port, "bench", x, grpc_port)
    finally:
        httpload.stop(proc)


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
            "echo": lambda: serve_echo(work / "echo", want, x),
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


@dataclass(frozen=True)
class StageRow:
    """One stage of a request inside the agent (:mod:`.stages`): ``front`` is ``http``
    (the ``http-binary`` request) or ``grpc``."""

    front: str
    stage: str
    requests: int
    p50_us: float
    mean_us: float


def run_stages(model: str = "mlp", duration_s: float = 5.0, seed: int = 0) -> list[StageRow]:
    """The agent (batching ``none``) with a clock at each stage boundary
    (:mod:`.stages`), driven one request at a time over ``http-binary`` then ``grpc`` for
    ``duration_s`` each; the stages' p50 and mean."""
    if model not in EXAMPLES:
        raise ValueError(f"unknown example model {model!r}; choose from {sorted(EXAMPLES)}")
    x = np.random.default_rng(seed).standard_normal(INPUT_SHAPES[model]).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="stowplan-bench-stages-") as tmp:
        work = Path(tmp)
        model_path = build_example(model, work / "models")
        out = work / "stages.json"
        grpc_port = httpload._free_port()
        launcher = ("-m", "stowplan.agentbench.stages", str(out))
        with httpload.serve(
            work, "none", model_path, 1000.0, grpc_port=grpc_port, launcher=launcher
        ) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            target = Target(host, int(port), "bench", x, grpc_port)
            for name in ("http-binary", "grpc"):
                asyncio.run(run_path(name, PATHS[name], target, 1, duration_s))
        if not out.exists():
            raise RuntimeError("the instrumented agent wrote no stage timings")
        found = json.loads(out.read_text())
    order = [("http", s) for s, _, _ in stages.HTTP_STAGES] + [("http", "total")]
    order += [("grpc", s) for s, _, _ in stages.GRPC_STAGES] + [("grpc", "total")]
    rows = []
    for front, stage in order:
        v = found.get(f"{front} {stage}")
        if v is not None:
            rows.append(StageRow(front, stage, int(v["n"]), v["p50_us"], v["mean_us"]))
    return rows


def stages_table(rows: list[StageRow], model: str) -> str:
    out = [
        f"Model `{model}`, one request at a time, batching `none`: each stage's time inside "
        "the agent (`stowplan.agentbench.stages`). HTTP is the `http-binary` request from "
        "the ASGI app's entry to its last write; gRPC from `ModelInfer`'s entry to its "
        "return. The stacks around them (uvicorn's parser, grpc's) are what the `echo-*` "
        "paths measure.",
        "",
        "| front end | stage | requests | p50 µs | mean µs |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(f"| {r.front} | {r.stage} | {r.requests} | {r.p50_us:.0f} | {r.mean_us:.0f} |")
    load1, load5, _ = os.getloadavg()
    out += ["", f"Machine: {os.cpu_count()} cores, load average {load1:.1f} / {load5:.1f}."]
    return "\n".join(out)


@dataclass(frozen=True)
class OpenRow:
    """One (path, batching, offered rate) of the open loop. ``arrivals`` = ``sent`` +
    ``unsent`` (arrivals that found ``max_in_flight`` requests outstanding); every sent request
    ends as ``ok`` (of which ``within_slo``), ``shed`` (503 / gRPC UNAVAILABLE) or ``errors``
    (anything else, timeouts included). Answer rates are per ``elapsed_s``: from the first
    arrival's schedule to the last answer (``duration_s`` is the arrival window)."""

    path: str
    batching: str
    rate: float
    arrivals: int
    unsent: int
    ok: int
    within_slo: int
    shed: int
    errors: int
    duration_s: float
    elapsed_s: float
    p50_ms: float
    p99_ms: float

    @property
    def arrival_rate(self) -> float:
        """Arrivals per second actually drawn (the Poisson count over the window)."""
        return self.arrivals / self.duration_s

    @property
    def sent(self) -> int:
        return self.arrivals - self.unsent

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed_s

    @property
    def goodput(self) -> float:
        return self.within_slo / self.elapsed_s


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> np.ndarray:
    """Arrival offsets (s, increasing, all < ``duration_s``) of a Poisson process at ``rate``
    per second: exponential gaps from a seeded generator."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive (got {rate}, {duration_s})")
    rng = np.random.default_rng(seed)
    n = int(rate * duration_s + 10 * np.sqrt(rate * duration_s) + 10)
    offsets = np.cumsum(rng.exponential(1.0 / rate, n))
    while offsets[-1] < duration_s:  # too few drawn: extend (never in practice)
        more = offsets[-1] + np.cumsum(rng.exponential(1.0 / rate, n))
        offsets = np.concatenate([offsets, more])
    return offsets[offsets < duration_s]


def _is_shed(exc: RuntimeError) -> bool:
    text = str(exc)
    return text.startswith("HTTP 503") or text.startswith("gRPC UNAVAILABLE")


async def run_open_loop(
    name: str,
    factory: PathFactory,
    target: Target,
    rate: float,
    duration_s: float,
    slo_ms: float,
    seed: int = 0,
    max_in_flight: int = 256,
    timeout_s: float = 5.0,
    batching: str = "-",
) -> OpenRow:
    """Poisson arrivals at ``rate`` for ``duration_s``, each sent at its scheduled time on an
    idle connection of the path (a new one opened while fewer than ``max_in_flight`` are
    busy); an arrival that finds ``max_in_flight`` outstanding is counted in ``unsent``. Each
    request is given ``timeout_s``; latency counts from its scheduled time."""
    offsets = poisson_arrivals(rate, duration_s, seed)
    idle: list[tuple[Send, Close]] = []
    closes: list[Close] = []
    lat: list[float] = []
    shed = errors = unsent = in_flight = 0
    for _ in range(min(max_in_flight, 4)):  # a few warm connections (refusals are the run's)
        conn = await factory.open(target)
        closes.append(conn[1])
        with contextlib.suppress(RuntimeError, OSError, asyncio.IncompleteReadError):
            await conn[0]()
        idle.append(conn)

    async def one(t_sched: float, conn: tuple[Send, Close]) -> None:
        nonlocal shed, errors, in_flight
        try:
            await asyncio.wait_for(conn[0](), timeout_s)
        except RuntimeError as exc:
            if _is_shed(exc):
                shed += 1
            else:
                errors += 1
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
            errors += 1
        else:
            lat.append((time.monotonic() - t_sched) * 1000.0)
        finally:
            in_flight -= 1
            idle.append(conn)

    tasks: list[asyncio.Task[None]] = []
    try:
        start = time.monotonic()
        for offset in offsets:
            t_sched = start + float(offset)
            delay = t_sched - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_in_flight:
                unsent += 1
                continue
            if idle:
                conn = idle.pop()
            else:
                conn = await factory.open(target)
                closes.append(conn[1])
            in_flight += 1
            tasks.append(asyncio.create_task(one(t_sched, conn)))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    finally:
        for task in tasks:
            task.cancel()
        for close in closes:
            await _close(close)
    arr = np.asarray(lat) if lat else np.asarray([np.nan])
    return OpenRow(
        name,
        batching,
        rate,
        len(offsets),
        unsent,
        len(lat),
        int((arr <= slo_ms).sum()),
        shed,
        errors,
        duration_s,
        elapsed,
        float(np.percentile(arr, 50)),
        float(np.percentile(arr, 99)),
    )


def served_manifest(manifests: Path, model: str) -> dict[str, object]:
    """The example's InferenceModel (the YAML in ``manifests`` whose ``metadata.name`` is
    ``model``), parsed."""
    for f in sorted(manifests.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        if isinstance(doc, dict) and doc.get("metadata", {}).get("name") == model:
            return doc
    raise ValueError(f"no manifest in {manifests} has metadata.name {model!r}")


def _manifest_for(doc: dict[str, object], model_path: Path, batching: str | None) -> str:
    """``doc`` renamed ``bench``, its model the file at ``model_path``, one replica, and its
    batching replaced by ``{policy: batching}`` when given."""
    spec = dict(doc["spec"])  # type: ignore[call-overload]
    spec["model"] = {**spec["model"], "uri": f"file://{model_path}"}
    spec["replicas"] = 1
    if batching is not None:
        spec["batching"] = {"policy": batching}
    out = {**doc, "metadata": {"name": "bench"}, "spec": spec}
    return yaml.safe_dump(out, sort_keys=False)


def run_open(
    model: str = "mlp",
    rates: Sequence[float] = (50, 100, 200, 400),
    duration_s: float = 5.0,
    paths: tuple[str, ...] = ("http-json", "http-binary", "grpc", "kserve-rest"),
    manifests: Path = Path("manifests/examples"),
    seed: int = 0,
    max_in_flight: int = 256,
    progress: Callable[[], None] | None = None,
) -> tuple[list[OpenRow], float]:
    """Every path at every offered rate, open loop; returns the rows and the SLO (ms) of the
    served manifest. The agent serves the example's manifest as written (its batching policy,
    the API's default where it names none), then with batching ``none``; then KServe."""
    if model not in EXAMPLES:
        raise ValueError(f"unknown example model {model!r}; choose from {sorted(EXAMPLES)}")
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown path(s) {unknown}; choose from {sorted(PATHS)}")
    doc = served_manifest(manifests, model)
    spec = doc["spec"]
    assert isinstance(spec, dict)
    slo_ms = float(spec["slo"]["latencyMs"])
    own = Batching.model_validate(spec.get("batching") or {}).policy.value
    x = np.random.default_rng(seed).standard_normal(INPUT_SHAPES[model]).astype(np.float32)
    rows: list[OpenRow] = []
    with tempfile.TemporaryDirectory(prefix="stowplan-bench-dataplane-open-") as tmp:
        work = Path(tmp)
        model_path = build_example(model, work / "models")
        from stowplan.agent.runtime import OnnxModel

        want = OnnxModel(model_path, intra_op_threads=1).run({"input": x})["logits"]
        variants = [own] if own == "none" else [own, "none"]
        servers: list[tuple[str, str, Callable[[], contextlib.AbstractContextManager[Target]]]]
        servers = []
        for policy in variants:
            text = _manifest_for(doc, model_path, None if policy == own else policy)

            def start_agent(text: str = text, policy: str = policy) -> Iterator[Target]:
                grpc_port = httpload._free_port()
                with httpload.serve(
                    work, f"open-{policy}", model_path, slo_ms, grpc_port, manifest=text
                ) as url:
                    host, port = url.removeprefix("http://").rsplit(":", 1)
                    yield Target(host, int(port), "bench", x, grpc_port)

            servers.append(("agent", policy, contextlib.contextmanager(start_agent)))
        servers.append(("kserve", "-", lambda: serve_kserve(work, model_path, x)))
        servers.append(("echo", "-", lambda: serve_echo(work / "echo", want, x)))
        for server, policy, serve in servers:
            mine = [p for p in paths if PATHS[p].server == server]
            if not mine:
                continue
            with serve() as target:
                for name in mine:
                    asyncio.run(_check(PATHS[name], target, want, name))
                    warm = min(rates)
                    asyncio.run(
                        run_open_loop(name, PATHS[name], target, warm, 0.5, slo_ms, seed + 1)
                    )
                    for i, rate in enumerate(rates):
                        row = asyncio.run(
                            run_open_loop(
                                name,
                                PATHS[name],
                                target,
                                rate,
                                duration_s,
                                slo_ms,
                                seed + 100 + i,
                                max_in_flight,
                                batching=policy,
                            )
                        )
                        rows.append(row)
                        if progress:
                            progress()
    return rows, slo_ms


def _ms(v: float) -> str:
    return "-" if np.isnan(v) else f"{v:.2f}"


def open_table(rows: list[OpenRow], model: str, slo_ms: float, max_in_flight: int) -> str:
    out = [
        f"Model `{model}` (batch 1 per request), open loop: Poisson arrivals at each offered "
        f"rate, at most {max_in_flight} requests in flight (arrivals beyond that not sent); "
        f"latency from each arrival's scheduled time. SLO {slo_ms:g} ms (the served manifest's). "
        "`batching`: the agent's policy (the manifest's own, or `none`); `-`: KServe's "
        "ModelServer (kserve 0.21.0, ONNX Runtime).",
        "",
        "| path | batching | offered req/s | sent | not sent | answered req/s "
        f"| within {slo_ms:g} ms req/s | p50 ms | p99 ms | 503s | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.path} | {r.batching} | {r.rate:g} | {r.sent} | {r.unsent} "
            f"| {r.throughput:.0f} | {r.goodput:.0f} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} "
            f"| {r.shed} | {r.errors} |"
        )
    load1, load5, _ = os.getloadavg()
    out += [
        "",
        f"Machine: {os.cpu_count()} cores, load average {load1:.1f} (1 min) / {load5:.1f} "
        "(5 min) at the end; the load generator and the server share the cores.",
    ]
    return "\n".join([*out, "", *verdict(rows, slo_ms)])


def _saturated(row: OpenRow) -> bool:
    """Under 90 % of its arrivals answered within the SLO."""
    return row.within_slo < 0.9 * row.arrivals


def verdict(rows: list[OpenRow], slo_ms: float) -> list[str]:
    """The issue's goals, judged on the rows: at every offered rate stowplan's best goodput
    (over its paths, per batching policy) at least KServe's; at saturation (each server's
    peak goodput over the rates, the most it sustains within the SLO) at least 2x KServe's
    peak. A server not saturated at the highest rate has a peak of at least what it showed
    there, which the line says. Then every agent row that loses to KServe at its rate."""
    kserve = {r.rate: r for r in rows if r.batching == "-"}
    agent = [r for r in rows if r.batching != "-"]
    if not kserve or not agent:
        return ["(no comparison: needs kserve-rest and at least one agent path)"]
    out = [f"Goodput (answers within {slo_ms:g} ms per s), stowplan vs KServe:"]
    policies = list(dict.fromkeys(r.batching for r in agent))
    for rate in sorted(kserve):
        ks = kserve[rate]
        parts = []
        for policy in policies:
            mine = [r for r in agent if r.rate == rate and r.batching == policy]
            if not mine:
                continue
            best = max(mine, key=lambda r: r.goodput)
            factor = best.goodput / ks.goodput if ks.goodput > 0 else float("inf")
            ok = "meets" if best.goodput >= ks.goodput else "MISSES"
            parts.append(
                f"batching {policy}: {best.goodput:.0f}/s ({best.path}) = {factor:.2f}x, "
                f"{ok} the 1x goal"
            )
        state = "saturated: < 90 % of arrivals within SLO" if _saturated(ks) else "not saturated"
        out.append(
            f"- offered {rate:g}/s: KServe {ks.goodput:.0f}/s ({state}); " + "; ".join(parts)
        )
    top_rate = max(kserve)
    ks_peak = max(kserve.values(), key=lambda r: r.goodput)
    ks_note = "" if _saturated(kserve[top_rate]) else ", not saturated at the highest rate"
    for policy in policies:
        mine = [r for r in agent if r.batching == policy]
        peak = max(mine, key=lambda r: r.goodput)
        at_top = [r for r in mine if r.rate == top_rate]
        note = (
            ", not saturated at the highest rate: its peak is at least this"
            if at_top and not any(_saturated(r) for r in at_top)
            else ""
        )
        factor = peak.goodput / ks_peak.goodput if ks_peak.goodput > 0 else float("inf")
        ok = "meets" if factor >= 2.0 else "MISSES"
        out.append(
            f"- at saturation, batching {policy}: peak {peak.goodput:.0f}/s ({peak.path} at "
            f"{peak.rate:g}/s{note}) vs KServe's peak {ks_peak.goodput:.0f}/s (at "
            f"{ks_peak.rate:g}/s{ks_note}) = {factor:.2f}x, {ok} the 2x goal"
        )
    losses = [
        f"{r.path}/{r.batching} at {r.rate:g}/s ({r.goodput:.0f} vs {kserve[r.rate].goodput:.0f})"
        for r in agent
        if r.rate in kserve and r.goodput < kserve[r.rate].goodput
    ]
    out.append("Where we lose: " + ("; ".join(losses) if losses else "nowhere in this run."))
    return out


#: an agent path -> the echo path of its stack
_ECHO_OF = {"http-binary": "echo-http", "http-json": "echo-http", "grpc": "echo-grpc"}


def table(rows: list[Row], model: str) -> str:
    direct = {r.concurrency: r for r in rows if r.path == "direct"}
    out = [
        f"Model `{model}` (batch 1 per request), closed loop. `direct`: ONNX Runtime in the "
        "load generator's process; `http-json`, `http-binary`, `grpc`: the stowplan agent "
        "(`stowplan up`, batching `none`); `kserve-rest`: KServe's Python ModelServer "
        "(kserve 0.21.0, ONNX Runtime, per-request logging off); `echo-http`, `echo-grpc` "
        "(when run): the agent's HTTP and gRPC stacks answering a fixed response, no "
        "stowplan code (the stack's floor; the last column is a path's p50 less its "
        "stack's echo p50). Each server alone on the machine in turn.",
        "",
    ]
    echo = {(r.path, r.concurrency): r for r in rows if r.path.startswith("echo-")}
    if echo:
        out += [
            "| path | concurrency | req/s | p50 ms | p99 ms | p50 overhead over direct ms "
            "| errors | p50 over the stack's echo ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        out += [
            "| path | concurrency | req/s | p50 ms | p99 ms | p50 overhead over direct ms "
            "| errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
    for r in rows:
        base = direct.get(r.concurrency)
        over = "-" if r.path == "direct" or base is None else f"{r.p50_ms - base.p50_ms:.3f}"
        line = (
            f"| {r.path} | {r.concurrency} | {r.throughput:.0f} | {r.p50_ms:.3f} "
            f"| {r.p99_ms:.3f} | {over} | {r.errors} |"
        )
        if echo:
            stack = echo.get((_ECHO_OF.get(r.path, ""), r.concurrency))
            line += f" {r.p50_ms - stack.p50_ms:.3f} |" if stack is not None else " - |"
        out.append(line)
    load1, load5, _ = os.getloadavg()
    out += [
        "",
        f"Machine: {os.cpu_count()} cores, load average {load1:.1f} (1 min) / {load5:.1f} "
        "(5 min) at the end; the load generator and the agent share the cores.",
    ]
    return "\n".join(out)


def plot(
    rows: list[Row],
    model: str,
    out: Path,
    open_rows: Sequence[OpenRow] = (),
    slo_ms: float | None = None,
) -> None:
    """PNG. Closed loop (``rows``): p50 latency (solid) and p99 (dashed) against concurrency,
    and throughput, one line per path. Open loop (``open_rows``): goodput (answers within
    ``slo_ms`` per s) against the offered rate, and p99 latency against it, one line per
    (path, batching). Panels only for what was run (matplotlib, Agg backend; imported here so
    the bench runs without it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = (2 if rows else 0) + (2 if open_rows else 0)
    if n == 0:
        raise ValueError("nothing to plot")
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.8), dpi=72, squeeze=False)
    panels = list(axes[0])
    if rows:
        lat_ax, rps_ax = panels.pop(0), panels.pop(0)
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
    if open_rows:
        good_ax, p99_ax = panels.pop(0), panels.pop(0)
        keys = dict.fromkeys((r.path, r.batching) for r in open_rows)
        for path, batching in keys:
            line_rows = sorted(
                (r for r in open_rows if (r.path, r.batching) == (path, batching)),
                key=lambda r: r.rate,
            )
            label = path if batching == "-" else f"{path} ({batching})"
            style = "-" if batching in ("-", "none") else "-."
            rates = [r.rate for r in line_rows]
            good_ax.plot(rates, [r.goodput for r in line_rows], style, marker="o", label=label)
            p99_ax.plot(rates, [r.p99_ms for r in line_rows], style, marker="o", label=label)
        top = max(r.rate for r in open_rows)
        good_ax.plot([0, top], [0, top], ":", color="grey", label="offered")
        slo = f" within {slo_ms:g} ms SLO" if slo_ms is not None else " within SLO"
        good_ax.set_ylabel(f"goodput req/s (answers{slo})")
        p99_ax.set_ylabel("p99 latency ms")
        p99_ax.set_yscale("log")
        if slo_ms is not None:
            p99_ax.axhline(slo_ms, ls=":", color="grey")
        for ax in (good_ax, p99_ax):
            ax.set_xlabel("offered req/s (open loop, Poisson)")
            ax.grid(True, which="both", alpha=0.3)
        good_ax.legend(fontsize=7)
    fig.suptitle(f"stowplan bench dataplane: model {model}, batch 1 per request")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


__all__ = [
    "INPUT_SHAPES",
    "PATHS",
    "Close",
    "EchoGrpc",
    "EchoHttp",
    "Grpc",
    "HttpBinary",
    "HttpJson",
    "KServeRest",
    "OpenRow",
    "PathFactory",
    "Row",
    "Send",
    "StageRow",
    "Target",
    "answer",
    "open_table",
    "plot",
    "poisson_arrivals",
    "run",
    "run_direct",
    "run_open",
    "run_open_loop",
    "run_path",
    "run_stages",
    "serve_agent",
    "serve_echo",
    "serve_kserve",
    "served_manifest",
    "stages_table",
    "table",
    "verdict",
]
