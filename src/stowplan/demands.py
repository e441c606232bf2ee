"""An InferenceModel spec as a placement demand: the one translation of the user's spec into
:class:`stowplan.placement.ModelDemand`, shared by the operator (``operator.inventory``, names
``namespace/name``) and standalone mode (``standalone``, names the object's name).

SLO, profile, priority, node selector, GPU type and the batching policy (with its static batch
size) map one to one; ``spec.resources.requests``
becomes ``cpu_milli`` / ``host_memory_mib`` (Kubernetes quantities rounded up). It lives outside
both packages because the operator package imports kopf on import and the placement package
must not see API types. Pure; no I/O.
"""

from __future__ import annotations

from stowplan import placement
from stowplan.api import quantity
from stowplan.api.inferencemodel import InferenceModelSpec


def model_demand(name: str, spec: InferenceModelSpec) -> placement.ModelDemand:
    """The demand of ``spec`` under the placement name ``name``."""
    requests = spec.resources.requests
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
        static_batch_size=spec.batching.static_batch_size or 0
        if str(spec.batching.policy) == "static"
        else 0,
    )
