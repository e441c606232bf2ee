"""KServe's Python ``ModelServer`` serving one ONNX model with ONNX Runtime: the ``kserve-rest``
path of ``stowplan bench dataplane``, the baseline the agent is compared with.

Started by :mod:`stowplan.agentbench.dataplane` in its own process
(``python -m stowplan.agentbench.kserve_onnx MODEL_PATH HTTP_PORT``), never imported there:
kserve and stowplan's generated gRPC modules both register the ``inference`` protobuf package,
so they cannot share a process. One uvicorn worker, KServe's gRPC server off, and its
per-request logging off (uvicorn's access log and KServe's latency trace, four lines a request
by default; the agent logs none), otherwise KServe's defaults. The model is the one the agent
serves, named ``bench``, loaded with the same session settings
(:class:`stowplan.agent.runtime.OnnxModel`, one intra-op thread), its output answered as JSON
(the v2 protocol over REST). Needs kserve (the dev extra).
"""

from __future__ import annotations

import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import kserve
from kserve import InferOutput, InferRequest, InferResponse

from stowplan.agent.runtime import OnnxModel


class OnnxPredictor(kserve.Model):  # type: ignore[misc]  # kserve ships no annotations
    """A kserve.Model whose ``predict`` runs one ONNX Runtime session on the request's input."""

    def __init__(self, name: str, model_path: Path) -> None:
        super().__init__(name)
        self.model_path = model_path
        self.session: OnnxModel | None = None

    def load(self) -> bool:
        self.session = OnnxModel(self.model_path, intra_op_threads=1)
        self.ready = True
        return True

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        assert self.session is not None, "predict before load"
        x = payload.inputs[0].as_numpy()
        y = self.session.run({"input": x})["logits"]
        out = InferOutput(name="logits", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=False)
        return InferResponse(
            model_name=self.name, infer_outputs=[out], response_id=payload.id or str(uuid.uuid4())
        )


def main(argv: list[str]) -> None:
    model_path, http_port = Path(argv[0]), int(argv[1])
    model = OnnxPredictor("bench", model_path)
    model.load()
    server = kserve.ModelServer(
        http_port=http_port, enable_grpc=False, workers=1, enable_latency_logging=False
    )
    for name in ("uvicorn.access", "kserve.trace"):  # configured by ModelServer()
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main(sys.argv[1:])

__all__ = ["OnnxPredictor", "main"]
