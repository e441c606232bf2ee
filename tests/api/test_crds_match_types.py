"""The checked-in CRDs are exactly what the API types generate, and they are structural."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stowplan.api import crdgen
from stowplan.commands import crds as crds_command

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(crdgen.all_crds()))
def test_checked_in_yaml_matches_the_types(name):
    path = REPO / "crds" / name
    assert path.exists(), f"run `stowplan crds` to create {path}"
    assert path.read_text() == crds_command.render(crdgen.all_crds()[name]), (
        f"{path} drifted from src/stowplan/api; run `stowplan crds`"
    )


def _walk(node, path="$"):
    yield path, node
    for key, value in node.get("properties", {}).items():
        yield from _walk(value, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", sorted(crdgen.all_crds()))
def test_schema_is_structural_and_documented(name):
    crd = yaml.safe_load((REPO / "crds" / name).read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "allOf" not in node, path
        # the one anyOf allowed: int-or-string (what controller-gen emits for quantities)
        assert "anyOf" not in node or node.get("x-kubernetes-int-or-string"), path
        assert (
            "type" in node
            or node.get("x-kubernetes-preserve-unknown-fields")
            or node.get("x-kubernetes-int-or-string")  # quantities: 2 or "500m"
        ), path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node and "pattern" in node, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        assert node.get("additionalProperties") is not False, path
    spec = schema["properties"]["spec"]
    undocumented = [p for p, n in _walk(spec) if "description" not in n and not p.endswith("{}")]
    assert undocumented == [], undocumented
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_inferencemodel_has_scale_subresource_and_printer_columns():
    crd = crdgen.inferencemodel_crd()
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:3] == ["Replicas", "Ready", "Placed"]
    assert crd["spec"]["names"]["shortNames"] == ["im"]
