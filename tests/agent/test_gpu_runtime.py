"""On a GPU node: NVML telemetry sees the GPUs and ONNX Runtime runs on the CUDA execution
provider. Skipped without a GPU (no NVML driver, or the CPU-only onnxruntime wheel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from stowplan.agent.runtime import OnnxModel
from stowplan.agent.telemetry import NvmlTelemetry, detect

pytestmark = pytest.mark.gpu


def _nvml_or_skip() -> NvmlTelemetry:
    try:
        t = NvmlTelemetry()
    except Exception as exc:  # no driver / library
        pytest.skip(f"no NVML: {exc}")
    if not t.devices():
        pytest.skip("NVML reports no GPU")
    return t


def test_nvml_telemetry_reports_real_gpus() -> None:
    nvml = _nvml_or_skip()
    try:
        samples = nvml.sample(lambda i: 0.0, lambda i: 0)
        assert samples and all(not s.simulated and s.memory_total_bytes > 0 for s in samples)
        assert isinstance(detect(), NvmlTelemetry)
    finally:
        nvml.close()


def test_cuda_execution_provider_runs_the_example_model(model_dir: Path) -> None:
    _nvml_or_skip().close()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDA (install onnxruntime-gpu)")
    m = OnnxModel(model_dir / "convnet.onnx", device=0)
    assert m.providers[0] == "CUDAExecutionProvider"
    out = m.run({"input": np.zeros((4, 3, 32, 32), np.float32)})
    assert out["logits"].shape == (4, 10)
