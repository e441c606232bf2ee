"""gRPC conformance with the clients users have: Triton's ``tritonclient.grpc`` (2.73.0) and
KServe's ``InferenceGRPCClient`` (kserve 0.21.0) against a real ``stowplan up`` process serving
every shipped example with ONNX Runtime. Every core call of each client, on every example
model; outputs equal a direct ONNX Runtime call on the same file; every error case raises the
client's own exception carrying the gRPC status and our message.

tritonclient runs in this process; KServe's client runs in a fresh interpreter (``KSERVE``
below), because tritonclient and kserve each register the protocol's ``inference`` messages in
protobuf's default descriptor pool, and the second import in one process fails with
"duplicate symbol 'inference.ServerLiveRequest'".
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from stowplan import standalone

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
EXAMPLE_NAMES = sorted(m.model.metadata.name for m in standalone.read_manifests(EXAMPLES))
STRING_NAMES = ["lexicon"]  # BYTES in and out: the tests at the end of this file
FP32_NAMES = [n for n in EXAMPLE_NAMES if n not in STRING_NAMES]  # one FP32 ``input`` each
TIMEOUT_S = 30.0

# Two more models beside the examples: one whose file is missing (it fails to load: a known
# model that is not ready), and the convnet under a 1 ms SLO that a burst of requests overruns.
# Its batches (static, 4 items) wait up to 0.1 ms, so no request of it runs inline on the event
# loop (DeviceExecutor.try_run_inline): a burst run inline one at a time never queues, so with
# batching none, whenever its batch time was under the inline bound nothing was shed and this
# test failed (4 of 4 module runs on the shared 2-core machine, before this change).
EXTRA = """\
apiVersion: stowplan.io/v1alpha1
kind: InferenceModel
metadata: {name: broken}
spec:
  model: {uri: "file://models/no-such-model.onnx"}
  slo: {latencyMs: 100, targetQPS: 10}
  profile: {latencyMs: {base: 1.0, perItem: 0.1}, memoryMiB: {weights: 10, perItem: 1}, maxBatch: 8}
---
apiVersion: stowplan.io/v1alpha1
kind: InferenceModel
metadata: {name: tight}
spec:
  model: {uri: "file://models/convnet.onnx"}
  slo: {latencyMs: 1, targetQPS: 10}
  profile: {latencyMs: {base: 0.5, perItem: 0.1}, memoryMiB: {weights: 10, perItem: 1}, maxBatch: 4}
  batching: {policy: static, staticBatchSize: 4, maxQueueDelayMs: 0.1}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    grpc_url: str
    http_url: str
    cache: Path
    proc: subprocess.Popen[bytes]

    def model_file(self, name: str) -> Path:
        manifest = next(
            m for m in standalone.read_manifests(EXAMPLES) if m.model.metadata.name == name
        )
        path = self.cache / "examples" / Path(manifest.model.spec.model.uri).name
        assert path.is_file(), path
        return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("grpc-up")
    models = work / "manifests"
    shutil.copytree(EXAMPLES, models)
    (models / "zz-extra.yaml").write_text(EXTRA)
    port, grpc_port = _free_port(), _free_port()
    log = (work / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stowplan", "up", str(models), "--host", "127.0.0.1",
         "--port", str(port), "--grpc-port", str(grpc_port), "--no-nvml",
         "--cache-dir", str(work / "cache")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    srv = Server(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{port}", work / "cache", proc)
    client = tg.InferenceServerClient(srv.grpc_url)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if client.is_server_ready(client_timeout=2):
                    break
            except InferenceServerException:
                pass
            text = (work / "up.log").read_text()
            assert proc.poll() is None, f"stowplan up exited:\n{text}"
            assert time.monotonic() < deadline, f"stowplan up did not get ready:\n{text}"
            time.sleep(0.3)
        yield srv
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        text = (work / "up.log").read_text()
        assert proc.returncode == 0, text
        assert "stopped" in text and "Traceback" not in text, text
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture
def client(server: Server) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _inputs(session: ort.InferenceSession, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in arg.shape]
        out[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _direct(server: Server, name: str, batch: int = 3, seed: int = 0) -> tuple[Any, Any]:
    session = ort.InferenceSession(str(server.model_file(name)), providers=["CPUExecutionProvider"])
    feeds = _inputs(session, batch, seed)
    outs = session.run(None, feeds)
    return feeds, {o.name: v for o, v in zip(session.get_outputs(), outs, strict=True)}


def _triton_inputs(feeds: dict[str, np.ndarray]) -> list[tg.InferInput]:
    inputs = []
    for name, arr in feeds.items():
        i = tg.InferInput(name, list(arr.shape), "FP32")
        i.set_data_from_numpy(arr)  # raw_input_contents, tritonclient's only encoding
        inputs.append(i)
    return inputs


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


# ---- tritonclient.grpc -------------------------------------------------------------------------


def test_server_live_ready_and_metadata(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live(client_timeout=TIMEOUT_S) is True
    assert client.is_server_ready(client_timeout=TIMEOUT_S) is True
    meta = client.get_server_metadata(as_json=True, client_timeout=TIMEOUT_S)
    assert meta["name"] == "stowplan" and meta["version"]
    assert {"model_configuration", "statistics"} <= set(meta["extensions"])


@pytest.mark.parametrize("name", FP32_NAMES)
def test_every_example_model_answers_like_onnx_runtime(
    server: Server, client: tg.InferenceServerClient, name: str
) -> None:
    feeds, expected = _direct(server, name)
    session = ort.InferenceSession(str(server.model_file(name)), providers=["CPUExecutionProvider"])

    assert client.is_model_ready(name, client_timeout=TIMEOUT_S) is True
    assert client.is_model_ready(name, "1", client_timeout=TIMEOUT_S) is True
    meta = client.get_model_metadata(name, as_json=True, client_timeout=TIMEOUT_S)
    assert meta["name"] == name and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    want_in = [
        {"name": a.name, "datatype": "FP32", "shape": [str(d if isinstance(d, int) else -1)
                                                       for d in a.shape]}
        for a in session.get_inputs()
    ]  # fmt: skip
    assert meta["inputs"] == want_in  # int64 shapes: protobuf's JSON writes them as strings
    assert [o["name"] for o in meta["outputs"]] == [o.name for o in session.get_outputs()]

    config = client.get_model_config(name, as_json=True, client_timeout=TIMEOUT_S)["config"]
    manifest = next(m for m in standalone.read_manifests(EXAMPLES) if m.model.metadata.name == name)
    assert config["name"] == name and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == manifest.model.spec.profile.max_batch
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in config["input"][0]["dims"]] == list(feeds["input"].shape[1:])

    result = client.infer(name, _triton_inputs(feeds), request_id="r-1", client_timeout=TIMEOUT_S)
    response = result.get_response()
    assert response.model_name == name and response.model_version == "1" and response.id == "r-1"
    assert len(response.raw_output_contents) == len(expected)  # answered in raw contents
    for out_name, want in expected.items():
        got = result.as_numpy(out_name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    # one requested output, through the async API
    first = next(iter(expected))
    done: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.async_infer(
        name,
        _triton_inputs(feeds),
        callback=lambda result, error: done.put((result, error)),
        outputs=[tg.InferRequestedOutput(first)],
        client_timeout=TIMEOUT_S,
    )
    got_result, error = done.get(timeout=TIMEOUT_S)
    assert error is None
    assert [o.name for o in got_result.get_response().outputs] == [first]
    np.testing.assert_allclose(got_result.as_numpy(first), expected[first], rtol=1e-5, atol=1e-5)


def test_typed_contents_equal_raw_contents(server: Server) -> None:
    # tritonclient always sends raw bytes; its generated stub sends the typed fp32_contents
    feeds, expected = _direct(server, "mlp", batch=2, seed=7)
    x = feeds["input"]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="mlp")
        t = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        t.contents.fp32_contents.extend(x.reshape(-1).tolist())
        response = stub.ModelInfer(request, timeout=TIMEOUT_S)
    out = response.outputs[0]
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(out.shape))
    np.testing.assert_allclose(got, expected[out.name], rtol=1e-5, atol=1e-5)


def _raw_request(x: np.ndarray, nbytes: int | None = None) -> Any:
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    raw = x.astype("<f4").tobytes()
    request.raw_input_contents.append(raw if nbytes is None else raw[:nbytes])
    return request


def _both_contents(x: np.ndarray) -> Any:
    request = _raw_request(x)
    request.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
    return request


@pytest.mark.parametrize(
    ("build", "code", "fragment"),
    [
        (lambda x: _raw_request(x, 17), grpc.StatusCode.INVALID_ARGUMENT, "has 17 bytes"),
        (_both_contents, grpc.StatusCode.INVALID_ARGUMENT, "use one or the other"),
    ],
    ids=["raw-byte-count", "raw-and-typed"],
)
def test_malformed_raw_requests(server: Server, build: Any, code: Any, fragment: str) -> None:
    x = np.zeros((1, 64), np.float32)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(build(x), timeout=TIMEOUT_S)
    assert info.value.code() == code
    assert fragment in info.value.details() and "'input'" in info.value.details()


def _infer(name: str, arrays: dict[str, tuple[np.ndarray, str]], **kw: Any) -> Any:
    def call(c: tg.InferenceServerClient) -> Any:
        inputs = []
        for n, (arr, datatype) in arrays.items():
            i = tg.InferInput(n, list(arr.shape), datatype)
            i.set_data_from_numpy(arr)
            inputs.append(i)
        return c.infer(name, inputs, client_timeout=TIMEOUT_S, **kw)

    return call


X = np.zeros((2, 64), np.float32)
ERRORS = {
    "unknown-model-infer": (
        _infer("nope", {"input": (X, "FP32")}),
        "StatusCode.NOT_FOUND",
        "model 'nope' is not served here",
    ),
    "unknown-model-ready": (
        lambda c: c.is_model_ready("nope", client_timeout=TIMEOUT_S),
        "StatusCode.NOT_FOUND",
        "'nope'",
    ),
    "unknown-model-metadata": (
        lambda c: c.get_model_metadata("nope", client_timeout=TIMEOUT_S),
        "StatusCode.NOT_FOUND",
        "'nope'",
    ),
    "unknown-model-config": (
        lambda c: c.get_model_config("nope", client_timeout=TIMEOUT_S),
        "StatusCode.NOT_FOUND",
        "'nope'",
    ),
    "unknown-version": (
        _infer("mlp", {"input": (X, "FP32")}, model_version="7"),
        "StatusCode.NOT_FOUND",
        "no version '7'",
    ),
    "wrong-datatype": (
        _infer("mlp", {"input": (X.astype(np.float64), "FP64")}),
        "StatusCode.INVALID_ARGUMENT",
        "input 'input' has datatype 'FP64'; the model expects 'FP32'",
    ),
    "wrong-shape": (
        _infer("mlp", {"input": (np.zeros((2, 63), np.float32), "FP32")}),
        "StatusCode.INVALID_ARGUMENT",
        "input 'input' has shape [2, 63]",
    ),
    "unknown-input": (
        _infer("mlp", {"input": (X, "FP32"), "extra": (X, "FP32")}),
        "StatusCode.INVALID_ARGUMENT",
        "unknown input(s) ['extra']",
    ),
    "missing-input": (
        lambda c: c.infer("mlp", [], client_timeout=TIMEOUT_S),
        "StatusCode.INVALID_ARGUMENT",
        "missing input(s) ['input']",
    ),
    "unknown-output": (
        _infer("mlp", {"input": (X, "FP32")}, outputs=[tg.InferRequestedOutput("nope")]),
        "StatusCode.INVALID_ARGUMENT",
        "unknown output(s) ['nope']",
    ),
    "batch-too-large": (
        _infer("mlp", {"input": (np.zeros((65, 64), np.float32), "FP32")}),
        "StatusCode.INVALID_ARGUMENT",
        "batch of 65 items exceeds the model's max batch 64",
    ),
    "model-not-ready": (
        _infer("broken", {"input": (X, "FP32")}),
        "StatusCode.UNAVAILABLE",
        "model 'broken' is Failed",
    ),
    "load-model": (
        lambda c: c.load_model("mlp", client_timeout=TIMEOUT_S),
        "StatusCode.UNIMPLEMENTED",
        "RepositoryModelLoad is not served by stowplan",
    ),
    "log-settings": (
        lambda c: c.get_log_settings(client_timeout=TIMEOUT_S),
        "StatusCode.UNIMPLEMENTED",
        "LogSettings is not served by stowplan",
    ),
    "shared-memory": (
        lambda c: c.get_system_shared_memory_status(client_timeout=TIMEOUT_S),
        "StatusCode.UNIMPLEMENTED",
        "SystemSharedMemoryStatus is not served by stowplan",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_cases_raise_the_clients_exception_with_our_message(
    client: tg.InferenceServerClient, case: str
) -> None:
    call, status, fragment = ERRORS[case]
    with pytest.raises(InferenceServerException) as info:
        call(client)
    assert _status(info.value) == status, info.value
    assert fragment in info.value.message(), info.value.message()


def test_model_ready_is_false_for_a_known_model_that_failed(
    client: tg.InferenceServerClient,
) -> None:
    assert client.is_model_ready("broken", client_timeout=TIMEOUT_S) is False


def test_streaming_infer_is_refused_with_a_message(client: tg.InferenceServerClient) -> None:
    errors: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: errors.put(error), stream_timeout=TIMEOUT_S)
    try:
        # the refusal may already have ended the stream: the client then says so here, and
        # hands the server's status to the callback
        with contextlib.suppress(InferenceServerException):
            client.async_stream_infer("mlp", _triton_inputs({"input": X}))
        error = errors.get(timeout=TIMEOUT_S)
    finally:
        client.stop_stream()
    assert isinstance(error, InferenceServerException)
    assert _status(error) == "StatusCode.UNIMPLEMENTED"
    assert "ModelStreamInfer is not served by stowplan" in error.message()


def test_a_burst_past_the_slo_is_shed_as_unavailable(client: tg.InferenceServerClient) -> None:
    # 48 requests at once for a model with a 1 ms SLO, one request per batch: most wait longer
    # than the SLO in the queue and are shed; each refusal is UNAVAILABLE with the reason
    done: queue.Queue[tuple[Any, Any]] = queue.Queue()
    x = np.zeros((4, 3, 32, 32), np.float32)  # a full batch (max 4) each: four times the work
    for _ in range(48):
        client.async_infer(
            "tight",
            _triton_inputs({"input": x}),
            callback=lambda result, error: done.put((result, error)),
            client_timeout=TIMEOUT_S,
        )
    results = [done.get(timeout=TIMEOUT_S) for _ in range(48)]
    errors = [e for _, e in results if e is not None]
    assert errors, "no request was shed"
    for e in errors:
        assert _status(e) == "StatusCode.UNAVAILABLE", e
        assert "tight" in e.message() and "SLO" in e.message(), e.message()


def test_statistics_and_repository_index_have_real_values(
    server: Server, client: tg.InferenceServerClient
) -> None:
    import httpx

    feeds, _ = _direct(server, "mlp-wide", batch=2)
    before = client.get_inference_statistics("mlp-wide", as_json=True, client_timeout=TIMEOUT_S)
    for _ in range(3):
        client.infer("mlp-wide", _triton_inputs(feeds), client_timeout=TIMEOUT_S)
    after = client.get_inference_statistics("mlp-wide", as_json=True, client_timeout=TIMEOUT_S)

    def success(stats: dict[str, Any]) -> int:
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))

    assert success(after) == success(before) + 3
    s = after["model_stats"][0]
    assert s["name"] == "mlp-wide" and int(s["inference_count"]) >= 6
    assert int(s["inference_stats"]["compute_infer"]["ns"]) > 0
    # the same counters the Prometheus endpoint exports
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=TIMEOUT_S).text
    line = next(
        ln
        for ln in metrics.splitlines()
        if ln.startswith('nv_inference_request_success_total{model="mlp-wide"')
    )
    assert float(line.split()[-1]) == success(after)
    every = client.get_inference_statistics(as_json=True, client_timeout=TIMEOUT_S)
    assert {m["name"] for m in every["model_stats"]} >= set(EXAMPLE_NAMES)

    index = client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)["models"]
    by_name = {m["name"]: m for m in index}
    assert set(by_name) == {*EXAMPLE_NAMES, "broken", "tight"}
    assert all(by_name[n]["state"] == "READY" for n in EXAMPLE_NAMES)
    assert by_name["broken"]["state"] == "UNAVAILABLE" and by_name["broken"]["reason"]
    ready = client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
    ready_only = tg.service_pb2.RepositoryIndexRequest(ready=True)
    assert ready["models"]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        names = {m.name for m in stub.RepositoryIndex(ready_only, timeout=TIMEOUT_S).models}
    assert "broken" not in names and set(EXAMPLE_NAMES) <= names


# ---- KServe's InferenceGRPCClient (in its own interpreter) --------------------------------------

KSERVE = r"""
import asyncio, base64, io, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

url, cases = sys.argv[1], json.loads(sys.stdin.read())

def load(b64):
    return np.load(io.BytesIO(base64.b64decode(b64)))

def dump(arr):
    buf = io.BytesIO(); np.save(buf, arr); return base64.b64encode(buf.getvalue()).decode()

async def main():
    client = InferenceGRPCClient(url, timeout=30, retries=0)
    out = {"live": await client.is_server_live(), "ready": await client.is_server_ready(),
           "models": {}, "errors": {}}
    for name, inputs in cases["models"].items():
        infer_inputs = []
        for n, b64 in inputs.items():
            arr = load(b64)
            i = InferInput(n, list(arr.shape), "FP32")
            i.set_data_from_numpy(arr, binary_data=True)
            infer_inputs.append(i)
        response = await client.infer(InferRequest(name, infer_inputs, request_id="k-1"))
        out["models"][name] = {
            "model_ready": await client.is_model_ready(name),
            "model_name": response.model_name,
            "id": response.id,
            "outputs": {o.name: dump(o.as_numpy()) for o in response.outputs},
        }
    for case, (name, b64) in cases["errors"].items():
        arr = load(b64)
        i = InferInput("input", list(arr.shape), "FP32")
        i.set_data_from_numpy(arr, binary_data=True)
        try:
            await client.infer(InferRequest(name, [i]))
            out["errors"][case] = None
        except Exception as exc:
            out["errors"][case] = [type(exc).__name__, str(exc.code()), exc.details()]
    try:
        await client.is_model_ready("nope")
        out["errors"]["ready-unknown"] = None
    except Exception as exc:
        out["errors"]["ready-unknown"] = [type(exc).__name__, str(exc.code()), exc.details()]
    await client.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def _npy(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr)
    return base64.b64encode(buf.getvalue()).decode()


def test_kserve_grpc_client_on_every_example_model(server: Server) -> None:
    direct = {name: _direct(server, name, batch=2, seed=3) for name in FP32_NAMES}
    cases = {
        "models": {
            name: {n: _npy(a) for n, a in feeds.items()} for name, (feeds, _) in direct.items()
        },
        "errors": {
            "unknown-model": ["nope", _npy(X)],
            "wrong-shape": ["mlp", _npy(np.zeros((2, 63), np.float32))],
            "not-ready": ["broken", _npy(X)],
        },
    }
    run = subprocess.run(
        [sys.executable, "-c", KSERVE, server.grpc_url],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["live"] is True and out["ready"] is True
    for name, (_, expected) in direct.items():
        got = out["models"][name]
        assert got["model_ready"] is True and got["model_name"] == name and got["id"] == "k-1"
        assert set(got["outputs"]) == set(expected)
        for out_name, want in expected.items():
            arr = np.load(io.BytesIO(base64.b64decode(got["outputs"][out_name])))
            np.testing.assert_allclose(arr, want, rtol=1e-5, atol=1e-5)
    errors = out["errors"]
    assert errors["unknown-model"][1:] == [
        "StatusCode.NOT_FOUND",
        "model 'nope' is not served here",
    ]
    assert errors["ready-unknown"][1] == "StatusCode.NOT_FOUND"
    assert errors["wrong-shape"][1] == "StatusCode.INVALID_ARGUMENT"
    assert "input 'input' has shape [2, 63]" in errors["wrong-shape"][2]
    assert errors["not-ready"][1] == "StatusCode.UNAVAILABLE"
    assert "model 'broken' is Failed" in errors["not-ready"][2]
    assert all(e[0] == "AioRpcError" for e in errors.values())


# ---- BYTES end to end: the lexicon example (text [N,1] -> class_id INT64, label BYTES) ----------

WORDS = ["猫", "", "cat", "Hund", "zebra", "pájaro", "Cat", "鳥"]  # as test_bytes_http.py


def _lexicon(words: list[str]) -> tuple[list[int], list[str]]:
    from stowplan.models import LEXICON, LEXICON_LABELS

    ids = [LEXICON.get(w, -1) for w in words]
    return ids, [LEXICON_LABELS.get(i, "") for i in ids]


def _texts(arr: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]


def test_tritonclient_grpc_bytes_agree_with_onnxruntime(
    server: Server, client: tg.InferenceServerClient
) -> None:
    x = np.array(WORDS, dtype=object).reshape(-1, 1)
    session = ort.InferenceSession(
        str(server.model_file("lexicon")), providers=["CPUExecutionProvider"]
    )
    want_ids, want_labels = session.run(None, {"text": x})
    assert (want_ids.reshape(-1).tolist(), _texts(want_labels)) == _lexicon(WORDS)
    meta = client.get_model_metadata("lexicon", as_json=True, client_timeout=TIMEOUT_S)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1", "1"]}]
    config = client.get_model_config("lexicon", as_json=True, client_timeout=TIMEOUT_S)["config"]
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    inp = tg.InferInput("text", list(x.shape), "BYTES")
    inp.set_data_from_numpy(x)  # raw_input_contents: 4-byte length prefixes
    result = client.infer("lexicon", [inp], request_id="b-1", client_timeout=TIMEOUT_S)
    assert result.get_response().id == "b-1"
    assert result.as_numpy("class_id").dtype == np.int64
    got = (result.as_numpy("class_id").reshape(-1).tolist(), _texts(result.as_numpy("label")))
    assert got == _lexicon(WORDS)


def test_typed_bytes_contents_equal_raw_contents(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="lexicon")
        t = request.inputs.add(name="text", datatype="BYTES", shape=[len(WORDS), 1])
        t.contents.bytes_contents.extend(w.encode() for w in WORDS)
        response = stub.ModelInfer(request, timeout=TIMEOUT_S)
    by_name = dict(
        zip([o.name for o in response.outputs], response.raw_output_contents, strict=True)
    )
    ids = np.frombuffer(by_name["class_id"], dtype="<i8").tolist()
    labels, blob = [], by_name["label"]
    while blob:
        n = int.from_bytes(blob[:4], "little")
        labels.append(blob[4 : 4 + n].decode())
        blob = blob[4 + n :]
    assert (ids, labels) == _lexicon(WORDS)


def _bytes_request(raw: bytes, rows: int = 1, datatype: str = "BYTES") -> Any:
    request = service_pb2.ModelInferRequest(model_name="lexicon")
    request.inputs.add(name="text", datatype=datatype, shape=[rows, 1])
    request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (_bytes_request(b"\x03\0"), "element 0 has a truncated 4-byte length prefix"),
        (_bytes_request(b"\x05\0\0\0ab"), "element 0 declares 5 bytes but only 2 remain"),
        (_bytes_request(b"\x01\0\0\0\xff"), "element 0 is not UTF-8"),
        (_bytes_request(b"\x01\0\0\0a", rows=2), "needs 2 BYTES elements"),
        (_bytes_request(b"\0\0\0\0", datatype="FP32"), "the model expects 'BYTES'"),
    ],
    ids=["truncated-prefix", "overrun", "not-utf8", "too-few", "wrong-datatype"],
)
def test_malformed_bytes_are_invalid_argument(server: Server, request_: Any, fragment: str) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request_, timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert fragment in info.value.details() and "'text'" in info.value.details()


KSERVE_BYTES = r"""
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

url, words = sys.argv[1], json.loads(sys.stdin.read())

async def main():
    client = InferenceGRPCClient(url, timeout=30, retries=0)
    x = np.array(words, dtype=object).reshape(-1, 1)
    out = {}
    for binary in (True, False):  # raw_input_contents, or contents.bytes_contents
        i = InferInput("text", list(x.shape), "BYTES")
        i.set_data_from_numpy(x, binary_data=binary)
        response = await client.infer(InferRequest("lexicon", [i], request_id="k-2"))
        got = {o.name: o.as_numpy() for o in response.outputs}
        out[f"binary={binary}"] = {
            "id": response.id,
            "datatypes": [o.datatype for o in response.outputs],
            "class_id": got["class_id"].reshape(-1).tolist(),
            "label": [v.decode() if isinstance(v, bytes) else str(v)
                      for v in got["label"].reshape(-1)],
        }
    await client.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_kserve_grpc_client_bytes(server: Server) -> None:
    run = subprocess.run(
        [sys.executable, "-c", KSERVE_BYTES, server.grpc_url],
        input=json.dumps(WORDS),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(out) == {"binary=True", "binary=False"}
    for path, got in out.items():
        assert got["id"] == "k-2" and got["datatypes"] == ["INT64", "BYTES"], path
        assert (got["class_id"], got["label"]) == _lexicon(WORDS), path
