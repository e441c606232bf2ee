"""Faults on the real control plane, one after another on one running fleet: after each, every
replica is Ready again (or reported with a reason), no assignment names a deleted model,
nothing moved that did not need to, the operator never logged a bug, and the time from the
fault to convergence is printed (``-s`` shows it; the lines start with ``CONVERGED``).

Run alone: ``.venv/bin/python -m pytest tests/chaos -m chaos -s``.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from stowplan.testing.localcluster import Kubectl, Operator, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

NS = "chaos"
AGENTS = ("chaos-node-a", "chaos-node-b", "chaos-node-c")  # as in conftest.py
STALE_AFTER_S = 10  # as in conftest.py
SIM_GPU = "Simulated GPU (CPU)"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _model(name: str, models_dir: Path, replicas: int = 2) -> dict[str, Any]:
    """The shipped mlp example (profile, memory, latency SLO) on the project's real ONNX MLP,
    at 100 requests/s per replica so that the three simulated devices have room to spare."""
    return {
        "apiVersion": "stowplan.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"uri": f"file://{models_dir / 'mlp.onnx'}"},
            "replicas": replicas,
            "slo": {"latencyMs": 10, "targetQPS": 100 * replicas},
            "profile": {
                "latencyMs": {"base": 1.24, "perItem": 0.17},
                "memoryMiB": {"weights": 120, "perItem": 4},
                "maxBatch": 64,
            },
            "gpuType": SIM_GPU,
        },
    }


def _apply(k: Kubectl, doc: dict[str, Any]) -> None:
    k.run("apply", "-f", "-", input_=yaml.safe_dump(doc))


def _state(k: Kubectl) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return k.json("get", "im", "-n", NS)["items"], k.json("get", "gpunodes")["items"]


def _where(k: Kubectl) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    for n in k.json("get", "gpunodes")["items"]:
        for a in n["spec"].get("assignments", []):
            out.setdefault((a["model"], a["replica"]), []).append(n["metadata"]["name"])
    return {key: sorted(v) for key, v in sorted(out.items())}


def _heartbeat(node: dict[str, Any]) -> datetime | None:
    beat = (node.get("status") or {}).get("heartbeat")
    return datetime.fromisoformat(beat.replace("Z", "+00:00")) if beat else None


def _converged(
    k: Kubectl, dead: frozenset[str] = frozenset(), fresh: dict[str, datetime] | None = None
) -> bool:
    """Every model Ready with all its replicas; each replica assigned in exactly one place,
    the place its status names, on a node not in ``dead`` whose agent reports it Ready (with a
    heartbeat newer than ``fresh[node]``); no assignment names a model that does not exist."""
    models, nodes = _state(k)
    by_name = {n["metadata"]["name"]: n for n in nodes}
    for node, since in (fresh or {}).items():
        beat = _heartbeat(by_name.get(node, {}))
        if beat is None or beat < since:
            return False
    names = {f"{NS}/{m['metadata']['name']}" for m in models}
    assigned: dict[tuple[str, int], str] = {}
    for n in nodes:
        for a in n["spec"].get("assignments", []):
            key = (a["model"], a["replica"])
            if a["model"] not in names or key in assigned:
                return False
            assigned[key] = n["metadata"]["name"]
    for m in models:
        s = m.get("status") or {}
        key = f"{NS}/{m['metadata']['name']}"
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions", []))
        if not ready or s.get("readyReplicas") != m["spec"]["replicas"]:
            return False
        for p in s.get("placements", []):
            node = by_name.get(p["node"], {})
            reported = {
                (r["model"], r["replica"])
                for r in (node.get("status") or {}).get("models", [])
                if r["state"] == "Ready"
            }
            if (
                p["node"] in dead
                or assigned.get((key, p["replica"])) != p["node"]
                or (key, p["replica"]) not in reported
            ):
                return False
    return True


def _converge(
    k: Kubectl,
    fault: str,
    since: float,
    timeout_s: float = 60,
    dead: frozenset[str] = frozenset(),
    fresh: dict[str, datetime] | None = None,
) -> float:
    wait_for(
        lambda: _converged(k, dead, fresh), timeout_s=timeout_s, what=f"convergence after {fault}"
    )
    took = time.monotonic() - since
    print(f"\nCONVERGED {fault}: {took:.1f} s")
    return took


def _no_bugs(operators: list[Any]) -> None:
    for op in operators:
        assert "BUG in reconcile pass" not in op.log(), op.log_tail()


def _leader(k: Kubectl, operators: list[Operator]) -> Operator:
    lease = k.json("get", "lease", "-n", "stowplan-system", "stowplan-operator")
    holder = lease["spec"]["holderIdentity"]
    return next(op for op in operators if op.env["POD_NAME"] == holder)


@pytest.fixture(scope="module")
def fleet(kubectl, operators, agents, models_dir):
    wait_for(
        lambda: {n["metadata"]["name"] for n in kubectl.json("get", "gpunodes")["items"]
                 if (n.get("status") or {}).get("gpus")} >= set(AGENTS),
        timeout_s=90, what="three agents registered",
    )  # fmt: skip
    start = time.monotonic()
    for name in ("m1", "m2"):
        _apply(kubectl, _model(name, models_dir))
    _converge(kubectl, "initial placement of 2 models x 2 replicas", start, timeout_s=120)
    return kubectl


def test_agent_kill_and_restart_within_stale_after_moves_nothing(fleet, agents, operators):
    before = _where(fleet)
    node = next(iter(before.values()))[0]
    # heartbeats have whole seconds: the first one newer than this is the new process's
    restarted = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    start = time.monotonic()
    agents[node].kill()
    agents[node].start()  # the same node, port and cache: reloads what its GPUNode assigns
    wait_for(
        lambda: (_heartbeat(fleet.json("get", f"gpunode/{node}")) or EPOCH) >= restarted,
        timeout_s=60, what="the restarted agent's first heartbeat",
    )  # fmt: skip
    down_s = time.monotonic() - start
    if down_s > STALE_AFTER_S - 1:  # then moving its replicas is right, and tested below
        pytest.skip(f"the agent took {down_s:.1f} s to restart here (staleAfter {STALE_AFTER_S})")
    _converge(fleet, "agent kill -9 + restart", start, fresh={node: restarted})
    assert _where(fleet) == before
    _no_bugs(operators)


def test_a_dead_agent_is_marked_and_its_replicas_come_back_elsewhere(fleet, agents, operators):
    before = _where(fleet)
    node = next(iter(before.values()))[0]
    moved = {key for key, where in before.items() if node in where}
    start = time.monotonic()
    agents[node].kill()

    def marked() -> bool:
        gn = fleet.json("get", f"gpunode/{node}")
        conds = (gn.get("status") or {}).get("conditions", [])
        return any(c["reason"] == "HeartbeatStale" and c["status"] == "False" for c in conds)

    wait_for(marked, timeout_s=STALE_AFTER_S + 20, what="GPUNode Ready=False HeartbeatStale")
    took = _converge(
        fleet, f"agent kill -9 (staleAfter {STALE_AFTER_S} s)", start, dead=frozenset({node})
    )
    after = _where(fleet)
    assert all(node not in after[key] for key in moved)
    assert {k: v for k, v in after.items() if k not in moved} == {
        k: v for k, v in before.items() if k not in moved
    }  # nothing else moved
    assert took <= STALE_AFTER_S + 20, f"goal 30 s, took {took:.1f} s"
    agents[node].start()  # back for the next tests; it gets nothing unless needed
    wait_for(lambda: not marked(), timeout_s=30, what="the agent's own Ready again")
    _no_bugs(operators)


def test_leader_kill_mid_pass_standby_takes_over(fleet, operators, models_dir):
    leader = _leader(fleet, operators)
    standby = next(op for op in operators if op is not leader)
    start = time.monotonic()
    _apply(fleet, _model("m3", models_dir, replicas=1))  # wakes a pass...
    time.sleep(0.3)
    leader.kill()  # ...and the leader dies in it
    took = _converge(fleet, "leader operator kill -9 mid-pass", start)
    assert standby.passes() > 0
    assert took <= 3 + 2 + 20  # lease + one resync + loading the replica
    leader.start()  # the new standby
    _no_bugs(operators)


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_component_kill_mid_pass(
    fleet, operators, models_dir, chaos_plane, component
):
    name = f"m4-{component.split('-')[-1]}"
    start = time.monotonic()
    _apply(fleet, _model(name, models_dir, replicas=1))
    time.sleep(0.3)
    chaos_plane.kill(component)
    time.sleep(3)
    chaos_plane.restart(component)
    _converge(fleet, f"{component} kill -9 mid-pass + restart after 3 s", start)
    assert all(op.running for op in operators), [op.log_tail() for op in operators]
    _no_bugs(operators)


def test_half_applied_move_is_recovered(fleet, operators):
    before = _where(fleet)
    (model, replica), (node,) = next(iter(before.items()))
    other = next(n for n in AGENTS if n != node and (model, replica) not in [
        k for k, v in before.items() if n in v])  # fmt: skip
    gn = fleet.json("get", f"gpunode/{node}")
    copy = next(
        a for a in gn["spec"]["assignments"] if (a["model"], a["replica"]) == (model, replica)
    )
    target = fleet.json("get", f"gpunode/{other}")
    assignments = [*target["spec"].get("assignments", []), copy]  # the pass died after this
    start = time.monotonic()
    fleet.run(
        "patch", f"gpunode/{other}", "--type=merge",
        "-p", json.dumps({"spec": {"assignments": assignments}}),
    )  # fmt: skip
    _converge(fleet, "half-applied move (a replica listed on two nodes)", start)
    after = _where(fleet)
    assert len(after[(model, replica)]) == 1
    _no_bugs(operators)


def test_churn_between_list_and_patch(fleet, operators, models_dir):
    """Creates, scales and deletes of models for 15 s, pinned to a GPUNode that comes and goes
    (so that it is now and then deleted between the operator's list and its patch)."""
    stop = threading.Event()

    def ghost_node() -> None:
        doc = {"apiVersion": "stowplan.io/v1alpha1", "kind": "GPUNode",
               "metadata": {"name": "chaos-ghost", "labels": {"chaos/ghost": "true"}},
               "spec": {}}  # fmt: skip
        status = {"status": {"gpus": [{"index": 0, "memoryTotalMiB": 16384, "name": SIM_GPU}]}}
        while not stop.is_set():
            _apply(fleet, doc)
            fleet.run("patch", "gpunode/chaos-ghost", "--subresource=status", "--type=merge",
                      "-p", json.dumps(status), check=False)  # fmt: skip
            time.sleep(0.7)
            fleet.run("delete", "gpunode/chaos-ghost", "--wait=false", check=False)
            time.sleep(0.5)

    thread = threading.Thread(target=ghost_node)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        i = 0
        while time.monotonic() < deadline:
            name = f"churn-{i % 4}"
            doc = _model(name, models_dir, replicas=1 + i % 3)
            doc["spec"]["nodeSelector"] = {"chaos/ghost": "true"}
            _apply(fleet, doc)
            if i % 3 == 2:
                fleet.run("delete", "im", "-n", NS, f"churn-{(i - 2) % 4}", "--wait=false",
                          check=False)  # fmt: skip
            i += 1
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    start = time.monotonic()
    fleet.run("delete", "gpunode/chaos-ghost", "--ignore-not-found")
    for name in [f"churn-{j}" for j in range(4)]:
        fleet.run("delete", "im", "-n", NS, name, "--ignore-not-found")
    _converge(fleet, "15 s of churn (models and a GPUNode created/deleted)", start)
    gone = sum(op.log().count("was deleted during the pass") for op in operators)
    print(f"patches of a GPUNode deleted after the list: {gone}")
    _no_bugs(operators)
