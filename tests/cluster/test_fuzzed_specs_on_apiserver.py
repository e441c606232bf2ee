"""Fuzzed InferenceModel manifests through the real API server and the running operator.

hypothesis starts from a valid manifest and sets one field to an arbitrary JSON value (or
drops it). Each manifest is either refused by ``kubectl apply`` with a message that names the
field, or accepted, and then the operator reports it: ``Placed`` True, or False with a reason,
for the manifest's generation. The operator logs no traceback and no bug meanwhile, and keeps
placing a valid model applied after the fuzzing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.cluster

BASE: dict[str, Any] = {
    "apiVersion": "stowplan.io/v1alpha1",
    "kind": "InferenceModel",
    "spec": {
        "model": {"uri": "file:///models/mlp.onnx"},
        "replicas": 1,
        "slo": {"latencyMs": 50, "targetQPS": 100},
        "profile": {
            "latencyMs": {"base": 1.24, "perItem": 0.17},
            "memoryMiB": {"weights": 120, "perItem": 4},
            "maxBatch": 64,
        },
        "gpuType": "FUZZ-80GB",
    },
}
FIELDS = [
    ("spec", "replicas"), ("spec", "slo", "latencyMs"), ("spec", "slo", "targetQPS"),
    ("spec", "profile", "latencyMs", "base"), ("spec", "profile", "latencyMs", "perItem"),
    ("spec", "profile", "memoryMiB", "weights"), ("spec", "profile", "memoryMiB", "perItem"),
    ("spec", "profile", "maxBatch"), ("spec", "model", "uri"), ("spec", "model"),
    ("spec", "slo"), ("spec", "gpuType"), ("spec", "priority"), ("spec", "nodeSelector"),
    ("spec", "batching"), ("spec", "batching", "policy"), ("spec", "resources"),
]  # fmt: skip
DROP = object()
VALUES = st.one_of(
    st.just(DROP),
    st.integers(min_value=-3, max_value=10**9),
    st.floats(min_value=-1e6, max_value=1e12, allow_nan=False, allow_infinity=False),
    st.text(alphabet="ab1-.Z", max_size=6),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["x", "cpu", "policy"]), st.integers(-1, 5), max_size=2),
)


@pytest.fixture(scope="module")
def fuzz_node(installed):
    node = {"apiVersion": "stowplan.io/v1alpha1", "kind": "GPUNode",
            "metadata": {"name": "fuzz-node"}, "spec": {}}  # fmt: skip
    installed.run("apply", "-f", "-", input_=yaml.safe_dump(node))
    gpus = [{"index": i, "memoryTotalMiB": 81920, "name": "FUZZ-80GB"} for i in range(2)]
    installed.run("patch", "gpunode/fuzz-node", "--subresource=status", "--type=merge",
                  "-p", json.dumps({"status": {"gpus": gpus, "gpuCount": 2}}))  # fmt: skip
    yield
    installed.run("delete", "gpunode/fuzz-node", "--ignore-not-found")


def _placed_reported(kubectl, ns: str, name: str) -> dict[str, Any] | None:
    obj = kubectl.json("get", "im", "-n", ns, name)
    status = obj.get("status") or {}
    gen = obj["metadata"]["generation"]
    cond = next((c for c in status.get("conditions", []) if c["type"] == "Placed"), None)
    if (
        cond is None
        or cond.get("observedGeneration") != gen
        or status.get("observedGeneration") != gen
    ):
        return None
    return cond


def test_fuzzed_specs_are_refused_naming_the_field_or_reported(
    installed, operator, fuzz_node, namespace, wait
):
    counter = [0]
    outcomes: dict[str, int] = {"refused": 0, "placed": 0, "unplaced": 0}
    tracebacks_before = operator.log().count("Traceback")

    @settings(max_examples=30, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(path=st.sampled_from(FIELDS), value=VALUES)
    def check(path: tuple[str, ...], value: Any) -> None:
        counter[0] += 1
        name = f"fuzz-{counter[0]}"
        doc = copy.deepcopy(BASE)
        doc["metadata"] = {"name": name, "namespace": namespace}
        parent = doc
        for key in path[:-1]:
            parent = parent.setdefault(key, {})
            if not isinstance(parent, dict):
                return
        if value is DROP:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
        proc = installed.run("apply", "-f", "-", input_=json.dumps(doc), check=False)
        if proc.returncode != 0:
            field = ".".join(path[1:])
            named = [field, ".".join(path[1:-1]) or "spec"]
            assert any(f in proc.stderr for f in named), (doc, proc.stderr)
            outcomes["refused"] += 1
            return
        cond = wait(lambda: _placed_reported(installed, namespace, name), timeout_s=30,
                    what=f"Placed reported for {json.dumps(doc['spec'])}")  # fmt: skip
        assert cond["status"] in ("True", "False") and cond["reason"], cond
        outcomes["placed" if cond["status"] == "True" else "unplaced"] += 1
        installed.run("delete", "im", "-n", namespace, name, "--wait=false")

    check()
    print(f"\nfuzzed specs: {outcomes}")
    assert outcomes["refused"] and (outcomes["placed"] + outcomes["unplaced"])
    log = operator.log()
    assert log.count("Traceback") == tracebacks_before, operator.log_tail()
    assert "BUG in reconcile pass" not in log
    valid = copy.deepcopy(BASE)
    valid["metadata"] = {"name": "after-fuzz", "namespace": namespace}
    installed.run("apply", "-f", "-", input_=json.dumps(valid))
    cond = wait(lambda: _placed_reported(installed, namespace, "after-fuzz"), timeout_s=30,
                what="the valid model placed after fuzzing")  # fmt: skip
    assert cond["status"] == "True", cond
