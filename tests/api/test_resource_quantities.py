"""CPU / host-memory quantities: parsing, rounding, and the same accept/refuse set as the CRD."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from stowplan import api
from stowplan.api import crdgen, quantity

SPEC = {
    "model": {"uri": "file:///m/a.onnx"},
    "slo": {"latencyMs": 50, "targetQPS": 100},
    "profile": {
        "latencyMs": {"base": 1, "perItem": 0.5},
        "memoryMiB": {"weights": 100, "perItem": 1},
    },
}


@pytest.mark.parametrize(
    ("value", "milli"),
    [
        ("500m", 500),
        ("2", 2000),
        (2, 2000),
        ("1.5", 1500),
        ("0.1", 100),
        (".25", 250),
        ("+1", 1000),
        ("1k", 1_000_000),
        ("1e-3", 1),
        ("0.0001", 1),  # a tenth of a milli-CPU rounds UP to one
        ("100u", 1),
        ("0", 0),
        (0, 0),
        (None, 0),
    ],
)
def test_cpu_milli(value, milli):
    assert quantity.cpu_milli(value) == milli


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        ("512Mi", 512),
        ("4Gi", 4096),
        ("1G", 954),  # 10**9 bytes = 953.67 MiB, rounded up
        ("1M", 1),  # 0.95 MiB rounded up
        (1048576, 1),
        ("1048577", 2),
        ("1.5Gi", 1536),
        ("1Ti", 1024 * 1024),
        ("2e9", 1908),  # 1907.35 MiB rounded up
        ("500m", 1),  # half a byte (Kubernetes accepts it, so do we)
        (None, 0),
    ],
)
def test_memory_mib(value, mib):
    assert quantity.memory_mib(value) == mib


def test_allocatable_rounds_down_and_huge_values_are_clamped():
    assert quantity.memory_mib("1G", round_up=False) == 953
    assert quantity.cpu_milli("0.0001", round_up=False) == 0
    assert quantity.cpu_milli("1e300") == quantity.MAX_VALUE
    assert quantity.memory_mib("1e30", round_up=False) == quantity.MAX_VALUE


BAD = ["-1", "-500m", "lots", "1.5.2", "1 Gi", "1gi", "1ki", "Gi", "", "1e", "0x10", "1_000",
       "Infinity", "NaN", "1Mb", "1" * 65]  # fmt: skip


@pytest.mark.parametrize("value", [*BAD, -1, 1.5, True])
def test_bad_quantities_raise_value_error(value):
    with pytest.raises(ValueError):
        quantity.cpu_milli(value)
    with pytest.raises(ValueError):
        quantity.memory_mib(value)


def test_format_round_trips():
    for milli in (0, 1, 500, 1000, 1500, 64000):
        assert quantity.cpu_milli(quantity.format_cpu(milli)) == milli
    for mib in (0, 1, 512, 1024, 1536, 65536):
        assert quantity.memory_mib(quantity.format_memory(mib)) == mib
    assert quantity.format_cpu(2000) == "2" and quantity.format_memory(4096) == "4Gi"


def _spec(**requests):
    return api.InferenceModelSpec.model_validate({**SPEC, "resources": {"requests": requests}})


def test_spec_keeps_what_the_user_wrote():
    spec = _spec(cpu="500m", memory="4Gi")
    assert spec.resources.requests.cpu == "500m" and spec.resources.requests.memory == "4Gi"
    assert spec.wire()["resources"] == {"requests": {"cpu": "500m", "memory": "4Gi"}}
    assert _spec(cpu=2).resources.requests.cpu == 2
    absent = api.InferenceModelSpec.model_validate(SPEC).resources.requests
    assert absent.cpu is None and absent.memory is None


@pytest.mark.parametrize("value", [*BAD, -1, 1.5])
def test_spec_refuses_bad_quantities(value):
    with pytest.raises(ValidationError, match="cpu"):
        _spec(cpu=value)
    with pytest.raises(ValidationError, match="memory"):
        _spec(memory=value)


def test_requests_refuse_unknown_resources():
    with pytest.raises(ValidationError, match=r"nvidia\.com/gpu"):
        _spec(**{"nvidia.com/gpu": 1})


def test_crd_pattern_is_the_one_pydantic_applies():
    """The API server and pydantic must agree: an object the server stored always parses."""
    spec = crdgen.inferencemodel_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    requests = spec["properties"]["spec"]["properties"]["resources"]["properties"]["requests"]
    for field in ("cpu", "memory"):
        schema = requests["properties"][field]
        assert schema["x-kubernetes-int-or-string"] is True and "type" not in schema
        assert schema["pattern"] == quantity.QUANTITY_PATTERN
        assert schema["minimum"] == 0 and schema["maxLength"] == quantity.MAX_LENGTH
    server_accepts = re.compile(quantity.QUANTITY_PATTERN)
    for value in BAD:
        assert not (server_accepts.match(value) and len(value) <= quantity.MAX_LENGTH), value
    gn = crdgen.gpunode_crd()["spec"]["versions"][0]
    alloc = gn["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["allocatable"]
    assert alloc["properties"]["cpu"]["pattern"] == quantity.QUANTITY_PATTERN
    assert "CPU" in [c["name"] for c in gn["additionalPrinterColumns"]]
