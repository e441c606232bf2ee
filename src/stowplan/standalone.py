"""Standalone mode (``stowplan up DIR``): InferenceModel YAML in, a serving agent out, no cluster.

Reads the same YAML a user would ``kubectl apply`` (multi-document files allowed), validates it
with :mod:`stowplan.api`, places every replica on this machine's devices with
:mod:`stowplan.placement` (real GPUs through NVML; otherwise simulated CPU-backed devices), then
loads the models into an :class:`stowplan.agent.serving.Agent`. Relative ``file://`` URIs are
resolved against the YAML file's folder; a missing file whose name is one of the shipped example
models (:mod:`stowplan.models`) is built into the cache directory on first run.

This is the one place where the agent and the placement engine meet (the agent package itself
must not import the solver). Callers: :mod:`stowplan.commands.up` and tests. Bad input raises
:class:`StandaloneError` with the file path and line; nothing here serves HTTP.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from stowplan import placement
from stowplan.agent import config as agent_config
from stowplan.agent.config import AgentSettings, ModelConfig
from stowplan.agent.registry import ServedModel
from stowplan.agent.serving import Agent
from stowplan.agent.telemetry import SimulatedTelemetry, Telemetry, detect
from stowplan.api.inferencemodel import InferenceModel
from stowplan.demands import model_demand, node_assignment
from stowplan.models import materialize

NODE = "local"


class StandaloneError(Exception):
    """A manifest could not be read or validated (message names the file and line)."""


@dataclass(frozen=True)
class Manifest:
    model: InferenceModel
    path: Path
    line: int


@dataclass
class Deployment:
    """The result of ``up``: what was placed where and the agent serving it."""

    agent: Agent
    manifests: list[Manifest]
    plan: placement.Plan
    built: list[Path] = field(default_factory=list)
    best_effort: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_manifests(directory: Path) -> list[Manifest]:
    """Every InferenceModel document in ``directory`` (*.yaml, *.yml, sorted; non-recursive)
    or in the single file ``directory``. Other kinds are skipped."""
    if directory.is_file():
        files = [directory]
    elif directory.is_dir():
        files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    else:
        raise StandaloneError(f"{directory}: no such file or directory")
    out: list[Manifest] = []
    for path in files:
        out += _read_file(path)
    if not out:
        raise StandaloneError(f"{directory}: no InferenceModel documents found")
    names = [m.model.metadata.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise StandaloneError(f"{directory}: model names used twice: {dup}")
    return out


def _read_file(path: Path) -> list[Manifest]:
    text = path.read_text()
    loader = yaml.SafeLoader(text)
    out: list[Manifest] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            line = node.start_mark.line + 1
            doc: Any = loader.construct_document(node)
            if not isinstance(doc, dict) or doc.get("kind") != "InferenceModel":
                continue
            try:
                out.append(Manifest(InferenceModel.model_validate(doc), path, line))
            except pydantic.ValidationError as exc:
                errs = "; ".join(
                    f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
                )
                raise StandaloneError(f"{path}:{line}: invalid InferenceModel: {errs}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise StandaloneError(f"{where}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return out


def _host_memory_mib() -> int:
    """Physical memory of this machine in MiB."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) >> 20
    except (ValueError, OSError):  # pragma: no cover - not POSIX
        return 1 << 40  # unknown: no limit


def make_problem(manifests: list[Manifest], telemetry: Telemetry) -> placement.Problem:
    labels = {"kubernetes.io/hostname": socket.gethostname(), "stowplan.io/standalone": "true"}
    gpus = tuple(
        placement.Gpu(
            node=NODE,
            index=d.index,
            memory_mib=max(1, d.memory_total_bytes >> 20),
            gpu_type=d.name,
            labels=labels,
        )
        for d in telemetry.devices()
    )
    models = tuple(model_demand(m.model.metadata.name, m.model.spec) for m in manifests)
    # this machine is the one node: its CPUs and memory bound the replicas' requests
    nodes = (
        placement.NodeResources(
            node=NODE, cpu_milli=(os.cpu_count() or 1) * 1000, memory_mib=_host_memory_mib()
        ),
    )
    return placement.Problem(gpus=gpus, models=models, nodes=nodes)


def model_config(m: Manifest, uri: str, replicas: list[placement.Assignment]) -> ModelConfig:
    """The agent config for one manifest; ``replicas`` are its placed replicas here (the first
    one's device is primary, replicas on other devices become extra lanes). The same
    translation as cluster mode: each replica becomes the ``GPUNode`` assignment the operator
    would write (:func:`stowplan.demands.node_assignment`) and the agent's
    :func:`stowplan.agent.config.model_config` reads those. A model with no placed replica is
    served best-effort on device 0, without a plan."""
    name = m.model.metadata.name
    spec = m.model.spec.model_copy(
        update={"model": m.model.spec.model.model_copy(update={"uri": uri})}
    )
    placed = replicas or [
        placement.Assignment(
            model=name,
            replica=0,
            node=NODE,
            gpu=0,
            batch_size=0,
            duty_cycle_ms=spec.slo.latency_ms,  # any: unplanned() drops the plan's fields
            busy_ms=0.0,
            memory_mib=0.0,
        )
    ]
    cfg = agent_config.model_config(name, [node_assignment(spec, a) for a in placed], m.path.parent)
    return cfg if replicas else agent_config.unplanned(cfg, spec.batching)


def up(
    directory: Path,
    settings: AgentSettings,
    telemetry: Telemetry | None = None,
    time_limit_s: float = 0.0,
    max_sim_devices: int = 8,
    use_nvml: bool = True,
) -> Deployment:
    """Read, place and load; the returned agent serves until ``agent.close()``.

    ``telemetry`` None: NVML when there are GPUs (and ``use_nvml``); otherwise the fewest
    simulated devices (up to ``max_sim_devices``) on which the plan leaves nothing unplaced.
    """
    manifests = read_manifests(directory)
    if telemetry is None:
        telemetry = detect(simulated_devices=1, use_nvml=use_nvml)
        if isinstance(telemetry, SimulatedTelemetry):
            for count in range(1, max_sim_devices + 1):
                telemetry = SimulatedTelemetry(count)
                trial = placement.plan(make_problem(manifests, telemetry), time_limit_s=0)
                if not trial.unplaced:
                    break
    the_plan = placement.plan(make_problem(manifests, telemetry), time_limit_s=time_limit_s)
    by_model: dict[str, list[placement.Assignment]] = {}
    for a in sorted(the_plan.assignments, key=lambda a: a.replica):
        by_model.setdefault(a.model, []).append(a)
    agent = Agent(settings, telemetry)
    dep = Deployment(agent, manifests, the_plan)
    for m in manifests:
        name = m.model.metadata.name
        uri, built = materialize(m.model.spec.model.uri, m.path.parent, settings.cache_dir)
        if built is not None:
            dep.built.append(built)
        replicas = by_model.get(name, [])
        if not replicas:
            dep.best_effort.append(name)
        served = agent.load(model_config(m, uri, replicas))
        if served.state.value == "Ready" and served.reason:
            dep.warnings.append(f"{name}: {served.reason}")
    return dep


def describe(dep: Deployment, url: str) -> str:
    """The human summary ``stowplan up`` prints: devices, placement, models, endpoints."""
    lines = []
    for d in dep.agent.telemetry.devices():
        kind = "simulated, CPU-backed" if d.simulated else "NVML"
        lines.append(f"device {d.index}: {d.name} ({kind}), {d.memory_total_bytes >> 20} MiB")
    for p in dep.built:
        lines.append(f"built example model {p}")
    lines.append(
        f"placement: {len(dep.plan.assignments)} replica(s) on {dep.plan.gpus_used} "
        f"device(s) (lower bound {dep.plan.lower_bound}), "
        f"{len(dep.plan.unplaced)} unplaced"
    )
    header = (
        f"{'MODEL':<14} {'REPLICA':>7} {'DEV':>3} {'BATCH':>5} {'CYCLE ms':>8} "
        f"{'BUSY ms':>7} {'MEM MiB':>7}"
    )
    lines.append(header)
    for a in sorted(dep.plan.assignments, key=lambda a: (a.model, a.replica)):
        lines.append(
            f"{a.model:<14} {a.replica:>7} {a.gpu:>3} {a.batch_size:>5} "
            f"{a.duty_cycle_ms:>8.1f} {a.busy_ms:>7.2f} {a.memory_mib:>7.0f}"
        )
    for u in dep.plan.unplaced:
        lines.append(f"{u.model:<14} {u.replica:>7}   - unplaced: {u.reason.value} {u.message}")
    if dep.best_effort:
        lines.append(f"not placed, served best-effort on device 0: {', '.join(dep.best_effort)}")
    lines += [f"warning: {w}" for w in dep.warnings]
    for name, served in dep.agent.models.items():
        lines.append(_model_line(name, served, url))
    lines.append(f"metrics: {url}/metrics   model index: {url}/v2/models   docs: {url}/docs")
    return "\n".join(lines)


def _model_line(name: str, served: ServedModel, url: str) -> str:
    if served.runtime is None or served.state.value != "Ready":
        return f"  {name}: {served.state.value}: {served.reason}"
    ins = ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in served.runtime.inputs)
    devices = ",".join(str(d) for d in sorted(served.lanes)) or str(served.config.device)
    return (
        f"  {name}: {served.state.value} ({served.config.batching.policy.value}, "
        f"SLO {served.config.slo_ms:g} ms, device {devices}, {served.runtime.path}) "
        f"POST {url}/v2/models/{name}/infer  inputs: {ins}"
    )
