"""The residency pool's books against the memory the process really holds (``stowplan memprobe``).

Loads the example models (:mod:`stowplan.models`) into a real :class:`stowplan.agent.serving.Agent`
on one simulated device whose pool is ``pool_mib``, and reads the process's resident memory
(:func:`stowplan.agent.runtime.rss_bytes`: ``/proc/self/statm`` after ``gc`` + ``malloc_trim``)
at each step:

* **after load**: the pool's books (``ResidencyManager.stats().used_bytes``) vs the resident
  growth since the baseline, less the models' bytes kept in host memory (on the CPU the device
  and the host are one RAM; those bytes are known exactly, ``len(model_bytes)``). The baseline is
  taken after one model was loaded and unloaded, so ONNX Runtime's one-time start-up (thread
  pools, kernel registry: about 10 MiB) is not charged to the models.
* **after one request per model at its largest batch**: the workspace the arena keeps between
  runs (the books carve a workspace only when the config gives ``per_item_memory_mib`` or a
  plan; the examples run with none, so this row shows what is still outside the books).
* **offload/prefetch**: each model is offloaded (session released, arena given back) and
  prefetched by a request ``cycles`` times; the memory an offload returns is measured, and the
  prefetch times come from the registry (the same numbers ``stowplan_model_prefetch_seconds``
  exports).
* **unload**: what unloading every model gives back to the system.

Callers: :mod:`stowplan.commands.memprobe`. Numbers are measured here, never constants.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stowplan.agent.config import AgentSettings, ModelConfig
from stowplan.agent.memory import ResidencyManager
from stowplan.agent.protocol import InferenceRequest
from stowplan.agent.runtime import rss_bytes
from stowplan.agent.serving import Agent
from stowplan.agent.telemetry import SimulatedTelemetry
from stowplan.agent.tensors import TensorSpec
from stowplan.models import EXAMPLES, build_all

MIB = 1024 * 1024


@dataclass(frozen=True)
class ModelProbe:
    name: str
    file_bytes: int
    books_bytes: int  # the block the pool carved for it
    load_bytes: int  # resident growth when it was loaded, less its host bytes
    workspace_bytes: int  # growth when it first ran at its largest batch (kept by the arena)
    offload_returned_bytes: int  # median resident drop when it was offloaded
    prefetch_s: tuple[float, ...]  # every prefetch of it, seconds


@dataclass(frozen=True)
class MemProbe:
    pool_bytes: int
    max_batch: int
    baseline_bytes: int
    host_bytes: int  # every model's bytes held in host memory
    books_after_load: int
    measured_after_load: int
    books_after_run: int
    measured_after_run: int
    unload_returned_bytes: int
    measured_after_unload: int
    models: tuple[ModelProbe, ...] = field(default_factory=tuple)

    @property
    def load_error(self) -> float:
        """(measured - books) / books after loading the examples."""
        return (self.measured_after_load - self.books_after_load) / max(1, self.books_after_load)

    def markdown(self) -> str:
        rows = [
            f"# pool {self.pool_bytes / MIB:.0f} MiB, largest batch {self.max_batch}, "
            f"baseline RSS {self.baseline_bytes / MIB:.1f} MiB, model bytes in host memory "
            f"{self.host_bytes / MIB:.2f} MiB (subtracted)",
            "",
            "| model | file MiB | books MiB | measured at load MiB | workspace kept MiB "
            "| offload returns MiB | prefetch ms (median, max) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m in self.models:
            pre = (
                f"{statistics.median(m.prefetch_s) * 1e3:.2f}, {max(m.prefetch_s) * 1e3:.2f}"
                if m.prefetch_s
                else "-"
            )
            rows.append(
                f"| {m.name} | {m.file_bytes / MIB:.2f} | {m.books_bytes / MIB:.2f} "
                f"| {m.load_bytes / MIB:.2f} | {m.workspace_bytes / MIB:.2f} "
                f"| {m.offload_returned_bytes / MIB:.2f} | {pre} |"
            )
        rows += [
            "",
            "| moment | books MiB | measured MiB | measured / books |",
            "|---|---:|---:|---:|",
            _row("after loading the examples", self.books_after_load, self.measured_after_load),
            _row("after one largest batch each", self.books_after_run, self.measured_after_run),
            _row("after unloading them all", 0, self.measured_after_unload),
            "",
            f"books vs measured after load: {self.load_error:+.1%} "
            f"({'within' if abs(self.load_error) <= 0.10 else 'OUTSIDE'} 10 %); unloading "
            f"gave back {self.unload_returned_bytes / MIB:.2f} MiB",
        ]
        return "\n".join(rows)


def _row(what: str, books: int, measured: int) -> str:
    ratio = f"{measured / books:.3f}" if books else "-"
    return f"| {what} | {books / MIB:.2f} | {measured / MIB:.2f} | {ratio} |"


def _request(spec: TensorSpec, batch: int) -> InferenceRequest:
    shape = [batch] + [d if d > 0 else 1 for d in spec.shape[1:]]
    return InferenceRequest.model_validate(
        {
            "inputs": [
                {
                    "name": spec.name,
                    "shape": shape,
                    "datatype": spec.datatype,
                    "data": np.zeros(int(np.prod(shape)), np.float32).tolist(),
                }
            ]
        }
    )


def probe(
    model_dir: Path | None = None,
    pool_mib: int = 256,
    max_batch: int = 32,
    cycles: int = 5,
    record_dir: Path | None = None,
) -> MemProbe:
    """Run the probe (module docstring) and return what it measured. With ``record_dir`` the
    agent writes its pool's residency trace there (``device-0.stwres.json``) on close."""
    with tempfile.TemporaryDirectory(prefix="stowplan-memprobe-") as tmp:
        directory = model_dir or Path(tmp) / "models"
        paths = {p.stem: p for p in build_all(directory)}
        pool = pool_mib * MIB
        agent = Agent(
            AgentSettings(
                cache_dir=Path(tmp) / "cache",
                memory_pool_fraction=1.0,
                residency_trace_dir=record_dir,
            ),
            SimulatedTelemetry(1, memory_bytes=pool),
        )
        try:
            return _probe(agent, paths, pool, max_batch, cycles)
        finally:
            agent.close()


def _probe(
    agent: Agent, paths: dict[str, Path], pool: int, max_batch: int, cycles: int
) -> MemProbe:
    names = [n for n in EXAMPLES if n in paths]

    def config(name: str) -> ModelConfig:
        return ModelConfig(name=name, uri=str(paths[name]), max_batch=max_batch, slo_ms=10_000)

    books = agent.residency(0)
    assert isinstance(books, ResidencyManager)
    # ORT's one-time start-up, and every request built before the baseline: their Python
    # objects would otherwise stay in the interpreter's own pools and read as model memory
    requests: dict[tuple[str, int], InferenceRequest] = {}
    for name in names:
        warm = agent.load(config(name).model_copy(update={"name": "warm-up"}))
        assert warm.runtime is not None, warm.reason
        for batch in (1, max_batch):
            requests[name, batch] = _request(warm.runtime.inputs[0], batch)
        agent.unload("warm-up")
    del warm

    def infer(name: str, batch: int) -> None:
        asyncio.run(agent.infer(name, requests[name, batch]))

    base = rss_bytes()
    host = 0
    load: dict[str, int] = {}
    for name in names:
        before = rss_bytes()
        served = agent.load(config(name))
        assert served.runtime is not None, served.reason
        host += served.runtime.size_bytes
        load[name] = rss_bytes() - before - served.runtime.size_bytes
    books_load, measured_load = books.stats().used_bytes, rss_bytes() - base - host
    work: dict[str, int] = {}
    for name in names:
        before = rss_bytes()
        infer(name, max_batch)
        work[name] = rss_bytes() - before
    books_run, measured_run = books.stats().used_bytes, rss_bytes() - base - host
    returned: dict[str, list[int]] = {n: [] for n in names}
    for _ in range(cycles):
        for name in names:
            before = rss_bytes()
            agent.offload(name)
            returned[name].append(before - rss_bytes())
            infer(name, 1)  # the prefetch
    rows = []
    sizes = {r.name: r.weights_bytes + r.workspace_bytes for r in books.snapshot()}
    for name in names:
        served = agent.get(name)
        rows.append(
            ModelProbe(
                name,
                paths[name].stat().st_size,
                sizes[name],
                load[name],
                work[name],
                int(statistics.median(returned[name])) if returned[name] else 0,
                tuple(served.prefetch_s),
            )
        )
    del served  # the last model's session and bytes must be free to go on unload
    before = rss_bytes()
    for name in names:
        agent.unload(name)
    after = rss_bytes()
    return MemProbe(
        pool_bytes=pool,
        max_batch=max_batch,
        baseline_bytes=base,
        host_bytes=host,
        books_after_load=books_load,
        measured_after_load=measured_load,
        books_after_run=books_run,
        measured_after_run=measured_run,
        unload_returned_bytes=before - after,
        measured_after_unload=after - base,
        models=tuple(rows),
    )


__all__ = ["MemProbe", "ModelProbe", "probe"]
