"""HTTP boundary: the Open Inference Protocol (KServe v2) REST API on FastAPI, plus /metrics.

Routes: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models``
(stowplan extension: every model with state, qps, p99, batch cap), ``GET /v2/models/{name}``,
``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``, ``GET /metrics``.

Error mapping (the only place it happens): AgentError subclasses carry their status code;
malformed JSON and schema violations are 400; bodies over ``max_body_bytes`` are 413 (checked
from Content-Length and while streaming); anything unexpected is a 500 with a message, never a
dropped connection; unknown routes are 404 and wrong methods 405. Every error body, whatever
its status, is ``{"error": "..."}`` as the protocol asks.
Callers: ``stowplan up`` and ``python -m stowplan.agent``. Must not contain serving logic.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import stowplan
from stowplan.agent import protocol
from stowplan.agent.errors import AgentError
from stowplan.agent.metrics import CONTENT_TYPE
from stowplan.agent.serving import Agent, ModelState

log = logging.getLogger("stowplan.agent")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": protocol.ErrorBody, "description": "Malformed request"},
    404: {"model": protocol.ErrorBody, "description": "Unknown model"},
    413: {"model": protocol.ErrorBody, "description": "Body or batch too large"},
    503: {"model": protocol.ErrorBody, "description": "Model not ready or overloaded"},
}


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413 before parsing them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers", []))
        if scope.get("method") == "POST" and not any(
            k == b"content-type" and b"json" in v for k, v in headers
        ):
            # The protocol body is JSON whatever the client labels it (``curl -d`` sends
            # form encoding): parse it as JSON rather than refusing it.
            headers = [(k, v) for k, v in headers if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        for key, value in headers:
            if key == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _too_large(self.limit)(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"request body larger than {limit} bytes"}, status_code=413)


def create_app(agent: Agent) -> FastAPI:
    app = FastAPI(
        title="stowplan agent",
        version=stowplan.__version__,
        description="Open Inference Protocol (KServe v2) REST API served by the stowplan agent.",
    )
    app.add_middleware(BodyLimit, limit=agent.settings.max_body_bytes)

    @app.exception_handler(AgentError)
    async def _agent_error(request: Request, exc: AgentError) -> JSONResponse:
        # a 503 (shed or not ready) tells the client when to come back (RFC 9110 Retry-After)
        retry = getattr(exc, "retry_after_s", 1) if exc.status_code == 503 else None
        headers = {"Retry-After": str(retry)} if retry is not None else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes (404) and wrong methods (405) answer in the protocol's error shape too.
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} not allowed on {request.url.path}"
        return JSONResponse(
            {"error": detail}, status_code=exc.status_code, headers=exc.headers or None
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/v2/health/live", response_model=protocol.ServerLive, tags=["health"])
    async def live() -> protocol.ServerLive:
        return protocol.ServerLive(live=True)

    @app.get(
        "/v2/health/ready",
        response_model=protocol.ServerReady,
        tags=["health"],
        responses={503: {"model": protocol.ServerReady}},
    )
    async def ready() -> Response:
        ok = agent.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2", response_model=protocol.ServerMetadata, tags=["metadata"])
    async def server_metadata() -> protocol.ServerMetadata:
        return protocol.ServerMetadata(
            name="stowplan", version=stowplan.__version__, extensions=["model_index", "metrics"]
        )

    @app.get("/v2/models", response_model=protocol.ModelIndex, tags=["metadata"])
    async def model_index() -> protocol.ModelIndex:
        return protocol.ModelIndex(
            models=[protocol.ModelStatus(**r.model_dump()) for r in agent.model_reports()]
        )

    @app.get(
        "/v2/models/{name}",
        response_model=protocol.ModelMetadata,
        tags=["metadata"],
        responses=_ERRORS,
    )
    async def model_metadata(name: str) -> protocol.ModelMetadata:
        m = agent.get(name)
        rt = m.runtime
        return protocol.ModelMetadata(
            name=name,
            inputs=[protocol.TensorMetadata(**t.to_json()) for t in rt.inputs] if rt else [],
            outputs=[protocol.TensorMetadata(**t.to_json()) for t in rt.outputs] if rt else [],
            state=m.state.value,
            reason=m.reason,
        )

    @app.get(
        "/v2/models/{name}/ready",
        response_model=protocol.ModelReady,
        tags=["health"],
        responses={**_ERRORS, 503: {"model": protocol.ModelReady}},
    )
    async def model_ready(name: str) -> Response:
        ok = agent.get(name).state is ModelState.READY
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @app.post(
        "/v2/models/{name}/infer",
        response_model=protocol.InferenceResponse,
        tags=["inference"],
        responses=_ERRORS,
    )
    async def infer(name: str, request: protocol.InferenceRequest) -> protocol.InferenceResponse:
        return await agent.infer(name, request)

    @app.get("/metrics", tags=["metrics"], response_class=Response)
    async def metrics() -> Response:
        agent.device_samples()
        return Response(agent.metrics.render(), media_type=CONTENT_TYPE)

    return app
