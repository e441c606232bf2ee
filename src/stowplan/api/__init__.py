"""Wire types shared by the operator, the agent and standalone mode (pydantic only, no logic).

``InferenceModel`` (namespaced) and ``GPUNode`` (cluster-scoped) in group ``stowplan.io``,
version ``v1alpha1``. The CRDs under ``crds/`` are generated from these types.
"""

from stowplan.api import gpunode, inferencemodel, quantity
from stowplan.api.gpunode import GpuInfo, GPUNode, GPUNodeSpec, GPUNodeStatus, ResidentModel
from stowplan.api.inferencemodel import (
    GROUP,
    MODEL_LABEL,
    VERSION,
    Batching,
    BatchingPolicy,
    InferenceModel,
    InferenceModelSpec,
    InferenceModelStatus,
    ReplicaResources,
    ResourceQuantities,
)
from stowplan.api.meta import Condition, ConditionStatus, ObjectMeta, WireModel

__all__ = [
    "GROUP",
    "MODEL_LABEL",
    "VERSION",
    "Batching",
    "BatchingPolicy",
    "Condition",
    "ConditionStatus",
    "GPUNode",
    "GPUNodeSpec",
    "GPUNodeStatus",
    "GpuInfo",
    "InferenceModel",
    "InferenceModelSpec",
    "InferenceModelStatus",
    "ObjectMeta",
    "ReplicaResources",
    "ResidentModel",
    "ResourceQuantities",
    "WireModel",
    "gpunode",
    "inferencemodel",
    "quantity",
]
