"""KServe's Python SDK REST client (``kserve==0.21.0``, ``InferenceRESTClient`` with protocol v2)
against ``stowplan up``: readiness calls, inference with binary and JSON inputs and outputs on
every example model equal to a direct ONNX Runtime call and to each other, and the documented
errors raised as ``httpx.HTTPStatusError`` carrying the server's message.

KServe's SDK is in the dev extra (kubernetes is pinned at 37.0.1 for it), but importing it
registers the protocol's protobuf messages, which tritonclient.grpc (in the same pytest
process) registers too; so it is driven through ``kserve_rest_driver.py`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = ("mlp", "convnet", "mlp-wide")  # the shipped examples (conftest.MODELS)


@pytest.fixture(scope="session")
def reports(
    served: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """One driver run (KServe's import is slow) over every example model."""
    work = tmp_path_factory.mktemp("kserve")
    inputs = {}
    for model in MODELS:
        meta = httpx.get(f"http://{served.url}/v2/models/{model}", timeout=10).json()
        inputs[model] = served.example_input(meta["inputs"][0]["shape"], rows=2, seed=2)
        np.save(work / f"{model}.npy", inputs[model])
    done = subprocess.run(
        [sys.executable, str(HERE / "kserve_rest_driver.py"), f"http://{served.url}"]
        + [f"{m}={work / f'{m}.npy'}" for m in MODELS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    return {m: (inputs[m], out[m]) for m in MODELS}


@pytest.fixture(params=MODELS)
def report(
    request: pytest.FixtureRequest, reports: dict[str, tuple[np.ndarray, dict[str, Any]]]
) -> tuple[str, np.ndarray, dict[str, Any]]:
    x, r = reports[request.param]
    return request.param, x, r


def test_readiness_calls(report: tuple[str, np.ndarray, dict[str, Any]]) -> None:
    _, _, r = report
    assert r["is_server_live"] is True and r["is_server_ready"] is True
    assert r["is_model_ready"] is True and r["is_model_ready_unknown"] is False


def test_outputs_equal_across_paths_and_direct_onnxruntime(
    report: tuple[str, np.ndarray, dict[str, Any]], served: Any
) -> None:
    model, x, r = report
    want = served.direct(model, x)
    answers = r["outputs"]
    assert len(answers) == 6
    first = np.asarray(next(iter(answers.values()))["data"], np.float32).reshape(want.shape)
    for path, out in answers.items():
        assert out["datatype"] == "FP32" and out["shape"] == list(want.shape), path
        assert out["id"] == "k1" and out["model_name"] == model, path
        got = np.asarray(out["data"], np.float32).reshape(want.shape)
        np.testing.assert_array_equal(got, first, err_msg=path)
    np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("case", "status", "fragment"),
    [
        ("unknown-model", 404, "'nope' is not served here"),
        ("bad-shape", 400, "has shape"),
        ("bad-datatype", 400, "has datatype 'INT32'"),
        ("fp32-out-of-range", 400, "'input': value 1e+39 is out of range for FP32"),
    ],
)
def test_documented_errors_carry_the_server_message(
    report: tuple[str, np.ndarray, dict[str, Any]], case: str, status: int, fragment: str
) -> None:
    _, _, r = report
    err = r["errors"][case]
    assert err["status"] == status, err
    assert fragment in err["message"], err
