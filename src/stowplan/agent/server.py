"""HTTP boundary: the Open Inference Protocol (KServe v2) REST API on FastAPI, plus /metrics.

Routes: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models``
(stowplan extension: every model with state, qps, p99, batch cap), ``GET /v2/models/{name}``,
``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``, ``GET /metrics``; the
model routes also under ``/v2/models/{name}/versions/1/...``. Triton-only routes that
Triton's clients call (:mod:`stowplan.agent.tritonapi`): ``GET /v2/models/{name}/config``,
``POST /v2/repository/index``, ``GET /v2/models/stats``, ``GET /v2/models/{name}/stats``;
``POST /v2/repository/models/{name}/load|unload`` answer 400 (no model control). A model's
``{name}`` is its served name (``namespace.name`` on a cluster node) or, when exactly one model
served here has it, its bare name (what its Service's ``status.url`` uses); a bare name that
two namespaces' models share here is a 400 naming both
(:meth:`stowplan.agent.registry.ModelRegistry.get`). Answers name the model as asked.

Inference requests (``POST`` on the two ``.../infer`` routes) are answered by
:class:`FastInfer`, ahead of the whole app (:class:`AgentApp` calls it before FastAPI's
telemetry and Starlette's error middleware, routing and request machinery, which cost about
0.2 ms a request on the 2-core machine); the FastAPI route stays for the
OpenAPI schema, with the same answers and error bodies. Bodies are read raw: with an
``Inference-Header-Content-Length`` header the body is that many bytes of JSON followed by
the inputs' raw tensors (the binary tensor data extension); without it the body is JSON.
``Content-Encoding: gzip|deflate`` bodies are inflated (up to the body limit). Responses
carry outputs as JSON data, or after the JSON header as raw bytes when the request asks for
them binary (``parameters.binary_data_output``, or an output's ``parameters.binary_data``),
with ``Inference-Header-Content-Length`` set.

Admission: an inference request past the agent's in-flight bound (``max_inflight_requests``,
``max_inflight_bytes``; :mod:`stowplan.agent.admission`) is answered 503 with ``Retry-After``
before its body is read, counted as ``stowplan_requests_refused_total{reason="admission"}``.

Error mapping (the only place it happens): AgentError subclasses carry their status code;
malformed JSON and schema violations are 400; bodies over ``max_body_bytes`` are 413 (checked
from Content-Length and while streaming); anything unexpected is a 500 with a message, never a
dropped connection; unknown routes are 404 and wrong methods 405. Every error body, whatever
its status, is ``{"error": "..."}`` as the protocol asks.
Callers: ``stowplan up`` and ``python -m stowplan.agent``. Must not contain serving logic.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import stowplan
from stowplan.agent import protocol, tensors, tritonapi
from stowplan.agent.errors import AgentError, InvalidRequest, PayloadTooLarge
from stowplan.agent.metrics import CONTENT_TYPE
from stowplan.agent.registry import ModelState
from stowplan.agent.serving import Agent

#: the binary tensor data extension's header: bytes of JSON at the start of the body
HEADER_LENGTH = "Inference-Header-Content-Length"
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower()
_HEADER_LENGTH_BYTES = _HEADER_LENGTH_KEY.encode()

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


def _declared(content_length: bytes | None) -> int:
    """The body bytes a ``Content-Length`` header announces (0: none, or not a number: the body
    is then counted as it arrives)."""
    try:
        return max(int(content_length), 0) if content_length is not None else 0
    except ValueError:
        return 0


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"request body larger than {limit} bytes"}, status_code=413)


def _validation_message(errors: Sequence[Any]) -> str:
    parts = []
    for err in list(errors)[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidRequest(
            f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)"
        )
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"request body larger than {limit} bytes once inflated")
    return out


def parse_infer_body(
    body: bytes, header_length: str | None
) -> tuple[protocol.InferenceRequest, dict[str, memoryview] | None]:
    """(request, binary inputs by name) from an inference body; ``header_length`` is the
    ``Inference-Header-Content-Length`` header (None: the whole body is JSON)."""
    tail: memoryview | None = None
    head = body
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidRequest(
                f"{HEADER_LENGTH} must be a byte count, got {header_length!r}"
            ) from None
        if not 0 <= n <= len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
        view = memoryview(body)
        head, tail = body[:n], view[n:]
    try:
        request = protocol.InferenceRequest.model_validate_json(head)
    except ValidationError as exc:
        msg = _validation_message(exc.errors())
        if tail is None and any(e.get("type") == "json_invalid" for e in exc.errors()):
            msg += f" (a body with binary tensors needs the {HEADER_LENGTH} header)"
        raise InvalidRequest(msg) from None
    if tail is None:
        for t in request.inputs:
            if t.parameters and "binary_data_size" in t.parameters:
                raise InvalidRequest(
                    f"input {t.name!r} has parameters.binary_data_size but the request has no "
                    f"{HEADER_LENGTH} header saying where its JSON ends"
                )
        return request, None
    return request, tensors.split_binary_inputs(request.inputs, tail)


async def answer_infer(
    agent: Agent,
    name: str,
    body: bytes,
    encoding: str | None,
    header_length: str | None,
) -> tuple[bytes, int | None]:
    """(response body, its JSON header length or None) of one inference request's ``body``
    with its ``Content-Encoding`` and ``Inference-Header-Content-Length`` headers (None: not
    sent); AgentError for every refusal. Shared by :class:`FastInfer` and the FastAPI route."""
    if encoding:
        body = _inflate(body, encoding.strip().lower(), agent.settings.max_body_bytes)
    parsed, raw = parse_infer_body(body, header_length)
    binary = tensors.wants_binary(parsed.outputs, parsed.parameters)
    prediction = await agent.predict(name, parsed, raw)
    return tensors.encode_response(name, parsed.id, prediction.outputs, prediction.names, binary)


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model name, version or None) when ``path`` is an inference route
    (``/v2/models/{name}/infer`` or ``/v2/models/{name}/versions/{version}/infer``, each
    segment non-empty, as Starlette's ``{name}`` matches); None otherwise."""
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path[11:-6].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def error_response(exc: Exception) -> JSONResponse:
    """The protocol's error body for ``exc``: an AgentError's status and message (a 503 with
    ``Retry-After``, RFC 9110), anything else a logged 500 naming its type."""
    if isinstance(exc, AgentError):
        retry = getattr(exc, "retry_after_s", 1) if exc.status_code == 503 else None
        headers = {"Retry-After": str(retry)} if retry is not None else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


class FastInfer:
    """ASGI middleware: answers ``POST`` on the inference routes itself, before Starlette's
    routing, FastAPI's request machinery and :class:`BodyLimit` (which it does the work of:
    413 from Content-Length and while reading); every other request goes on to the app.
    Each request first passes the agent's admission bound (:mod:`stowplan.agent.admission`):
    past it, a 503 with ``Retry-After`` before the body is read.
    Answers and error bodies are the FastAPI route's, byte for byte (the same
    :func:`answer_infer` and :func:`error_response`)."""

    def __init__(self, app: ASGIApp, agent: Agent) -> None:
        self.app = app
        self.agent = agent
        self.limit = agent.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = (
            infer_target(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path")
            else None
        )
        if target is None:
            await self.app(scope, receive, send)
            return
        name, version = target
        length = encoding = header_length = None
        for key, value in scope["headers"]:
            if key == b"content-length" and length is None:
                length = value
            elif key == b"content-encoding" and encoding is None:
                encoding = value.decode("latin-1")
            elif key == _HEADER_LENGTH_BYTES and header_length is None:
                header_length = value.decode("latin-1")
        # admission (stowplan.agent.admission): refused before the body is read
        admission = self.agent.admission
        counted = _declared(length)
        if not admission.enter(counted):
            refusal = admission.refusal()
            self.agent.metrics.observe_refusal("", refusal.reason)
            await error_response(refusal)(scope, receive, send)
            return
        try:
            try:
                if counted > self.limit:  # from Content-Length (_declared)
                    raise _BodyTooLarge
                body = await self._body(receive)
                if body is None:  # the client left
                    return
                if length is None:  # chunked: counted once read
                    admission.grow(len(body))
                    counted += len(body)
                if version is not None:
                    tritonapi.check_version(name, version)
                content, json_length = await answer_infer(
                    self.agent, name, body, encoding, header_length
                )
            except _BodyTooLarge:
                await _too_large(self.limit)(scope, receive, send)
                return
            except Exception as exc:
                if not isinstance(exc, AgentError):
                    log.exception("unexpected error on %s", scope["path"])
                await error_response(exc)(scope, receive, send)
                return
            headers = [(b"content-length", str(len(content)).encode())]
            if json_length is None:
                headers.append((b"content-type", b"application/json"))
            else:
                headers.append((b"content-type", b"application/octet-stream"))
                headers.append((_HEADER_LENGTH_BYTES, str(json_length).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        finally:
            admission.leave(counted)

    async def _body(self, receive: Receive) -> bytes | None:
        """The whole body (None when the client disconnected first); _BodyTooLarge past the
        limit."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _infer_openapi() -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "parameters": [
            {
                "name": HEADER_LENGTH,
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "Binary tensor data extension: the body's first N bytes are "
                "the JSON request, the rest the inputs with parameters.binary_data_size.",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                "application/octet-stream": binary,
            },
        },
        "responses": {"200": {"content": {"application/octet-stream": binary}}},
    }


class AgentApp(FastAPI):
    """The agent's FastAPI app with :class:`FastInfer` in front of it: ``POST`` on the
    inference routes goes to ``fast`` (when set) before FastAPI's own ``__call__`` (its
    telemetry's per-request environment look-ups) and Starlette's (its error middleware and
    routing), about 25 µs a request on the 2-core machine; everything else, and every
    inference request that ``fast`` does not take, goes through them as usual."""

    fast: FastInfer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if fast is not None and scope["type"] == "http":
            await fast(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app without :class:`FastInfer` (what ``fast`` hands the other requests)."""
        await super().__call__(scope, receive, send)


def create_app(agent: Agent, fast_infer: bool = True) -> AgentApp:
    """The agent's FastAPI app. With ``fast_infer`` (the default) :class:`FastInfer` answers
    inference requests ahead of the whole app, outside Starlette's error middleware and
    FastAPI's telemetry (it answers every error itself); without it the FastAPI route answers
    them (the same bytes, slower)."""
    app = AgentApp(
        title="stowplan agent",
        version=stowplan.__version__,
        description="Open Inference Protocol (KServe v2) REST API served by the stowplan agent.",
    )
    app.add_middleware(BodyLimit, limit=agent.settings.max_body_bytes)
    if fast_infer:
        app.fast = FastInfer(app.stack, agent)

    @app.exception_handler(AgentError)
    async def _agent_error(request: Request, exc: AgentError) -> JSONResponse:
        # a 503 (shed or not ready) tells the client when to come back (RFC 9110 Retry-After)
        return error_response(exc)

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
        return JSONResponse({"error": _validation_message(exc.errors())}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(exc)

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
            name="stowplan",
            version=stowplan.__version__,
            extensions=[
                "binary_tensor_data",
                "model_configuration",
                "statistics",
                "model_index",
                "metrics",
            ],
        )

    @app.get("/v2/models", response_model=protocol.ModelIndex, tags=["metadata"])
    async def model_index() -> protocol.ModelIndex:
        return protocol.ModelIndex(
            models=[protocol.ModelStatus(**r.model_dump()) for r in agent.model_reports()]
        )

    @app.get(
        "/v2/models/stats",
        response_model=protocol.InferenceStatistics,
        tags=["triton"],
    )
    async def all_statistics() -> protocol.InferenceStatistics:
        return tritonapi.statistics(agent, None)

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

    async def model_ready(name: str) -> Response:
        ok = agent.get(name).state is ModelState.READY
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def infer(name: str, request: Request) -> Response:
        # Served by FastInfer before it gets here; kept for the OpenAPI schema and for an app
        # mounted without that middleware.
        headers = request.headers
        content, header_length = await answer_infer(
            agent,
            name,
            await request.body(),
            headers.get("content-encoding"),
            headers.get(_HEADER_LENGTH_KEY),
        )
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(header_length)},
        )

    async def model_config(name: str) -> protocol.ModelConfigResponse:
        return tritonapi.model_config(agent.get(name), name)

    async def model_statistics(name: str) -> protocol.InferenceStatistics:
        return tritonapi.statistics(agent, name)

    # Every model route twice: /v2/models/{name}/... and /v2/models/{name}/versions/{v}/...
    # (only version 1 exists; another is a 404 naming it).
    ready_responses = {**_ERRORS, 503: {"model": protocol.ModelReady}}
    routes: list[tuple[str, str, Any, Any, dict[Any, Any], str, dict[str, Any] | None]] = [
        ("GET", "", model_metadata, protocol.ModelMetadata, _ERRORS, "metadata", None),
        ("GET", "/ready", model_ready, protocol.ModelReady, ready_responses, "health", None),
        (
            "POST",
            "/infer",
            infer,
            protocol.InferenceResponse,
            _ERRORS,
            "inference",
            _infer_openapi(),
        ),
        ("GET", "/config", model_config, protocol.ModelConfigResponse, _ERRORS, "triton", None),
        ("GET", "/stats", model_statistics, protocol.InferenceStatistics, _ERRORS, "triton", None),
    ]
    for method, suffix, handler, model, responses, tag, extra in routes:
        app.add_api_route(
            "/v2/models/{name}" + suffix,
            handler,
            methods=[method],
            response_model=model,
            responses=responses,
            tags=[tag],
            openapi_extra=extra,
        )
        app.add_api_route(
            "/v2/models/{name}/versions/{version}" + suffix,
            _versioned(handler),
            methods=[method],
            response_model=model,
            responses=responses,
            tags=[tag],
            openapi_extra=extra,
            name=f"{handler.__name__}_versioned",
        )

    @app.post(
        "/v2/repository/index",
        response_model=list[protocol.RepositoryModel],
        tags=["triton"],
        responses=_ERRORS,
    )
    async def repository_index(request: Request) -> list[protocol.RepositoryModel]:
        body = await request.body()
        ready_only = False
        if body.strip():
            try:
                ask = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise InvalidRequest(
                    'repository index body must be JSON, e.g. {"ready": true}'
                ) from None
            if not isinstance(ask, dict) or not isinstance(ask.get("ready", False), bool):
                raise InvalidRequest('repository index body must be {"ready": true|false}')
            ready_only = bool(ask.get("ready", False))
        return tritonapi.repository_index(agent, ready_only)

    @app.post(
        "/v2/repository/models/{name}/load",
        tags=["triton"],
        responses={400: {"model": protocol.ErrorBody, "description": "No model control"}},
    )
    async def load_model(name: str) -> None:
        raise tritonapi.refuse_model_control(name, "load")

    @app.post(
        "/v2/repository/models/{name}/unload",
        tags=["triton"],
        responses={400: {"model": protocol.ErrorBody, "description": "No model control"}},
    )
    async def unload_model(name: str) -> None:
        raise tritonapi.refuse_model_control(name, "unload")

    @app.get("/metrics", tags=["metrics"], response_class=Response)
    async def metrics() -> Response:
        agent.device_samples()
        return Response(agent.metrics.render(), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        # The inference route reads its body raw (binary extension), so FastAPI does not see
        # the JSON request's schema: add it to the components the route refers to.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            request_schema = protocol.InferenceRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["InferenceRequest"] = request_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _versioned(handler: Any) -> Any:
    """The same route handler under ``/versions/{version}``, checking the version first."""
    import functools
    import inspect

    @functools.wraps(handler)
    async def route(*, version: str, **kwargs: Any) -> Any:
        tritonapi.check_version(kwargs["name"], version)
        return await handler(**kwargs)

    sig = inspect.signature(handler)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()]
    params.append(inspect.Parameter("version", inspect.Parameter.KEYWORD_ONLY, annotation=str))
    route.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return route
