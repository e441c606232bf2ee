"""Generate the CustomResourceDefinitions from the pydantic API types.

The types are the source of truth; ``stowplan crds`` writes the output of :func:`all_crds` to
``crds/`` and a test fails when the checked-in YAML drifts from it. The conversion turns
pydantic's JSON Schema into a Kubernetes *structural* OpenAPI v3 schema: ``$ref`` inlined,
``anyOf [X, null]`` turned into ``nullable``, ``additionalProperties: false`` dropped (the API
server prunes or, with kubectl's strict field validation, refuses unknown fields), exclusive
bounds rewritten in OpenAPI 3.0 form, and list-map markers added so server-side apply merges
lists by key. Pure: returns dicts, no I/O.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from stowplan.api import gpunode, inferencemodel
from stowplan.api.meta import WireModel

Schema = dict[str, Any]

# lists keyed by these fields merge by key under server-side apply
_LIST_MAP_KEYS: dict[str, list[str]] = {
    "conditions": ["type"],
    "placements": ["replica"],
    "unplaced": ["replica"],
    "assignments": ["model", "replica"],
    "gpus": ["index"],
    "models": ["model", "replica"],
}


def structural_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of ``model`` as wire JSON (aliases)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Schema] = raw.pop("$defs", {})
    return _convert(raw, defs)


def _convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**target, **node}  # the field's own description wins over the class's
        return _convert(merged, defs)
    if node.get("x-kubernetes-int-or-string"):
        # int-or-string: the one anyOf a structural schema allows (kubectl explain shows it)
        return {k: v for k, v in node.items() if k != "title" and (k, v) != ("default", None)}
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        return _convert({**inner, **node}, defs)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf with {len(options)} options structurally")
        return {**_convert({**options[0], **node}, defs), "nullable": True}
    out: Schema = {}
    for key, value in node.items():
        if key == "title" or (key == "additionalProperties" and not isinstance(value, dict)):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {
                name: _with_list_map(name, _convert(prop, defs)) for name, prop in value.items()
            }
        elif key in {"items", "additionalProperties"}:
            out[key] = _convert(value, defs)
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "integer"
    return out


def _with_list_map(name: str, prop: Schema) -> Schema:
    keys = _LIST_MAP_KEYS.get(name)
    if prop.get("type") != "array" or keys is None:
        return prop
    items = prop.get("items", {})
    if items.get("type") != "object" or not set(keys) <= set(items.get("properties", {})):
        return prop
    required = sorted(set(items.get("required", [])) | set(keys))
    # list-map keys must be required or defaulted
    return {
        **prop,
        "items": {**items, "required": required},
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": keys,
    }


def _root_schema(
    resource: type[WireModel], spec: type[WireModel], status: type[WireModel]
) -> Schema:
    status_schema = structural_schema(status)
    # kopf keeps its own bookkeeping under status.kopf; an unknown-fields-preserving status
    # keeps it from being pruned by the API server.
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    return {
        "type": "object",
        "description": (resource.__doc__ or "").strip(),
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": structural_schema(spec),
            "status": status_schema,
        },
        "required": ["spec"],
    }


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: tuple[str, ...],
    scope: str,
    schema: Schema,
    columns: list[Schema],
    subresources: Schema,
) -> dict[str, Any]:
    group = inferencemodel.GROUP
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            "labels": {"app.kubernetes.io/part-of": "stowplan"},
        },
        "spec": {
            "group": group,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": ["stowplan"],
            },
            "versions": [
                {
                    "name": inferencemodel.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def inferencemodel_crd() -> dict[str, Any]:
    im = inferencemodel
    return _crd(
        kind=im.KIND,
        plural=im.PLURAL,
        singular=im.SINGULAR,
        short_names=im.SHORT_NAMES,
        scope="Namespaced",
        schema=_root_schema(im.InferenceModel, im.InferenceModelSpec, im.InferenceModelStatus),
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        columns=[
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {
                "name": "Placed",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Placed")].status',
            },
            {"name": "P99-ms", "type": "number", "jsonPath": ".status.observed.p99Ms"},
            {"name": "SLO-ms", "type": "number", "jsonPath": ".spec.slo.latencyMs"},
            {"name": "Batch", "type": "integer", "jsonPath": ".status.capacity.batchSize"},
            {"name": "URL", "type": "string", "jsonPath": ".status.url"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def gpunode_crd() -> dict[str, Any]:
    gn = gpunode
    return _crd(
        kind=gn.KIND,
        plural=gn.PLURAL,
        singular=gn.SINGULAR,
        short_names=gn.SHORT_NAMES,
        scope="Cluster",
        schema=_root_schema(gn.GPUNode, gn.GPUNodeSpec, gn.GPUNodeStatus),
        subresources={"status": {}},
        columns=[
            {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpuCount"},
            {"name": "Ready-Models", "type": "integer", "jsonPath": ".status.readyModels"},
            {"name": "CPU", "type": "string", "jsonPath": ".status.allocatable.cpu"},
            {"name": "Memory", "type": "string", "jsonPath": ".status.allocatable.memory"},
            {"name": "Heartbeat", "type": "date", "jsonPath": ".status.heartbeat"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name under ``crds/`` → CRD object."""
    crds = [inferencemodel_crd(), gpunode_crd()]
    return {f"{crd['metadata']['name']}.yaml": crd for crd in crds}
