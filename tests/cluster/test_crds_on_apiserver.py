"""The CRDs and manifests on a real kube-apiserver: install, explain, validation, scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))

pytestmark = pytest.mark.cluster

VALID = {
    "apiVersion": "stowplan.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": "probe"},
    "spec": {
        "model": {"uri": "file:///models/m.onnx"},
        "replicas": 1,
        "slo": {"latencyMs": 50, "targetQPS": 100},
        "profile": {
            "latencyMs": {"base": 1, "perItem": 0.5},
            "memoryMiB": {"weights": 100, "perItem": 2},
            "maxBatch": 32,
        },
    },
}


def test_every_manifest_installs_and_examples_apply(installed, namespace):
    assert EXAMPLES, "manifests/examples/ must ship InferenceModel files"
    for path in EXAMPLES:
        out = installed.run("apply", "-n", namespace, "-f", str(path)).stdout
        assert "created" in out or "configured" in out
    names = {i["metadata"]["name"] for i in installed.json("get", "im", "-n", namespace)["items"]}
    assert names == {yaml.safe_load(p.read_text())["metadata"]["name"] for p in EXAMPLES}
    # the kustomization's objects exist (stored and validated; no kubelet runs them)
    installed.run("get", "deployment/stowplan-operator", "-n", "stowplan-system")
    installed.run("get", "daemonset/stowplan-agent", "-n", "stowplan-system")


def test_kubectl_explain_describes_the_slo(installed):
    out = installed.run("explain", "inferencemodel.spec.slo").stdout
    assert "latencyMs" in out and "p99" in out and "targetQPS" in out


def _with(path: str, value: object) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(VALID))
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("spec.replicas", -1, "spec.replicas"),
        ("spec.slo.latencyMs", 0, "spec.slo.latencyMs"),
        ("spec.slo.latencyMs", -5, "spec.slo.latencyMs"),
        ("spec.batching", {"policy": "greedy"}, "spec.batching.policy"),
        ("spec.model.uri", "not a uri", "spec.model.uri"),
        ("spec.model.format", "tensorrt", "spec.model.format"),
        ("spec.profile.maxBatch", 0, "spec.profile.maxBatch"),
        ("spec.batching", {"policy": "static"}, "spec.batching.staticBatchSize"),
        ("spec.batching", {"policy": "static", "staticBatchSize": 64}, "staticBatchSize"),
        ("spec.slo.typo", 1, "typo"),
    ],
    ids=[
        "negative-replicas", "zero-slo", "negative-slo", "unknown-policy", "malformed-uri",
        "unknown-format", "zero-max-batch", "static-without-size", "static-over-max-batch",
        "unknown-field",
    ],
)  # fmt: skip
def test_invalid_spec_is_refused_naming_the_field(installed, namespace, path, value, field):
    doc = _with(path, value)
    proc = installed.run(
        "apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump(doc), check=False
    )
    assert proc.returncode != 0, proc.stdout
    assert field in proc.stderr, proc.stderr


def test_scale_subresource_changes_spec_replicas(installed, namespace):
    installed.run("apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump(VALID))
    installed.run("scale", "-n", namespace, "im/probe", "--replicas=3")
    assert installed.json("get", "-n", namespace, "im/probe")["spec"]["replicas"] == 3
    url = f"/apis/stowplan.io/v1alpha1/namespaces/{namespace}/inferencemodels/probe/scale"
    scale = json.loads(installed.run("get", "--raw", url).stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3
