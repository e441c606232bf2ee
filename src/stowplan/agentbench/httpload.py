"""Benchmark: the real agent over HTTP (``stowplan bench http``).

Starts ``stowplan up`` in a subprocess serving one real ONNX model (built by
:mod:`stowplan.models`) on the CPU with a given batching policy, drives it with an open-loop
Poisson load generator (asyncio streams, requests sent on schedule whether or not earlier ones
answered), and reports throughput, p50/p99 latency and SLO attainment per policy and rate. The
agent's overhead per request is the p50 latency at a low rate minus the p50 of a direct ONNX
Runtime call on the same input. Client and server share this machine's cores, so the numbers
include the load generator's own CPU use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from stowplan.models import EXAMPLES, build_example

YAML = """\
apiVersion: stowplan.io/v1alpha1
kind: InferenceModel
metadata: {{name: bench}}
spec:
  model: {{uri: "file://{path}"}}
  slo: {{latencyMs: {slo}, targetQPS: {qps}}}
  profile:
    latencyMs: {{base: 0.5, perItem: 0.1}}
    memoryMiB: {{weights: 10, perItem: 1}}
    maxBatch: {max_batch}
  batching: {batching}
"""

POLICIES = {
    "none": "{policy: none}",
    "static-8": "{policy: static, staticBatchSize: 8, maxQueueDelayMs: 2}",
    "aimd": "{policy: aimd, maxQueueDelayMs: 2}",
}


@dataclass(frozen=True)
class HttpRow:
    policy: str
    rate: float
    sent: int
    ok: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    within_slo: int
    mean_batch: float
    agent_ms: float  # mean request time inside the agent (parse to response), from /metrics
    queue_ms: float
    compute_ms: float

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server process this module (or a sibling benchmark) started; kill it after
    10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serve(
    workdir: Path,
    policy: str,
    model_path: Path,
    slo_ms: float,
    grpc_port: int = 0,
    manifest: str | None = None,
    launcher: Sequence[str] = ("-m", "stowplan"),
) -> Iterator[str]:
    """Run ``stowplan up`` on one model in a subprocess; yield its base URL. ``grpc_port`` 0
    serves HTTP only; otherwise the agent also serves the OIP gRPC service on that port.
    ``manifest``, when given, is the InferenceModel YAML served instead of the bench template
    (``policy`` then only names its directory). ``launcher``: the interpreter's arguments
    before ``up`` (another module that runs the command line, such as :mod:`.stages`)."""
    d = workdir / policy
    d.mkdir(parents=True, exist_ok=True)
    (d / "bench.yaml").write_text(
        manifest
        or YAML.format(
            path=model_path, slo=slo_ms, qps=100, max_batch=32, batching=POLICIES[policy]
        )
    )
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            *launcher,
            "up",
            str(d),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--no-nvml",
            "--sim-devices",
            "1",
            "--cache-dir",
            str(workdir / "cache"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"agent exited: {proc.stderr.read().decode()[-2000:]}"
                    if proc.stderr
                    else "agent exited"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not become ready within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        stop(proc)


def _body(model: str, seed: int = 0) -> bytes:
    shape = {"mlp": [1, 64], "convnet": [1, 3, 32, 32], "mlp-wide": [1, 256]}[model]
    x = np.random.default_rng(seed).standard_normal(int(np.prod(shape))).astype(np.float32)
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": "FP32",
                    "data": [round(float(v), 4) for v in x],
                }
            ]
        }
    ).encode()


_JSON_CONTENT_TYPE = "Content-Type: application/json\r\n"


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, several times cheaper per request
    than httpx, so that on a small machine the load generator does not starve the agent it
    measures. POST only, Content-Length bodies only (what the agent answers)."""

    def __init__(self, host: str, port: int, max_connections: int = 256) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def post(self, path: str, body: bytes, headers: str = "") -> int:
        """POST ``body``; ``headers`` are extra header lines, each ending in CRLF (the default
        Content-Type is JSON)."""
        status, _, _ = await self.request(path, body, headers)
        return status

    async def request(
        self, path: str, body: bytes, headers: str = ""
    ) -> tuple[int, bytes, int | None]:
        """POST ``body``; (status, response body, its Inference-Header-Content-Length)."""
        async with self._slots:
            if self._idle:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                    f"{headers or _JSON_CONTENT_TYPE}"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                status = int((await reader.readline()).split()[1])
                length = 0
                json_length: int | None = None
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    key = name.strip().lower()
                    if key == b"content-length":
                        length = int(value)
                    elif key == b"inference-header-content-length":
                        json_length = int(value)
                content = await reader.readexactly(length)
            except BaseException:
                writer.close()
                raise
            self._idle.append((reader, writer))
            return status, content, json_length

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _open_loop(
    url: str, body: bytes, rate: float, duration_s: float, seed: int
) -> tuple[list[float], int, int, float]:
    """Send Poisson arrivals on schedule whatever the answers do; latency counts from each
    request's scheduled send time (no coordinated omission)."""
    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    errors = 0
    sent = 0
    parsed = httpx.URL(url)
    client = RawClient(parsed.host, parsed.port or 80)

    async def one(t_sched: float) -> None:
        nonlocal errors
        try:
            status = await client.post("/v2/models/bench/infer", body)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            errors += 1
            return
        if status == 200:
            latencies.append((time.monotonic() - t_sched) * 1000.0)
        else:
            errors += 1

    tasks = []
    start = time.monotonic()
    next_t = start
    while next_t < start + duration_s:
        delay = next_t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(next_t)))
        sent += 1
        next_t += float(rng.exponential(1.0 / rate))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    client.close()
    return latencies, errors, sent, elapsed


_COUNTERS = (
    "nv_inference_count_total",
    "nv_inference_exec_count_total",
    "nv_inference_request_success_total",
    "nv_inference_request_duration_us_total",
    "nv_inference_queue_duration_us_total",
    "nv_inference_compute_infer_duration_us_total",
)


def _counters(url: str) -> dict[str, float]:
    """The agent's own Triton-named counters for the bench model (cumulative)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    vals = dict.fromkeys(_COUNTERS, 0.0)
    for line in text.splitlines():
        key = line.split("{", 1)[0]
        if key in vals and 'model="bench"' in line:
            vals[key] = float(line.rsplit(" ", 1)[1])
    return vals


def direct_p50_ms(model_path: Path, model: str, n: int = 500) -> float:
    """p50 of a direct ONNX Runtime call (batch 1), the floor the agent adds overhead to."""
    from stowplan.agent.runtime import OnnxModel  # ONNX Runtime in this process: here only

    m = OnnxModel(model_path, intra_op_threads=1)
    req = json.loads(_body(model))["inputs"][0]
    x = np.asarray(req["data"], np.float32).reshape(req["shape"])
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        m.run({"input": x})
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.percentile(times, 50))


def run(
    model: str = "mlp-wide",
    rates: tuple[float, ...] = (150, 300, 600),
    policies: tuple[str, ...] = ("none", "static-8", "aimd"),
    duration_s: float = 10.0,
    slo_ms: float = 50.0,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> tuple[list[HttpRow], float]:
    if model not in EXAMPLES:
        raise ValueError(f"unknown example model {model!r}; choose from {sorted(EXAMPLES)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="stowplan-bench-http-") as tmp:
        work = Path(tmp)
        path = build_example(model, work / "models")
        direct = direct_p50_ms(path, model)
        body = _body(model, seed)
        for policy in policies:
            with serve(work, policy, path, slo_ms) as url:
                asyncio.run(_open_loop(url, body, 50, 1.0, seed))  # warm-up
                for rate in rates:
                    before = _counters(url)
                    lats, errors, sent, elapsed = asyncio.run(
                        _open_loop(url, body, rate, duration_s, seed)
                    )
                    arr = np.asarray(lats) if lats else np.asarray([np.nan])
                    after = _counters(url)
                    d = {k: after[k] - before[k] for k in _COUNTERS}
                    ok = max(d["nv_inference_request_success_total"], 1.0)
                    execs = max(d["nv_inference_exec_count_total"], 1.0)
                    rows.append(
                        HttpRow(
                            policy,
                            rate,
                            sent,
                            len(lats),
                            errors,
                            elapsed,
                            float(np.percentile(arr, 50)),
                            float(np.percentile(arr, 99)),
                            int((arr <= slo_ms).sum()),
                            d["nv_inference_count_total"] / execs,
                            d["nv_inference_request_duration_us_total"] / ok / 1000.0,
                            d["nv_inference_queue_duration_us_total"] / ok / 1000.0,
                            d["nv_inference_compute_infer_duration_us_total"] / ok / 1000.0,
                        )
                    )
                    if progress:
                        progress()
    return rows, direct


def table(rows: list[HttpRow], direct_ms: float, slo_ms: float) -> str:
    out = [
        f"| policy | offered req/s | answered req/s | errors | p50 ms | p99 ms "
        f"| within {slo_ms:g} ms SLO | mean batch | in agent ms (queue / compute) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.policy} | {r.rate:.0f} | {r.throughput:.0f} | {r.errors} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.within_slo / max(r.sent, 1) * 100:.1f}% "
            f"| {r.mean_batch:.2f} | {r.agent_ms:.2f} ({r.queue_ms:.2f} / {r.compute_ms:.2f}) |"
        )
    low = [r for r in rows if r.rate == min(x.rate for x in rows)]
    if low:
        p50 = min(r.p50_ms for r in low)
        out.append("")
        load1, load5, _ = os.getloadavg()
        out.append(
            f"Machine: {os.cpu_count()} cores, load average {load1:.1f} (1 min) / "
            f"{load5:.1f} (5 min) at the end of the run; client and agent share it."
        )
        out.append("")
        out.append(
            f"Direct ONNX Runtime call (batch 1) p50: {direct_ms:.3f} ms; agent p50 at "
            f"{low[0].rate:.0f} req/s: {p50:.2f} ms; overhead per request "
            f"≈ {p50 - direct_ms:.2f} ms (HTTP + JSON + queue + executor hop)."
        )
    return "\n".join(out)
