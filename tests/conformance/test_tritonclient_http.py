"""Triton's HTTP client (``tritonclient[http]==2.73.0``) against ``stowplan up``: every call of its
core API on every example model, inference with binary and JSON inputs and outputs equal to a
direct ONNX Runtime call and to each other, and the documented error cases raised as
InferenceServerException with the server's message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as th
import yaml
from tritonclient.utils import InferenceServerException

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
MODELS = ("mlp", "convnet", "mlp-wide")  # the shipped FP32 examples (conftest.MODELS)
EVERY = (*MODELS, "lexicon")  # and the string one (test_bytes_http.py)


def _manifest(model: str) -> dict[str, Any]:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["metadata"]["name"] == model:
            spec: dict[str, Any] = doc["spec"]
            return spec
    raise AssertionError(f"no manifest for {model}")


@pytest.fixture
def client(served: Any) -> th.InferenceServerClient:
    return th.InferenceServerClient(served.url, connection_timeout=30, network_timeout=30)


def test_server_calls(client: th.InferenceServerClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    meta = client.get_server_metadata()
    assert meta["name"] == "stowplan" and "binary_tensor_data" in meta["extensions"]
    index = client.get_model_repository_index()
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        (m, "1", "READY") for m in EVERY
    }


@pytest.mark.parametrize("model", MODELS)
def test_model_calls(client: th.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model) is True
    assert client.is_model_ready(model, model_version="1") is True
    meta = client.get_model_metadata(model)
    assert meta["name"] == model and meta["platform"] == "onnxruntime_onnx"
    (inp,) = meta["inputs"]
    assert inp["name"] == "input" and inp["datatype"] == "FP32" and inp["shape"][0] == -1
    cfg = client.get_model_config(model)
    assert cfg["name"] == model and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == _manifest(model)["profile"]["maxBatch"]
    assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": inp["shape"][1:]}]
    (out,) = meta["outputs"]
    assert cfg["output"][0]["dims"] == out["shape"][1:]


@pytest.mark.parametrize("model", MODELS)
def test_infer_binary_and_json_agree_with_direct_onnxruntime(
    client: th.InferenceServerClient, served: Any, model: str
) -> None:
    shape = client.get_model_metadata(model)["inputs"][0]["shape"]
    x = served.example_input(shape, rows=2, seed=1)
    want = served.direct(model, x)
    before = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    answers: dict[str, np.ndarray] = {}
    for binary_in in (True, False):
        for binary_out in (True, False, None):  # None: no outputs listed (binary by default)
            inp = th.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            outputs = (
                None
                if binary_out is None
                else [th.InferRequestedOutput("logits", binary_data=binary_out)]
            )
            result = client.infer(model, [inp], outputs=outputs, request_id="c1")
            got = result.as_numpy("logits")
            assert got is not None and got.dtype == np.float32 and got.shape == want.shape
            assert result.get_response()["model_name"] == model
            assert result.get_response()["id"] == "c1"
            answers[f"in={binary_in} out={binary_out}"] = got
    # gzip-compressed request and response body
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], request_compression_algorithm="gzip")
    answers["gzip"] = result.as_numpy("logits")
    first = next(iter(answers.values()))
    for path, got in answers.items():
        np.testing.assert_array_equal(got, first, err_msg=path)
    np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5)
    after = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    assert after["success"]["count"] - before["success"]["count"] == len(answers)
    assert after["success"]["ns"] > before["success"]["ns"]


def test_statistics_of_every_model(client: th.InferenceServerClient) -> None:
    stats = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in stats} == set(EVERY)
    for s in stats:
        assert s["version"] == "1"
        assert set(s["inference_stats"]) >= {"success", "fail", "queue", "compute_infer"}


def _fp32(shape: list[int], value: float = 0.0) -> th.InferInput:
    inp = th.InferInput("input", shape, "FP32")
    inp.set_data_from_numpy(np.full(shape, value, np.float32), binary_data=False)
    return inp


@pytest.mark.parametrize(
    ("model", "make", "status", "fragment"),
    [
        pytest.param(
            "nope", lambda: [_fp32([1, 64])], "404", "not served here", id="unknown-model"
        ),
        pytest.param("mlp", lambda: [_fp32([1, 63])], "400", "expects [-1, 64]", id="bad-shape"),
        pytest.param(
            "mlp",
            lambda: [_int32_input([1, 64])],
            "400",
            "has datatype 'INT32'; the model expects 'FP32'",
            id="bad-datatype",
        ),
        pytest.param(
            "mlp",
            lambda: [_fp32([1, 64], np.inf)],  # the client writes Infinity: not JSON
            "400",
            "'input': FP32 data holds inf; JSON numbers must be finite",
            id="non-finite-json",
        ),
        pytest.param(
            "mlp",
            lambda: [_fp32([2, 64]), _fp32([2, 64])],
            "400",
            "given twice",
            id="input-twice",
        ),
    ],
)
def test_documented_errors_raise_with_the_server_message(
    client: th.InferenceServerClient, model: str, make: Any, status: str, fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.infer(model, make())
    assert exc.value.status() == status
    assert fragment in (exc.value.message() or "")


def _int32_input(shape: list[int]) -> th.InferInput:
    inp = th.InferInput("input", shape, "INT32")
    inp.set_data_from_numpy(np.zeros(shape, np.int32))
    return inp


def test_model_level_errors(client: th.InferenceServerClient) -> None:
    for call in (
        lambda: client.get_model_metadata("nope"),
        lambda: client.get_model_config("nope"),
        lambda: client.get_inference_statistics("nope"),
        lambda: client.get_model_metadata("mlp", model_version="2"),
    ):
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert exc.value.status() == "404"
        assert "'nope'" in str(exc.value) or "no version '2'" in str(exc.value)
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("mlp")
    assert exc.value.status() == "400" and "model control" in (exc.value.message() or "")
    with pytest.raises(InferenceServerException) as exc:
        client.get_trace_settings()
    assert exc.value.status() == "404" and "no route" in (exc.value.message() or "")
