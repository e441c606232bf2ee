"""The stowplan operator: kopf glue around a pure reconcile step.

``kopf run --standalone -m stowplan.operator --all-namespaces`` imports this package, which
registers the handlers. Modules: ``handlers`` (kopf), ``fleet`` (the reconcile loop), ``inventory``
and ``reconcile`` (pure translation), ``kube`` (the only API-server client), ``errors``.
"""

from stowplan.operator import handlers

__all__ = ["handlers"]
