"""The per-node agent: serves models over the Open Inference Protocol with AIMD batching and a
time-sliced executor per device, reports telemetry, and (in cluster mode) syncs its GPUNode.

Callers: ``python -m stowplan.agent`` / ``stowplan-agent`` (cluster mode) and the standalone
wiring in :mod:`stowplan.standalone`. This package must not import ``stowplan.placement``,
``ortools`` or ``kopf``: the agent image ships without a solver. Heavy libraries are imported by
one module each: onnxruntime by ``runtime``, pynvml by ``telemetry``, kubernetes by ``cluster``.
"""
