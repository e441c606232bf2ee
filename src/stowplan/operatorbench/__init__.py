"""``stowplan bench operator``: the operator at fleet scale on a real local control plane.

:mod:`.fleet` runs it: GPUNodes registered through the API server (their GPUs written to
``status`` once, as an agent would; no agents and no heartbeats, so none goes stale),
InferenceModels applied at once, the real operator process (``kopf run``), and times read back
from the API server; :mod:`.plot` draws the runs of one invocation. Benchmark code only; the
product never imports it.
"""
