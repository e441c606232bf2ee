"""The Open Inference Protocol surface: health, metadata, inference, and 4xx on bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from stowplan.agent.serving import Agent
from stowplan.testing.agent import mlp_request


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/mlp").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/mlp/ready").json() == {"name": "mlp", "ready": True}


def test_infer_matches_direct_onnxruntime(client: TestClient, model_dir: Any) -> None:
    body = mlp_request(rows=3, seed=7)
    resp = client.post("/v2/models/mlp/infer", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["model_name"] == "mlp" and out["id"] == "r1"
    (logits,) = out["outputs"]
    assert logits["shape"] == [3, 10] and logits["datatype"] == "FP32"
    sess = ort.InferenceSession(str(model_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    x = np.asarray(body["inputs"][0]["data"], np.float32).reshape(3, 64)
    (want,) = sess.run(None, {"input": x})
    np.testing.assert_allclose(
        np.asarray(logits["data"]).reshape(3, 10), want, rtol=1e-5, atol=1e-5
    )


def test_nested_data_is_accepted(client: TestClient) -> None:
    body = mlp_request(rows=2)
    body["inputs"][0]["data"] = np.asarray(body["inputs"][0]["data"]).reshape(2, 64).tolist()
    assert client.post("/v2/models/mlp/infer", json=body).status_code == 200


def _with(**changes: Any) -> dict[str, Any]:
    body = mlp_request()
    body["inputs"][0].update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        pytest.param(_with(datatype="INT64"), 400, "expects 'FP32'", id="wrong-dtype"),
        pytest.param(_with(shape=[1, 63]), 400, "expects [-1, 64]", id="wrong-shape"),
        pytest.param(_with(shape=[64]), 400, "rank 2", id="wrong-rank"),
        pytest.param(_with(shape=[2, 64]), 400, "needs 128 elements", id="too-few-elements"),
        pytest.param(_with(name="x"), 400, "unknown input", id="unknown-input"),
        pytest.param(_with(data=["a"] * 64), 400, "must be numbers", id="strings"),
        pytest.param(_with(data=[None] * 64), 400, "must be numbers", id="nulls"),
        pytest.param(_with(data=[[1.0], [1.0, 2.0]]), 400, "input", id="ragged"),
        pytest.param({"inputs": []}, 400, "inputs", id="no-inputs"),
        pytest.param({"foo": 1}, 400, "invalid request", id="schema"),
        pytest.param(_with(data=[1e39] + [0.0] * 63), 400, "'input'", id="fp32-out-of-range"),
        pytest.param(
            _with(shape=[17, 64], data=[0.0] * 17 * 64), 413, "max batch", id="batch-over-max"
        ),
    ],
)
def test_bad_requests_get_4xx(
    client: TestClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    resp = client.post("/v2/models/mlp/infer", json=body)
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["error"]


def test_malformed_json_is_400(client: TestClient) -> None:
    resp = client.post(
        "/v2/models/mlp/infer", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert "error" in resp.json()


def test_oversized_body_is_413(client: TestClient) -> None:
    resp = client.post(
        "/v2/models/mlp/infer",
        content=b"[" + b"0," * 40_000 + b"0]",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413
    assert list(resp.json()) == ["error"] and "larger than" in resp.json()["error"]


def test_unknown_model_is_404(client: TestClient) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/ready"):
        assert client.get(path).status_code == 404
    assert client.post("/v2/models/nope/infer", json=mlp_request()).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/v2/models/mlp/nope", 404),
        ("DELETE", "/v2/models/mlp/infer", 405),
        ("GET", "/v2/models/mlp/infer", 405),
        ("PUT", "/v2/health/live", 405),
    ],
)
def test_unknown_routes_and_methods_answer_in_the_protocol_error_shape(
    client: TestClient, method: str, path: str, status: int
) -> None:
    resp = client.request(method, path)
    assert resp.status_code == status
    body = resp.json()
    assert list(body) == ["error"] and path in body["error"]


def test_failed_model_is_reported_and_others_keep_serving(client: TestClient, agent: Agent) -> None:
    assert agent.models["broken"].state.value == "Failed"
    assert "not found" in agent.models["broken"].reason
    assert client.get("/v2/models/broken/ready").status_code == 503
    resp = client.post("/v2/models/broken/infer", json=mlp_request())
    assert resp.status_code == 503 and "Failed" in resp.json()["error"]
    assert client.post("/v2/models/mlp/infer", json=mlp_request()).status_code == 200
    index = {m["name"]: m for m in client.get("/v2/models").json()["models"]}
    assert index["broken"]["state"] == "Failed" and index["mlp"]["state"] == "Ready"


def test_metrics_use_triton_names(client: TestClient) -> None:
    assert client.post("/v2/models/mlp/infer", json=mlp_request()).status_code == 200
    text = client.get("/metrics").text
    for name in (
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "stowplan_batch_cap",
    ):
        assert name in text
    assert 'nv_inference_request_success_total{model="mlp",version="1"} 1.0' in text


def test_integer_inputs_are_range_checked() -> None:
    from stowplan.agent.errors import InvalidRequest
    from stowplan.agent.protocol import RequestInput
    from stowplan.agent.tensors import TensorSpec, decode_inputs

    spec = [TensorSpec("ids", "INT8", (-1, 2))]
    ok, items = decode_inputs(
        [RequestInput(name="ids", shape=[1, 2], datatype="INT8", data=[1, -3])], spec, 8
    )
    assert items == 1 and ok["ids"].dtype.name == "int8"
    for data in ([1, 300], [1.5, 2]):
        with pytest.raises(InvalidRequest):
            decode_inputs(
                [RequestInput(name="ids", shape=[1, 2], datatype="INT8", data=data)], spec, 8
            )


def test_outputs_filter_and_unknown_output(client: TestClient) -> None:
    body = mlp_request()
    body["outputs"] = [{"name": "logits"}]
    resp = client.post("/v2/models/mlp/infer", json=body)
    assert resp.status_code == 200 and [o["name"] for o in resp.json()["outputs"]] == ["logits"]
    body["outputs"] = [{"name": "nope"}]
    resp = client.post("/v2/models/mlp/infer", json=body)
    assert resp.status_code == 400 and "unknown output" in resp.json()["error"]


def test_curl_style_form_content_type_is_parsed_as_json(client: TestClient) -> None:
    import json

    resp = client.post(
        "/v2/models/mlp/infer",
        content=json.dumps(mlp_request()),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 200, resp.text
