"""ONNX Runtime sessions: open a model file, describe its tensors, run a batch.

The only module that imports ``onnxruntime``. CPU execution provider everywhere; the CUDA
execution provider on a GPU device when onnxruntime-gpu provides it. Callers: serving (load and
run) and the profiler/benchmarks. It knows nothing of HTTP, batching or scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stowplan.agent.errors import ExecutionError, ModelLoadError

# Open Inference Protocol datatype <-> numpy dtype <-> ONNX Runtime type string.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}
ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: shape uses -1 for dynamic dimensions (the batch one first)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, ORT_TO_V2.get(arg.type, arg.type), shape)


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


class OnnxModel:
    """One ONNX Runtime session. ``run`` is safe to call from one thread at a time (the device
    executor); ONNX Runtime releases the GIL while it computes."""

    def __init__(self, path: Path, device: int = -1, intra_op_threads: int = 0) -> None:
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3
        providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
        if device >= 0 and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors for every bad file
            raise ModelLoadError(f"ONNX Runtime cannot open {path}: {exc}") from exc
        self.path = path
        self.size_bytes = path.stat().st_size
        self.providers = list(self._session.get_providers())
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        unsupported = [t.name for t in self.inputs if t.datatype not in V2_TO_NUMPY]
        if unsupported:
            raise ModelLoadError(f"inputs {unsupported} have datatypes the agent cannot serve")

    @property
    def batched(self) -> bool:
        """True when every input's first dimension is dynamic (so requests can be stacked)."""
        return all(t.shape and t.shape[0] == -1 for t in self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(None, feeds)
        except Exception as exc:
            raise ExecutionError(f"{self.path.name}: {exc}") from exc
        return {spec.name: np.asarray(v) for spec, v in zip(self.outputs, values, strict=True)}
