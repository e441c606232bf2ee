"""Run by tests/conformance/test_kserve_rest.py in a subprocess (importing kserve registers
protobuf messages that tritonclient.grpc registers too), never by pytest itself. Drives
KServe's ``InferenceRESTClient`` (protocol v2) against a running server for each model given
and prints one JSON report per model of every call: the readiness answers, the outputs of each
binary/JSON combination (as lists), and each documented error's status code and message.

Usage: python kserve_rest_driver.py BASE_URL MODEL=INPUT.npy [MODEL=INPUT.npy ...]
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def main(base_url: str, model: str, x: np.ndarray) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60, retries=1))
    report: dict[str, Any] = {
        "is_server_live": await client.is_server_live(base_url),
        "is_server_ready": await client.is_server_ready(base_url),
        "is_model_ready": await client.is_model_ready(base_url, model),
        "is_model_ready_unknown": await client.is_model_ready(base_url, "nope"),
        "outputs": {},
        "errors": {},
    }
    for binary_in in (True, False):
        for binary_out in (True, False, None):
            inp = InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            outputs = (
                None
                if binary_out is None
                else [RequestedOutput("logits", parameters={"binary_data": binary_out})]
            )
            req = InferRequest(model, [inp], request_id="k1", request_outputs=outputs)
            res = await client.infer(base_url, req, model_name=model)
            (out,) = [o for o in res.outputs if o.name == "logits"]
            report["outputs"][f"in={binary_in} out={binary_out}"] = {
                "id": res.id,
                "model_name": res.model_name,
                "datatype": out.datatype,
                "shape": list(out.shape),
                "data": out.as_numpy().astype(np.float64).ravel().tolist(),
            }
    n = int(np.prod(x.shape[1:]))
    cases = {
        "unknown-model": ("nope", InferInput("input", [1, *x.shape[1:]], "FP32", [0.0] * n)),
        "bad-shape": (model, InferInput("input", [1, n + 1], "FP32", [0.0] * (n + 1))),
        "bad-datatype": (model, InferInput("input", [1, *x.shape[1:]], "INT32", [0] * n)),
        "fp32-out-of-range": (
            model,
            InferInput("input", [1, *x.shape[1:]], "FP32", [1e39] + [0.0] * (n - 1)),
        ),
    }
    for case, (name, inp) in cases.items():
        try:
            await client.infer(base_url, InferRequest(name, [inp]), model_name=name)
            report["errors"][case] = {"status": 200, "message": ""}
        except httpx.HTTPStatusError as exc:
            report["errors"][case] = {
                "status": exc.response.status_code,
                "message": str(exc),
            }
    await client.close()
    return report


async def every(base_url: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {model: await main(base_url, model, x) for model, x in inputs.items()}


if __name__ == "__main__":
    pairs = [arg.split("=", 1) for arg in sys.argv[2:]]
    print(json.dumps(asyncio.run(every(sys.argv[1], {m: np.load(p) for m, p in pairs}))))
