"""Only watch events that change what a pass reads wake the fleet loop: the operator's own
status writes and agents' heartbeats do not."""

from __future__ import annotations

from stowplan.operator.wakeups import Wakeups


def _model(generation: int, status: dict | None = None) -> dict:
    return {"metadata": {"name": "a", "namespace": "ns", "generation": generation},
            "spec": {"replicas": 1}, "status": status or {}}  # fmt: skip


def _node(heartbeat: str, state: str = "Ready", assignments: int = 1) -> dict:
    return {
        "metadata": {"name": "n1"},
        "spec": {"assignments": [{"model": "ns/a", "replica": i} for i in range(assignments)]},
        "status": {"heartbeat": heartbeat, "gpus": [{"index": 0}],
                   "models": [{"model": "ns/a", "replica": 0, "gpu": 0, "state": state,
                               "qps": 3.0}]},
    }  # fmt: skip


def test_status_writes_and_heartbeats_do_not_wake_but_changes_do():
    w = Wakeups()
    assert w.changed("model", "ADDED", _model(1))
    assert not w.changed("model", "MODIFIED", _model(1, {"replicas": 1}))  # our status write
    assert w.changed("model", "MODIFIED", _model(2))  # the user edited the spec
    assert w.changed("node", "ADDED", _node("t1"))
    assert not w.changed("node", "MODIFIED", _node("t2"))  # a heartbeat
    assert w.changed("node", "MODIFIED", _node("t3", state="Loading"))  # readiness changed
    assert w.changed("node", "MODIFIED", _node("t3", state="Loading", assignments=2))
    assert w.changed("model", "DELETED", _model(2))
    assert w.changed("model", "ADDED", _model(2))  # recreated under the same name
