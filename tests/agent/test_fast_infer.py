"""The inference routes answered by :class:`stowplan.agent.server.FastInfer` (before Starlette's
routing) and by the FastAPI route it shadows give the same status, body and protocol headers,
for answers and for every kind of refusal; and requests it does not own reach the app."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from stowplan.agent.server import AgentApp, FastInfer, create_app, infer_target
from stowplan.agent.serving import Agent
from stowplan.testing.agent import mlp_request

H = "Inference-Header-Content-Length"


def _binary(rows: int = 2, **head: Any) -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(1).standard_normal((rows, 64)).astype("<f4")
    raw = x.tobytes()
    js = json.dumps(
        {
            "id": "f1",
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            **head,
        }
    ).encode()
    return js + raw, {H: str(len(js)), "content-type": "application/octet-stream"}


@pytest.fixture
def both(agent: Agent) -> Iterator[tuple[TestClient, TestClient]]:
    fast = create_app(agent)
    plain = create_app(agent, fast_infer=False)
    with TestClient(fast) as a, TestClient(plain) as b:
        yield a, b


def _cases() -> list[tuple[str, str, bytes, dict[str, str]]]:
    ok = json.dumps(mlp_request(rows=3)).encode()
    binary, bh = _binary(parameters={"binary_data_output": True})
    cases = [
        ("json", "/v2/models/mlp/infer", ok, {}),
        ("binary", "/v2/models/mlp/infer", binary, bh),
        ("versioned", "/v2/models/mlp/versions/1/infer", ok, {}),
        ("gzip", "/v2/models/mlp/infer", gzip.compress(ok), {"content-encoding": "gzip"}),
        ("bad version", "/v2/models/mlp/versions/7/infer", ok, {}),
        ("unknown model", "/v2/models/nope/infer", ok, {}),
        ("failed model", "/v2/models/broken/infer", ok, {}),
        ("bad json", "/v2/models/mlp/infer", b"{not json", {}),
        ("bad header length", "/v2/models/mlp/infer", binary, {**bh, H: "x"}),
        ("bad encoding", "/v2/models/mlp/infer", ok, {"content-encoding": "br"}),
        ("too large", "/v2/models/mlp/infer", b" " * (70 * 1024), {}),
        ("wrong shape", "/v2/models/mlp/infer", _binary(rows=2)[0][:-4], bh),
    ]
    return cases


@pytest.mark.parametrize(("case", "path", "body", "headers"), _cases(), ids=lambda v: str(v)[:20])
def test_fast_route_answers_as_the_fastapi_route(
    both: tuple[TestClient, TestClient],
    case: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> None:
    fast, plain = both
    a = fast.post(path, content=body, headers=headers)
    b = plain.post(path, content=body, headers=headers)
    assert (a.status_code, a.content) == (b.status_code, b.content), case
    for key in ("content-type", "content-length", H.lower(), "retry-after"):
        assert a.headers.get(key) == b.headers.get(key), (case, key)
    if a.status_code >= 400:
        assert set(a.json()) == {"error"}


def test_requests_the_fast_route_does_not_own_reach_the_app(
    both: tuple[TestClient, TestClient],
) -> None:
    fast, _ = both
    assert fast.get("/v2/models/mlp/infer").status_code == 405  # a wrong method: FastAPI's
    slash = fast.post("/v2/models/mlp/infer/", follow_redirects=False)
    assert slash.status_code == 307  # Starlette's redirect to the route without the slash
    assert fast.get("/v2/health/live").json() == {"live": True}
    missing = fast.post("/v2/models//infer", content=b"{}")
    assert missing.status_code == 404 and "error" in missing.json()


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/v2/models/mlp/infer", ("mlp", None)),
        ("/v2/models/ns.mlp/versions/1/infer", ("ns.mlp", "1")),
        ("/v2/models//infer", None),
        ("/v2/models/a/b/infer", None),
        ("/v2/models/a/versions//infer", None),
        ("/v2/models/mlp/ready", None),
        ("/v2/models/infer", None),
    ],
)
def test_infer_target_matches_what_starlette_routes(
    path: str, want: tuple[str, str | None] | None
) -> None:
    assert infer_target(path) == want


def test_the_fast_route_is_ahead_of_the_whole_app(both: tuple[TestClient, TestClient]) -> None:
    """FastInfer answers ahead of FastAPI's own ``__call__`` (its telemetry) and Starlette's
    stack (its error middleware, routing); the plain app has it nowhere in its stack."""
    fast, plain = both
    fast.get("/v2/health/live")
    plain.get("/v2/health/live")
    assert isinstance(fast.app, AgentApp) and isinstance(fast.app.fast, FastInfer)
    assert fast.app.fast.app == fast.app.stack  # what it does not take goes to the whole app
    assert isinstance(plain.app, AgentApp) and plain.app.fast is None
    layer: object = plain.app.middleware_stack
    while layer is not None:
        assert not isinstance(layer, FastInfer)
        layer = getattr(layer, "app", None)
