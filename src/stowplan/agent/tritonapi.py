"""The Triton-only endpoints that Triton's clients call and that the agent can serve honestly:
a model's configuration (``GET /v2/models/{name}/config``), the repository index
(``POST /v2/repository/index``) and inference statistics (``GET /v2/models[/{name}]/stats``),
built from what the registry really holds (the ONNX Runtime session's tensors, the batching
lane's cap, the per-model cumulative :class:`stowplan.agent.stats.Totals`).

Repository control (``POST /v2/repository/models/{name}/load|unload``) is refused with a 400
that says why: what a node serves is decided by placement from InferenceModel objects (or
the manifests given to ``stowplan up``), so loading or unloading behind its back would make
the agent disagree with the plan. Every other Triton-only route (trace, logging, shared
memory) is a protocol-shaped 404 from the server's route fallback.

Callers: :mod:`stowplan.agent.server`. Reads the registry; changes nothing in it. Must not
import FastAPI.
"""

from __future__ import annotations

from stowplan.agent import protocol
from stowplan.agent.errors import InvalidRequest, ModelNotFound
from stowplan.agent.registry import ModelRegistry, ModelState, ServedModel
from stowplan.agent.tensors import BYTES, TensorSpec

#: the one version of every model this agent serves
VERSION = "1"


def check_version(name: str, version: str) -> None:
    """Only version 1 exists; any other is a 404 naming the model and the version."""
    if version != VERSION:
        raise ModelNotFound(f"model {name!r} has no version {version!r}; this server serves '1'")


def config_datatype(datatype: str) -> str:
    """Open Inference Protocol datatype -> Triton model-configuration type (FP32 -> TYPE_FP32,
    BYTES -> TYPE_STRING)."""
    return "TYPE_STRING" if datatype == BYTES else f"TYPE_{datatype}"


def model_config(served: ServedModel, name: str | None = None) -> protocol.ModelConfigResponse:
    """The model's configuration as Triton writes it: with ``max_batch_size`` > 0 the dims
    leave out the batch dimension (-1 stays for other dynamic dimensions). ``name``: the name
    the client asked for (full or bare), which the answer echoes; the served name if None."""
    rt = served.runtime
    if rt is None:
        raise ModelNotFound(
            f"model {served.name!r} is {served.state.value} and has no configuration"
            + (f": {served.reason}" if served.reason else "")
        )
    max_batch = served.max_items if rt.batched else 0

    def tensors(specs: tuple[TensorSpec, ...]) -> list[protocol.ConfigTensor]:
        return [
            protocol.ConfigTensor(
                name=s.name,
                data_type=config_datatype(s.datatype),
                dims=list(s.shape[1:] if max_batch and s.shape else s.shape),
            )
            for s in specs
        ]

    cfg = served.config
    return protocol.ModelConfigResponse(
        name=name or served.name,
        max_batch_size=max_batch,
        input=tensors(rt.inputs),
        output=tensors(rt.outputs),
        parameters={
            "stowplan.batching_policy": protocol.ConfigParameter(
                string_value=cfg.batching.policy.value
            ),
            "stowplan.slo_ms": protocol.ConfigParameter(string_value=f"{cfg.slo_ms:g}"),
            "stowplan.devices": protocol.ConfigParameter(
                string_value=",".join(str(d) for d in sorted(served.lanes) or [cfg.device])
            ),
        },
    )


def repository_index(registry: ModelRegistry, ready_only: bool) -> list[protocol.RepositoryModel]:
    """Every model this agent was asked to serve: READY, or UNAVAILABLE with the reason."""
    rows = []
    for m in sorted(registry.models.values(), key=lambda m: m.name):
        ready = m.state is ModelState.READY
        if ready_only and not ready:
            continue
        reason = "" if ready else (m.reason or m.state.value)
        rows.append(
            protocol.RepositoryModel(
                name=m.name, state="READY" if ready else "UNAVAILABLE", reason=reason
            )
        )
    return rows


def _d(count: int, ns: int) -> protocol.StatDuration:
    return protocol.StatDuration(count=count, ns=ns)


def model_statistics(served: ServedModel, name: str | None = None) -> protocol.ModelStatistics:
    """Cumulative since the model was loaded. Compute time is not split into input / infer /
    output: the whole batch run is ``compute_infer`` (input and output copies are zero).
    ``name``: the name the client asked for, echoed; the served name if None."""
    t = served.stats.totals()
    zero = _d(0, 0)
    return protocol.ModelStatistics(
        name=name or served.name,
        last_inference=t.last_inference_ms,
        inference_count=t.inference_count,
        execution_count=t.execution_count,
        inference_stats=protocol.InferStats(
            success=_d(t.success_count, t.success_ns),
            fail=_d(t.fail_count, t.fail_ns),
            queue=_d(t.queue_count, t.queue_ns),
            compute_input=_d(t.compute_count, 0),
            compute_infer=_d(t.compute_count, t.compute_ns),
            compute_output=_d(t.compute_count, 0),
            cache_hit=zero,
            cache_miss=zero,
        ),
        batch_stats=[
            protocol.BatchStats(
                batch_size=size,
                compute_input=_d(n, 0),
                compute_infer=_d(n, ns),
                compute_output=_d(n, 0),
            )
            for size, (n, ns) in sorted(t.by_batch.items())
        ],
    )


def statistics(registry: ModelRegistry, name: str | None) -> protocol.InferenceStatistics:
    """One model's statistics (404 if unknown, 400 if a bare name is ambiguous; named as
    asked), or every model's (by served name)."""
    if name is not None:
        return protocol.InferenceStatistics(
            model_stats=[model_statistics(registry.get(name), name)]
        )
    models = sorted(registry.models.values(), key=lambda m: m.name)
    return protocol.InferenceStatistics(model_stats=[model_statistics(m) for m in models])


def refuse_model_control(name: str, action: str) -> InvalidRequest:
    """The 400 for ``POST /v2/repository/models/{name}/load|unload``."""
    return InvalidRequest(
        f"cannot {action} model {name!r}: this server does not take model control requests; "
        "what it serves is placed from InferenceModel objects (kubectl apply / delete, or the "
        "manifests given to `stowplan up`)"
    )


__all__ = [
    "VERSION",
    "check_version",
    "config_datatype",
    "model_config",
    "model_statistics",
    "refuse_model_control",
    "repository_index",
    "statistics",
]
