"""ONNX Runtime sessions: open a model file, describe its tensors, run a batch.

The only module that imports ``onnxruntime``. CPU execution provider everywhere; the CUDA
execution provider on a GPU device when onnxruntime-gpu provides it. Callers: the registry (load and
run) and the profiler/benchmarks. It knows nothing of HTTP, batching or scheduling; the datatype
tables it maps ONNX types with belong to the codec (:mod:`stowplan.agent.tensors`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from stowplan.agent.errors import ExecutionError, ModelLoadError
from stowplan.agent.tensors import ORT_TO_V2, V2_TO_NUMPY, TensorSpec


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
