"""The engine's GPU filter: which GPUs a model may run on (its GPU type and node selector).

``gpu_admits`` is what eligibility means to the search: ``packindex`` evaluates it once per GPU
class, ``alone`` for the GPUs of replicas that fit only alone; node CPU and host memory are
``nodefit``'s. ``verify.check_plan`` does not call it: the verifier re-checks the filter with
its own code. Pure: no I/O.
"""

from __future__ import annotations

from stowplan.placement.models import Gpu, ModelDemand


def gpu_admits(gpu: Gpu, model: ModelDemand) -> bool:
    """GPU type and node selector filter (``""``/empty = any)."""
    if model.gpu_type and model.gpu_type != gpu.gpu_type:
        return False
    return all(gpu.labels.get(k) == v for k, v in model.node_selector.items())
