"""The one translation of an InferenceModel spec: into a placement demand, and of a placed
replica into the ``GPUNode`` assignment the agent serves it from.

``spec -> ModelDemand`` (:func:`model_demand`) feeds the placement engine;
``(spec, placement.Assignment) -> GPUNode assignment`` (:func:`node_assignment`) is what the
operator writes into ``GPUNode.spec.assignments`` and what standalone mode hands its agent; the
agent turns assignments into its model config with :func:`stowplan.agent.config.model_config`
(it reads every field written here). Both the operator (names ``namespace/name``) and standalone
mode (names the object's name) use these functions, so the plan and the agent see the same
batching policy, static batch size, queue-delay bound, priority and memory.

SLO, profile, priority, node selector, GPU type and the batching policy (with its static batch
size and its batch-fill bound, none for policy ``none``) map one to one;
``spec.resources.requests`` becomes ``cpu_milli`` / ``host_memory_mib`` (Kubernetes quantities
rounded up). It lives outside both packages because the operator package imports kopf on import,
the placement package must not see API types and the agent must not import placement. Pure; no
I/O.
"""

from __future__ import annotations

from stowplan import placement
from stowplan.api import gpunode, quantity
from stowplan.api.inferencemodel import BatchingPolicy, InferenceModelSpec


def queue_delay_ms(spec: InferenceModelSpec) -> float:
    """How long a request may wait for its batch to fill: ``spec.batching.maxQueueDelayMs``,
    0 for policy ``none`` (every request runs alone, nothing waits to fill)."""
    if spec.batching.policy is BatchingPolicy.NONE:
        return 0.0
    return spec.batching.max_queue_delay_ms


def model_demand(name: str, spec: InferenceModelSpec) -> placement.ModelDemand:
    """The demand of ``spec`` under the placement name ``name``."""
    requests = spec.resources.requests
    static = spec.batching.policy is BatchingPolicy.STATIC
    return placement.ModelDemand(
        name=name,
        replicas=spec.replicas,
        slo_ms=spec.slo.latency_ms,
        target_qps=spec.slo.target_qps,
        latency=placement.LatencyProfile(
            base_ms=spec.profile.latency_ms.base_ms,
            per_item_ms=spec.profile.latency_ms.per_item_ms,
        ),
        memory=placement.MemoryProfile(
            weights_mib=spec.profile.memory_mib.weights_mib,
            per_item_mib=spec.profile.memory_mib.per_item_mib,
        ),
        max_batch=spec.profile.max_batch,
        priority=spec.priority,
        node_selector=dict(spec.node_selector),
        gpu_type=spec.gpu_type,
        cpu_milli=quantity.cpu_milli(requests.cpu),
        host_memory_mib=quantity.memory_mib(requests.memory),
        batching=placement.BatchingPolicy(str(spec.batching.policy)),
        static_batch_size=(spec.batching.static_batch_size or 0) if static else 0,
        max_queue_delay_ms=queue_delay_ms(spec),
    )


def node_assignment(spec: InferenceModelSpec, placed: placement.Assignment) -> gpunode.Assignment:
    """The ``GPUNode`` assignment of the placed replica ``placed`` of ``spec``: its GPU, the
    planned batch, duty cycle, busy time and memory, and the spec's fields the agent serves
    with (source, SLO, max batch, batching, priority, memory profile)."""
    return gpunode.Assignment(
        model=placed.model,
        replica=placed.replica,
        gpu=placed.gpu,
        source=spec.model,
        batch_size=placed.batch_size,
        max_batch=spec.profile.max_batch,
        duty_cycle_ms=placed.duty_cycle_ms,
        busy_ms=round(placed.busy_ms, 6),
        memory_mib=round(placed.memory_mib, 6),
        weights_mib=spec.profile.memory_mib.weights_mib,
        per_item_mib=spec.profile.memory_mib.per_item_mib,
        slo_ms=spec.slo.latency_ms,
        priority=spec.priority,
        batching=spec.batching,
    )
