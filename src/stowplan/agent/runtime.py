"""ONNX Runtime sessions and the device arena they carve their memory from.

The only module that imports ``onnxruntime``. CPU execution provider everywhere; the CUDA
execution provider on a GPU device when onnxruntime-gpu provides it. Callers: the registry (load,
run, offload, prefetch) and the profiler/benchmarks. It knows nothing of HTTP, batching or
scheduling; the datatype tables it maps ONNX types with belong to the codec
(:mod:`stowplan.agent.tensors`).

**The arena.** :class:`DeviceArena` registers one ONNX Runtime *environment* allocator (a BFC
arena, ``kSameAsRequested``, capped at the pool placement planned: ``max_mem``) and every session
created with it sets ``session.use_env_allocators``, so the models of a device share one arena
instead of one each. What ONNX Runtime 1.32 does with it on the CPU (measured by ``stowplan
memprobe``): initializers are ``Reserve``d from the arena (counted in its total, allocated
straight from the system and given back the moment the session is released, but *not* refused
past ``max_mem``: the residency books must admit weights); per-run workspaces are carved from the
arena's regions (refused past ``max_mem`` with "Available memory of N is smaller than requested
bytes of M", mapped to :class:`DeviceMemoryExhausted`, a 503) and kept there between runs, so
the request path never asks the system for memory once warm. :meth:`DeviceArena.give_back`
returns free regions to the system (a run of a one-float Identity session with
``memory.enable_memory_arena_shrinkage``, then ``malloc_trim``): the agent calls it after an
offload or unload, never on the request path. The CPU is one memory and ONNX Runtime's
environment is one per process, so every simulated device of a process shares one CPU arena (a
later registration replaces it for sessions created afterwards; live sessions keep theirs).

**Offload and prefetch.** :class:`OnnxModel` keeps the model's bytes in host memory;
:meth:`OnnxModel.release` drops the session (its weights and plans go back to the arena and the
system) and :meth:`OnnxModel.restore` rebuilds it from those bytes, never from disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stowplan.agent.errors import AgentError, ExecutionError, ModelLoadError
from stowplan.agent.tensors import BYTES, ORT_TO_V2, V2_TO_NUMPY, TensorSpec

#: y = Identity(x) over one float (ONNX IR 8, opset 13): the session that shrinks the arena
SHRINK_MODEL = (
    b'\x08\x08\x12\x08stowplan:<\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x06shrinkZ\x0f\n'
    b"\x01x\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02"
    b"\x08\x01B\x04\n\x00\x10\r"
)
#: ORT's message when a BFC arena refuses an allocation past its ``max_mem``
_ARENA_FULL = ("is smaller than requested bytes", "Failed to allocate memory")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_malloc_trim = getattr(_libc, "malloc_trim", None)
_mallopt = getattr(_libc, "mallopt", None)
_M_ARENA_MAX = -8


class DeviceMemoryExhausted(AgentError):
    """The device arena refused an allocation (its pool is full): HTTP 503 with the reason."""

    status_code = 503


def one_heap() -> None:
    """Make every thread allocate from glibc's main heap (``M_ARENA_MAX`` = 1).

    Measured (``stowplan memprobe``): a session rebuilt on the executor thread and released
    from another kept ~4 MiB of mlp-wide's 9.4 MiB per cycle in the executor thread's own malloc
    arena, which ``malloc_trim`` did not give back; with one heap every release is returned.
    Tensor memory comes from the ONNX Runtime arena, so the shared heap lock is off the hot path.
    """
    if _mallopt is not None:
        _mallopt(_M_ARENA_MAX, 1)


def trim_heap() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc)."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def rss_bytes() -> int:
    """This process's resident memory now, after :func:`trim_heap` (what ``memprobe`` reads)."""
    trim_heap()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, ORT_TO_V2.get(arg.type, arg.type), shape)


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


class DeviceArena:
    """One device's ONNX Runtime environment arena, capped at ``pool_bytes`` (module docstring).

    On the CPU (``device`` < 0, or a simulated device) it is ORT's registered CPU allocator; on
    a GPU the CUDA execution provider's arena of every session on that device is capped by
    ``gpu_mem_limit`` = ``pool_bytes`` with ``arena_extend_strategy`` ``kSameAsRequested``
    (the provider options :meth:`providers` returns).
    """

    def __init__(self, device: int, pool_bytes: int, gpu: bool = False) -> None:
        self.device = device
        self.pool_bytes = pool_bytes
        self.gpu = gpu and "CUDAExecutionProvider" in ort.get_available_providers()
        self._lock = threading.Lock()
        one_heap()
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        cfg = ort.OrtArenaCfg(
            {
                "max_mem": max(pool_bytes, 1),
                "arena_extend_strategy": 1,  # kSameAsRequested: regions as large as asked
                "initial_chunk_size_bytes": 256 * 1024,
            }
        )
        if not self.gpu:
            ort.create_and_register_allocator(info, cfg)
        self._shrinker = ort.InferenceSession(
            SHRINK_MODEL, self.options(), providers=["CPUExecutionProvider"]
        )
        self._shrink_run = ort.RunOptions()
        self._shrink_run.add_run_config_entry(
            "memory.enable_memory_arena_shrinkage",
            f"gpu:{device}" if self.gpu else "cpu:0",
        )
        self._one = {"x": np.zeros(1, np.float32)}

    def options(self, intra_op_threads: int = 0) -> ort.SessionOptions:
        """Session options whose sessions carve their memory from this arena."""
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3
        if not self.gpu:
            opts.add_session_config_entry("session.use_env_allocators", "1")
        return opts

    def providers(self) -> list[str | tuple[str, dict[str, object]]]:
        cpu: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
        if not self.gpu:
            return cpu
        cuda = {
            "device_id": self.device,
            "gpu_mem_limit": max(self.pool_bytes, 1),
            "arena_extend_strategy": "kSameAsRequested",
        }
        return [("CUDAExecutionProvider", cuda), *cpu]

    def give_back(self) -> None:
        """Return the arena's wholly free regions and the heap's free pages to the system."""
        with self._lock:
            if self.gpu:
                # the CUDA arena shrinks at the end of a run on that device; the CPU session
                # cannot reach it, so on a GPU only the host heap is trimmed here
                trim_heap()
                return
            self._shrinker.run(None, self._one, self._shrink_run)
        trim_heap()


class OnnxModel:
    """One ONNX Runtime session over model bytes held in host memory. ``run`` is safe to call
    from one thread at a time (the device executor); ONNX Runtime releases the GIL while it
    computes. :meth:`release` and :meth:`restore` move the session out of and back into device
    memory (call them from the thread that runs it)."""

    def __init__(
        self,
        path: Path,
        device: int = -1,
        intra_op_threads: int = 0,
        arena: DeviceArena | None = None,
        model_bytes: bytes | None = None,
    ) -> None:
        self.path = path
        self.device = device
        self.arena = arena
        self.intra_op_threads = intra_op_threads
        try:
            self.model_bytes = model_bytes if model_bytes is not None else path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        self.size_bytes = len(self.model_bytes)
        self._session: ort.InferenceSession | None = None
        self._open()
        session = self._session
        assert session is not None
        self.providers: list[str] = list(session.get_providers())
        self.inputs: tuple[TensorSpec, ...] = tuple(_spec(a) for a in session.get_inputs())
        self.outputs: tuple[TensorSpec, ...] = tuple(_spec(a) for a in session.get_outputs())
        #: the outputs' names in order (every run asks for all of them)
        self.output_names: list[str] = [t.name for t in self.outputs]
        unsupported = [
            t.name for t in self.inputs if t.datatype not in V2_TO_NUMPY and t.datatype != BYTES
        ]
        if unsupported:
            raise ModelLoadError(f"inputs {unsupported} have datatypes the agent cannot serve")

    def _open(self) -> None:
        if self.arena is not None:
            opts = self.arena.options(self.intra_op_threads)
            providers = self.arena.providers()
        else:
            opts = ort.SessionOptions()
            if self.intra_op_threads:
                opts.intra_op_num_threads = self.intra_op_threads
            opts.log_severity_level = 3
            providers = ["CPUExecutionProvider"]
            if self.device >= 0 and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device}))
        try:
            self._session = ort.InferenceSession(self.model_bytes, opts, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors for every bad file
            if any(m in str(exc) for m in _ARENA_FULL):
                raise DeviceMemoryExhausted(
                    f"{self.path.name}: the device arena cannot hold the model: {exc}"
                ) from exc
            raise ModelLoadError(f"ONNX Runtime cannot open {self.path}: {exc}") from exc

    @property
    def loaded(self) -> bool:
        """True while the session (and so its weights) is in device memory."""
        return self._session is not None

    def release(self) -> bool:
        """Drop the session; the bytes stay in host memory. False if it was not loaded. The
        caller gives the freed memory back (:meth:`DeviceArena.give_back`), once per batch of
        releases."""
        if self._session is None:
            return False
        self._session = None
        return True

    def close(self) -> None:
        """Release the session and forget the host bytes (unload); ``restore`` then fails."""
        self._session = None
        self.model_bytes = b""

    def restore(self) -> float:
        """Rebuild the session from the host bytes; returns the seconds it took (0 if loaded)."""
        if self._session is not None:
            return 0.0
        if not self.model_bytes:
            raise ModelLoadError(f"{self.path.name} was unloaded; its bytes are gone")
        t0 = time.perf_counter()
        self._open()
        return time.perf_counter() - t0

    @property
    def batched(self) -> bool:
        """True when every input's first dimension is dynamic (so requests can be stacked)."""
        return all(t.shape and t.shape[0] == -1 for t in self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise ExecutionError(f"{self.path.name}: the session is offloaded (not prefetched)")
        try:
            values = session.run(self.output_names, feeds)
        except Exception as exc:
            if any(m in str(exc) for m in _ARENA_FULL):
                raise DeviceMemoryExhausted(
                    f"{self.path.name}: the device arena is full: {exc}"
                ) from exc
            raise ExecutionError(f"{self.path.name}: {exc}") from exc
        return {name: np.asarray(v) for name, v in zip(self.output_names, values, strict=True)}


__all__ = [
    "SHRINK_MODEL",
    "DeviceArena",
    "DeviceMemoryExhausted",
    "OnnxModel",
    "available_providers",
    "one_heap",
    "rss_bytes",
    "trim_heap",
]
