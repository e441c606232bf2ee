"""The stowplan operator: kopf glue around a pure reconcile step.

``kopf run --standalone -m stowplan.operator --all-namespaces`` imports this package, which
registers the handlers. Modules: ``handlers`` (kopf), ``settings`` (read once at start-up),
``fleet`` (the reconcile loop and its failure boundary), ``inventory`` and ``reconcile`` (pure
translation), ``cluster`` (the API interface), ``kube`` (its only implementation, the only
API-server client), ``leadership``, ``autoscaling``, ``clock``, ``errors``.
"""

from stowplan.operator import handlers

__all__ = ["handlers"]
