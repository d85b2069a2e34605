"""The FHIR REST routes: one catch-all under ``/fhir`` that builds a FhirRequest and dispatches it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hub.api.auth import Authenticator
from hub.api.formats import FHIR_JSON, check_accept, check_content_type
from hub.errors import Category, FhirError
from hub.fhir import summary
from hub.interactions.request import FhirRequest, FhirResponse
from hub.interactions.router import FhirRouter
from hub.security.scopes import Permissions, Principal
from hub.settings import Settings

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def _render(resp: FhirResponse, fhir_req: FhirRequest | None, method: str) -> Response:
    body = resp.body
    if fhir_req is not None and body is not None and resp.status < 300:
        mode = fhir_req.param("_summary")
        elements = fhir_req.param("_elements")
        if resp.resource and resp.stored is not None and (mode is not None or elements is not None):
            try:
                wanted = tuple(e.strip() for e in elements.split(",") if e.strip()) if elements else None
                body = summary.subset(body, resp.stored.res_type, mode, wanted)
            except FhirError as err:
                return _render(FhirResponse.error(err), None, method)
        if fhir_req.param("_pretty") == "true":
            body = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    headers = dict(resp.headers)
    if method == "HEAD":
        body = None
    if body is None:
        return Response(status_code=resp.status, headers=headers, media_type=FHIR_JSON if resp.status != 204 and resp.status != 304 else None)
    return Response(content=body, status_code=resp.status, headers=headers, media_type=FHIR_JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (never buffered past it)."""
    def too_large() -> FhirError:
        return FhirError(Category.TOO_LARGE, "FHIRHUB-BODY-TOO-LARGE", f"The body exceeds {limit} bytes")

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


PUBLIC_PATHS = {"metadata"}  # the CapabilityStatement is how clients discover the server; it holds no PHI


def mount(app: FastAPI, router: FhirRouter, settings: Settings, authenticator: Authenticator) -> ThreadPoolExecutor:
    """Add the FHIR routes. Returns the thread pool the reads and searches run on (the caller shuts it down).

    Reads and searches run on a small ``ThreadPoolExecutor`` (``FHIRHUB_READ_THREADS``) through
    ``loop.run_in_executor``, not on Starlette's ``run_in_threadpool`` (anyio, 40 threads): their work is
    Python under one GIL, and 16 threads contending for it served a third fewer searches than 4, with a
    p99 four times longer (``Patient?identifier=`` at 16 clients on SQLite, one process: 250-260/s against
    400-420/s). PostgreSQL keeps more threads, to cover the waits on its round trips."""
    bases: dict[tuple[str, Any, str], str] = {}
    threads = settings.read_threads or (4 if settings.database_url.startswith("sqlite") else 8)
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fhir")

    def base_of(request: Request) -> str:
        """The FHIR base URL as the client addressed the server (cached per scheme, Host and root path)."""
        scope = request.scope
        key = (scope.get("scheme", "http"), next((v for k, v in scope["headers"] if k == b"host"), None), scope.get("root_path", ""))
        base = bases.get(key)
        if base is None:
            base = f"{str(request.base_url).rstrip('/')}/fhir"
            if len(bases) < 256:  # Host is client-chosen: bound the cache
                bases[key] = base
        return base

    async def handle(request: Request, path: str = "") -> Response:
        method = request.method
        base_url = settings.base_url or base_of(request)
        principal = Principal("anonymous", Permissions(), request.client.host if request.client else None)
        try:
            if path.strip("/") not in PUBLIC_PATHS:
                principal = authenticator.principal(request, base_url)
            params = parse_qsl(request.url.query, keep_blank_values=True)
            check_accept(dict(params).get("_format"), request.headers.get("accept"))
            body: Any = None
            if method in ("POST", "PUT", "PATCH"):
                raw = await read_body(request, settings.max_body_bytes)
                is_search = path.rstrip("/").endswith("_search")
                media = check_content_type(request.headers.get("content-type"), method, allow_form=is_search)
                if is_search:
                    if media == "application/x-www-form-urlencoded":
                        params += parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
                elif raw.strip():
                    try:
                        body = orjson.loads(raw)
                    except orjson.JSONDecodeError as exc:
                        raise FhirError(Category.INVALID, "FHIRHUB-PARSE-JSON", f"The body is not valid JSON (at byte {exc.pos})") from exc
                else:
                    raise FhirError(Category.INVALID, "FHIRHUB-BODY-EMPTY", "The request needs a body")
            fhir_req = FhirRequest(
                method=method,
                path=path,
                params=params,
                headers=dict(request.headers),  # Starlette gives the names in lower case
                body=body,
                base_url=base_url,
                principal=principal,
            )
        except FhirError as err:
            if err.category in (Category.UNAUTHORIZED, Category.TOO_MANY):
                if err.category is Category.TOO_MANY:  # authenticated, then throttled: the record names the client
                    principal = getattr(request.state, "principal", principal)
                router.audit_later(FhirRequest(method, path, principal=principal), None, err.http_status, err.code)
            return _render(FhirResponse.error(err), None, method)
        if router.is_quick(method, path):
            resp = router.dispatch(fhir_req)
        elif method != "GET" and router.is_write(fhir_req):
            resp = await router.dispatch_write(fhir_req)
        else:
            resp = await asyncio.get_running_loop().run_in_executor(executor, router.dispatch, fhir_req)
        return _render(resp, fhir_req, method)

    async def endpoint(request: Request) -> Response:
        return await handle(request, request.path_params.get("path", ""))

    # Plain Starlette routes: FastAPI's dependency solving and validation cost more than a read. They are what
    # the route table shows (tests/security/test_routes.py walks it); FhirEdge takes their requests first.
    catch_all = [Route("/fhir", endpoint, methods=METHODS), Route("/fhir/{path:path}", endpoint, methods=METHODS)]
    app.router.routes.extend(catch_all)
    app.add_middleware(FhirEdge, handle=handle, routes=app.router.routes, catch_all=catch_all[0])
    return executor


class FhirEdge:
    """ASGI middleware, the innermost: a request for ``/fhir`` or ``/fhir/…`` with a FHIR method goes straight
    to the FHIR handler, past the framework's exception middleware, exit stack and router, which would only
    find the same route (5-7 % of the CPU of a read or a search). It stays inside the security headers and
    CORS. Routes under ``/fhir`` that come before the catch-all (SMART discovery) keep theirs, and anything
    else goes on to the app (other methods get the router's 405)."""

    def __init__(self, app: ASGIApp, handle: Callable[[Request, str], Awaitable[Response]], routes: list[Any],
                 catch_all: Route) -> None:
        self.app = app
        self.handle = handle
        self.methods = frozenset(METHODS)
        self._routes = routes
        self._catch_all = catch_all
        self._before: list[Any] | None = None  # path patterns of the routes under /fhir ahead of the catch-all

    def _reserved(self, path: str) -> bool:
        if self._before is None:
            ahead = self._routes[: self._routes.index(self._catch_all)] if self._catch_all in self._routes else []
            self._before = [r.path_regex for r in ahead if getattr(r, "path", "").startswith("/fhir")]
        return any(regex.match(path) for regex in self._before)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self.methods:
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            if (path == "/fhir" or path.startswith("/fhir/")) and not self._reserved(path):
                response = await self.handle(Request(scope, receive), path[6:])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
