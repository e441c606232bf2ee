"""Device discovery and telemetry: NVML (``pynvml``) on GPU nodes, a simulated device elsewhere.

The only module that imports ``pynvml``. A simulated device reports the executor's measured busy
time as its utilisation and the memory the agent accounts to resident models as memory used, so
``/metrics`` and ``GPUNode.status`` mean the same thing on a laptop as on a GPU node.
Callers: serving (device list), metrics refresh, cluster status. Never raises when NVML is
missing: it falls back to simulation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from stowplan.agent.config import DeviceSpec

SIMULATED_MEMORY_BYTES = 16 * 1024**3


@dataclass(frozen=True)
class DeviceSample:
    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization: float  # 0..1
    simulated: bool


class Telemetry(Protocol):
    def devices(self) -> list[DeviceSpec]: ...

    def sample(
        self, busy: Callable[[int], float], used_bytes: Callable[[int], int]
    ) -> list[DeviceSample]: ...

    def close(self) -> None: ...


class SimulatedTelemetry:
    """``count`` simulated devices (CPU-backed) with ``memory_bytes`` each."""

    def __init__(
        self,
        count: int = 1,
        memory_bytes: int = SIMULATED_MEMORY_BYTES,
        name: str = "Simulated GPU (CPU)",
    ) -> None:
        self._devices = [
            DeviceSpec(
                index=i,
                name=name,
                uuid=f"SIM-{os.uname().nodename}-{i}",
                memory_total_bytes=memory_bytes,
                simulated=True,
            )
            for i in range(count)
        ]

    def devices(self) -> list[DeviceSpec]:
        return list(self._devices)

    def sample(
        self, busy: Callable[[int], float], used_bytes: Callable[[int], int]
    ) -> list[DeviceSample]:
        return [
            DeviceSample(
                d.index,
                d.uuid,
                d.name,
                d.memory_total_bytes,
                min(d.memory_total_bytes, used_bytes(d.index)),
                busy(d.index),
                True,
            )
            for d in self._devices
        ]

    def close(self) -> None:
        return None


class NvmlTelemetry:
    """Real GPUs through NVML. Construct with :func:`detect`, which falls back on failure."""

    def __init__(self) -> None:
        import pynvml  # the one place NVML is loaded

        self._nvml: Any = pynvml
        pynvml.nvmlInit()
        self._handles = [
            pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
        ]

    @staticmethod
    def _str(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def devices(self) -> list[DeviceSpec]:
        nv = self._nvml
        return [
            DeviceSpec(
                index=i,
                name=self._str(nv.nvmlDeviceGetName(h)),
                uuid=self._str(nv.nvmlDeviceGetUUID(h)),
                memory_total_bytes=int(nv.nvmlDeviceGetMemoryInfo(h).total),
                simulated=False,
            )
            for i, h in enumerate(self._handles)
        ]

    def sample(
        self, busy: Callable[[int], float], used_bytes: Callable[[int], int]
    ) -> list[DeviceSample]:
        nv = self._nvml
        out = []
        for i, h in enumerate(self._handles):
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
            out.append(
                DeviceSample(
                    i,
                    self._str(nv.nvmlDeviceGetUUID(h)),
                    self._str(nv.nvmlDeviceGetName(h)),
                    int(mem.total),
                    int(mem.used),
                    util,
                    False,
                )
            )
        return out

    def close(self) -> None:
        # shutting down twice or after a driver reset is harmless
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


def detect(
    simulated_devices: int = 1,
    simulated_memory_bytes: int = SIMULATED_MEMORY_BYTES,
    use_nvml: bool = True,
) -> Telemetry:
    """NVML when a driver and at least one GPU are present; otherwise simulated devices."""
    if use_nvml:
        try:
            nvml = NvmlTelemetry()
        except Exception:  # no library, no driver or no permission: all mean "no GPU here"
            pass
        else:
            if nvml.devices():
                return nvml
            nvml.close()
    return SimulatedTelemetry(simulated_devices, simulated_memory_bytes)
