"""RBAC grants exactly what the code calls: the rules in manifests/base/*-rbac.yaml are compared
with a table of the Kubernetes client methods the operator and the agent call (plus what kopf
itself needs), and the table with the calls found in the source, so a grant nobody uses, a
call nobody granted, or a new call missing from the table each fail here. The same sets are
checked against the real API server by tests/cluster/test_rbac_on_apiserver.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stowplan.testing.rbac import AGENT, AGENT_CALLS, OPERATOR, OPERATOR_CALLS, granted

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "stowplan"


def _calls(pattern: str, files: list[Path]) -> set[str]:
    return {m for f in files for m in re.findall(pattern, f.read_text())}


def test_the_operator_table_lists_every_client_call_in_kube_py():
    found = _calls(
        r"self\._(?:core|custom|coordination|discovery)\.(\w+)", [SRC / "operator" / "kube.py"]
    )
    assert found == set(OPERATOR_CALLS)


def test_the_agent_table_lists_every_client_call_of_the_agent():
    found = _calls(r"self\.api\.(\w+)", sorted((SRC / "agent").glob("*.py")))
    assert found == set(AGENT_CALLS)


def _rules(name: str) -> set[tuple[str, str, str, str | None]]:
    docs = list(yaml.safe_load_all((REPO / "manifests" / "base" / name).read_text()))
    return granted(d for d in docs if d)


def test_the_operator_is_granted_exactly_what_it_calls():
    assert _rules("operator-rbac.yaml") == OPERATOR


def test_the_agent_is_granted_exactly_what_it_calls():
    assert _rules("agent-rbac.yaml") == AGENT
