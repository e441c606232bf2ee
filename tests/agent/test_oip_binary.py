"""The binary tensor data extension over HTTP (Inference-Header-Content-Length, binary inputs and
outputs, BYTES length prefixes), and the Triton-only endpoints (model config, repository index,
inference statistics, no model control), against the example agent in process."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from stowplan.agent.errors import InvalidRequest
from stowplan.agent.protocol import RequestInput
from stowplan.agent.tensors import (
    TensorSpec,
    decode_inputs,
    deserialize_bytes,
    encode_response,
    serialize_bytes,
)
from stowplan.testing.agent import mlp_request

H = "Inference-Header-Content-Length"


def _binary_body(
    x: np.ndarray, *, size: int | None = None, params: dict[str, Any] | None = None, **extra: Any
) -> tuple[bytes, dict[str, str]]:
    raw = x.astype("<f4").tobytes()
    head = {
        "id": "b1",
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw) if size is None else size},
            }
        ],
        **extra,
    }
    if params is not None:
        head["parameters"] = params
    js = json.dumps(head).encode()
    return js + raw, {H: str(len(js)), "content-type": "application/octet-stream"}


def _split(resp: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse a response that may carry binary outputs: (JSON header, binary outputs)."""
    n = int(resp.headers.get(H, len(resp.content)))
    head = json.loads(resp.content[:n])
    pos, arrays = n, {}
    for o in head["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            assert o["datatype"] == "FP32" and "data" not in o
            arrays[o["name"]] = np.frombuffer(resp.content[pos : pos + size], "<f4").reshape(
                o["shape"]
            )
            pos += size
    assert pos == len(resp.content)
    return head, arrays


def _x(rows: int = 2, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)


def _json_logits(client: TestClient, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32"}]}
    body["inputs"][0]["data"] = x.ravel().tolist()
    resp = client.post("/v2/models/mlp/infer", json=body)
    assert resp.status_code == 200, resp.text
    assert H not in resp.headers and resp.headers["content-type"] == "application/json"
    (out,) = resp.json()["outputs"]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_binary_input_json_output_equals_json_path(client: TestClient) -> None:
    x = _x()
    body, headers = _binary_body(x)
    resp = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert H not in resp.headers  # nothing asked binary: the answer is plain JSON
    (out,) = resp.json()["outputs"]
    assert resp.json()["id"] == "b1" and out["shape"] == [2, 10]
    np.testing.assert_array_equal(
        np.asarray(out["data"], np.float32).reshape(2, 10), _json_logits(client, x)
    )


@pytest.mark.parametrize(
    ("params", "outputs"),
    [
        pytest.param({"binary_data_output": True}, None, id="request-level"),
        pytest.param(
            None, [{"name": "logits", "parameters": {"binary_data": True}}], id="per-output"
        ),
        pytest.param(
            {"binary_data_output": False},
            [{"name": "logits", "parameters": {"binary_data": True}}],
            id="output-overrides-request",
        ),
    ],
)
def test_binary_outputs(
    client: TestClient, params: dict[str, Any] | None, outputs: list[dict[str, Any]] | None
) -> None:
    x = _x()
    extra = {"outputs": outputs} if outputs else {}
    body, headers = _binary_body(x, params=params, **extra)
    resp = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/octet-stream"
    head, arrays = _split(resp)
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 2 * 10 * 4}
    np.testing.assert_array_equal(arrays["logits"], _json_logits(client, x))


def test_output_binary_false_overrides_request_default(client: TestClient) -> None:
    body = mlp_request()
    body["parameters"] = {"binary_data_output": True}
    body["outputs"] = [{"name": "logits", "parameters": {"binary_data": False}}]
    resp = client.post("/v2/models/mlp/infer", json=body)
    assert resp.status_code == 200 and H not in resp.headers
    assert len(resp.json()["outputs"][0]["data"]) == 10


def test_gzip_and_deflate_bodies(client: TestClient) -> None:
    x = _x()
    body, headers = _binary_body(x)
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        resp = client.post(
            "/v2/models/mlp/infer",
            content=packed,
            headers={**headers, "content-encoding": encoding},
        )
        assert resp.status_code == 200, (encoding, resp.text)
    resp = client.post(
        "/v2/models/mlp/infer", content=body, headers={**headers, "content-encoding": "br"}
    )
    assert resp.status_code == 400 and "Content-Encoding" in resp.json()["error"]


def _bad(**changes: Any) -> tuple[bytes, dict[str, str]]:
    x = _x(rows=1)
    body, headers = _binary_body(x, size=changes.pop("size", None))
    if "header" in changes:
        headers[H] = changes.pop("header")
    if changes.pop("drop_header", False):
        del headers[H]
    return body + changes.pop("trailing", b""), headers


@pytest.mark.parametrize(
    ("body_headers", "fragment"),
    [
        pytest.param(
            _bad(size=300), "'input': parameters.binary_data_size is 300", id="size-past-end"
        ),
        pytest.param(_bad(size=128), "beyond the inputs' binary_data_size", id="size-short"),
        pytest.param(_bad(size=-1), "non-negative integer", id="size-negative"),
        pytest.param(_bad(trailing=b"\0" * 4), "4 bytes follow the JSON header", id="trailing"),
        pytest.param(_bad(header="abc"), "must be a byte count", id="header-not-int"),
        pytest.param(_bad(header="99999"), "the body has", id="header-past-body"),
        pytest.param(_bad(header="10"), "invalid request", id="header-cuts-json"),
        pytest.param(_bad(drop_header=True), "Inference-Header-Content-Length", id="no-header"),
    ],
)
def test_inconsistent_binary_sizes_are_400_naming_the_input(
    client: TestClient, body_headers: tuple[bytes, dict[str, str]], fragment: str
) -> None:
    body, headers = body_headers
    resp = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert resp.status_code == 400, resp.text
    assert list(resp.json()) == ["error"] and fragment in resp.json()["error"]


def test_binary_size_must_match_shape(client: TestClient) -> None:
    x = _x(rows=1)
    raw = x.tobytes()
    head = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 64],  # says 2 rows, sends 1
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    js = json.dumps(head).encode()
    resp = client.post("/v2/models/mlp/infer", content=js + raw, headers={H: str(len(js))})
    assert resp.status_code == 400
    assert "'input'" in resp.json()["error"] and "needs 512 bytes" in resp.json()["error"]


def test_data_and_binary_size_together_is_400(client: TestClient) -> None:
    body = mlp_request()
    body["inputs"][0]["parameters"] = {"binary_data_size": 256}
    js = json.dumps(body).encode()
    resp = client.post("/v2/models/mlp/infer", content=js + b"\0" * 256, headers={H: str(len(js))})
    assert resp.status_code == 400 and "both data and" in resp.json()["error"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_numbers_are_400_naming_the_input(client: TestClient, token: str) -> None:
    body = mlp_request()
    body["inputs"][0]["data"] = ["X"] + [0.0] * 63
    text = json.dumps(body).replace('"X"', token)  # what Python's json.dumps writes for nan/inf
    resp = client.post("/v2/models/mlp/infer", content=text)
    assert resp.status_code == 400, resp.text
    assert "'input'" in resp.json()["error"] and "must be finite" in resp.json()["error"]


def test_unsupported_parameters_are_400(client: TestClient) -> None:
    body = mlp_request()
    body["outputs"] = [{"name": "logits", "parameters": {"classification": 3}}]
    resp = client.post("/v2/models/mlp/infer", json=body)
    assert resp.status_code == 400 and "classification" in resp.json()["error"]
    body = mlp_request()
    body["inputs"][0]["parameters"] = {"shared_memory_region": "r0"}
    del body["inputs"][0]["data"]
    js = json.dumps(body).encode()
    resp = client.post("/v2/models/mlp/infer", content=js, headers={H: str(len(js))})
    assert resp.status_code == 400 and "shared-memory" in resp.json()["error"]


# -- BYTES: the codec directly (end to end with the lexicon example: tests/conformance) --------


def test_bytes_codec_round_trip_and_length_prefixes() -> None:
    arr = np.array([b"", b"ab", "h\u00e9".encode()], dtype=object)
    raw = serialize_bytes(arr)
    assert raw == b"\0\0\0\0" + b"\x02\0\0\0ab" + b"\x03\0\0\0h\xc3\xa9"
    back = deserialize_bytes(raw, 3, "t")
    assert list(back) == ["", "ab", "h\u00e9"]  # decoded: ONNX Runtime takes str, not bytes
    assert serialize_bytes(np.array(["x"], dtype=object)) == b"\x01\0\0\0x"  # str as UTF-8


@pytest.mark.parametrize(
    ("raw", "count", "fragment"),
    [
        pytest.param(b"\x02\0", 1, "truncated 4-byte length prefix", id="short-prefix"),
        pytest.param(b"\x05\0\0\0ab", 1, "declares 5 bytes but only 2 remain", id="overrun"),
        pytest.param(
            b"\x01\0\0\0a", 2, "needs 2 BYTES elements, the binary data holds 1", id="few"
        ),
        pytest.param(b"\x01\0\0\0a\x01\0\0\0b", 1, "holds 2 or more", id="many"),
        pytest.param(b"\x01\0\0\0a\x01\0\0\0\xff", 2, "element 1 is not UTF-8", id="not-utf8"),
    ],
)
def test_bytes_codec_errors_name_the_tensor(raw: bytes, count: int, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match="'t'") as exc:
        deserialize_bytes(raw, count, "t")
    assert fragment in str(exc.value)


def test_bytes_inputs_decode_from_json_and_binary() -> None:
    spec = [TensorSpec("text", "BYTES", (-1, 2))]
    j = RequestInput(name="text", shape=[1, 2], datatype="BYTES", data=[["a", "bc"]])
    arrays, items = decode_inputs([j], spec, 4)
    assert items == 1 and arrays["text"].tolist() == [["a", "bc"]]
    b = RequestInput(
        name="text", shape=[1, 2], datatype="BYTES", parameters={"binary_data_size": 11}
    )
    raw = serialize_bytes(np.array([b"a", b"bc"], dtype=object))
    arrays, _ = decode_inputs([b], spec, 4, {"text": raw})
    assert arrays["text"].tolist() == [["a", "bc"]]
    with pytest.raises(InvalidRequest, match="must be strings"):
        decode_inputs(
            [RequestInput(name="text", shape=[1, 2], datatype="BYTES", data=[1, 2])], spec, 4
        )


def test_bytes_outputs_encode_binary_and_json() -> None:
    out = {"text": np.array([["a", "bc"]], dtype=object)}
    body, n = encode_response("m", None, out, ["text"], {"": True})
    assert n is not None
    head = json.loads(body[:n])
    assert head["outputs"][0] == {
        "name": "text",
        "datatype": "BYTES",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 11},
    }
    assert body[n:] == b"\x01\0\0\0a\x02\0\0\0bc"
    body, n = encode_response("m", "r", out, ["text"], {"": False})
    assert n is None and json.loads(body)["outputs"][0]["data"] == ["a", "bc"]


# -- Triton-only endpoints --------------------------------------------------------------------


def test_model_config_has_real_dims_and_batch(client: TestClient) -> None:
    cfg = client.get("/v2/models/mlp/config").json()
    assert cfg["name"] == "mlp" and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == 16  # the example agent's max_batch for mlp
    assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert cfg["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert client.get("/v2/models/convnet/versions/1/config").json()["input"][0]["dims"] == [
        3,
        32,
        32,
    ]
    resp = client.get("/v2/models/broken/config")
    assert resp.status_code == 404 and "Failed" in resp.json()["error"]


def test_versions_route_and_unknown_version(client: TestClient) -> None:
    assert client.get("/v2/models/mlp/versions/1/ready").json() == {"name": "mlp", "ready": True}
    assert client.post("/v2/models/mlp/versions/1/infer", json=mlp_request()).status_code == 200
    resp = client.get("/v2/models/mlp/versions/2")
    assert resp.status_code == 404 and "no version '2'" in resp.json()["error"]


def test_repository_index_states(client: TestClient) -> None:
    rows = client.post("/v2/repository/index").json()
    by_name = {r["name"]: r for r in rows}
    assert by_name["mlp"]["state"] == "READY" and by_name["mlp"]["version"] == "1"
    assert by_name["broken"]["state"] == "UNAVAILABLE" and by_name["broken"]["reason"]
    ready = client.post("/v2/repository/index", json={"ready": True}).json()
    assert "broken" not in {r["name"] for r in ready} and "mlp" in {r["name"] for r in ready}
    resp = client.post("/v2/repository/index", json={"ready": "yes"})
    assert resp.status_code == 400


def test_statistics_count_successes_failures_and_time(client: TestClient) -> None:
    for _ in range(3):
        assert client.post("/v2/models/mlp/infer", json=mlp_request(rows=2)).status_code == 200
    bad = mlp_request()
    bad["inputs"][0]["shape"] = [1, 63]
    assert client.post("/v2/models/mlp/infer", json=bad).status_code == 400
    (st,) = client.get("/v2/models/mlp/stats").json()["model_stats"]
    s = st["inference_stats"]
    assert st["name"] == "mlp" and st["version"] == "1"
    assert s["success"]["count"] == 3 and s["success"]["ns"] > 0
    assert s["fail"]["count"] == 1
    assert st["inference_count"] == 6  # 3 requests of 2 items
    assert sum(b["compute_infer"]["count"] for b in st["batch_stats"]) == st["execution_count"]
    assert s["queue"]["count"] == 3 and s["compute_infer"]["ns"] > 0
    assert st["last_inference"] > 1_600_000_000_000  # ms since the epoch
    every = client.get("/v2/models/stats").json()["model_stats"]
    assert {m["name"] for m in every} == {"mlp", "convnet", "broken"}
    assert client.get("/v2/models/nope/stats").status_code == 404


def test_model_control_is_refused_and_other_triton_routes_are_404(client: TestClient) -> None:
    for action in ("load", "unload"):
        resp = client.post(f"/v2/repository/models/mlp/{action}")
        assert resp.status_code == 400 and "model control" in resp.json()["error"]
    for path in ("/v2/trace/setting", "/v2/logging", "/v2/systemsharedmemory/status"):
        resp = client.get(path)
        assert resp.status_code == 404 and list(resp.json()) == ["error"]
