"""HTTP routes of the sync connectors.

* ``/admin/connectors…`` — status, dead letters, replay, pull or push now. A bearer token with the
  ``fhirhub/admin`` scope (``Permissions.admin``) is required, as for all administration.
* ``POST /sync/{name}/notify`` — the rest-hook endpoint an EHR's Subscription posts to. The EHR
  authenticates with the connector's notification token (``notifications.token`` in the connector
  file), sent as ``Authorization: Bearer <token>`` through ``Subscription.channel.header``: R4
  rest-hooks can only send fixed headers, so a per-connector shared secret, compared in constant
  time, is what every EHR can do. Without it (or for a connector without a token) the answer is 401.
  The hub answers 202 at once and fetches the named resources from the EHR (an empty notification
  pulls every type now).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hub.errors import FhirError, operation_outcome
from hub.errors import Issue as OutcomeIssue
from hub.security.audit import AuditRecord
from hub.sync import mapping, store
from hub.sync.config import POLICIES, ConnectorConfig, ConnectorConfigError, load_dir
from hub.sync.status import connector_status

if TYPE_CHECKING:
    from hub.api.auth import Authenticator
    from hub.app import Hub
    from hub.sync.service import SyncService

MAX_NOTIFICATION_BYTES = 1024 * 1024


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    issue_code = {401: "login", 403: "forbidden", 404: "not-found", 409: "conflict", 413: "too-costly"}.get(status, "invalid")
    body = operation_outcome([OutcomeIssue("error", issue_code, message)], code=code)
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/fhir+json")


def notification_refs(body: Any, base: str) -> list[tuple[str, str]]:
    """The resources a rest-hook notification names: an R4 resource (full-resource payload), or a
    Subscriptions Backport notification Bundle (``Parameters``/``SubscriptionStatus`` focus references
    and the resources it carries). An empty notification names none."""
    out: list[tuple[str, str]] = []

    def add(value: Any) -> None:
        if isinstance(value, str):
            ref = mapping.split_reference(value, base)
            if ref is not None and ref not in out:
                out.append(ref)

    if not isinstance(body, dict):
        return out
    if body.get("resourceType") == "Bundle":
        for entry in body.get("entry") or []:
            if not isinstance(entry, dict):
                continue
            res = entry.get("resource")
            if isinstance(res, dict) and res.get("resourceType") == "SubscriptionStatus":
                for event in res.get("notificationEvent") or []:
                    add(((event or {}).get("focus") or {}).get("reference"))
            elif isinstance(res, dict) and res.get("resourceType") == "Parameters":
                for param in res.get("parameter") or []:
                    if (param or {}).get("name") == "notification-event":
                        for part in param.get("part") or []:
                            if (part or {}).get("name") == "focus":
                                add((part.get("valueReference") or {}).get("reference"))
            elif isinstance(res, dict) and isinstance(res.get("id"), str):
                add(f"{res.get('resourceType')}/{res['id']}")
            elif isinstance(entry.get("fullUrl"), str):
                add(entry["fullUrl"])
    elif isinstance(body.get("resourceType"), str) and isinstance(body.get("id"), str):
        add(f"{body['resourceType']}/{body['id']}")
    return out


def mount(app: FastAPI, hub: Hub, authenticator: Authenticator) -> None:
    from hub.sync.service import find

    settings = hub.settings
    background: set[asyncio.Task[Any]] = set()

    def service() -> SyncService | None:
        return find(hub)

    def all_configs() -> list[ConnectorConfig]:
        running = service()
        if running is not None:
            return [c.cfg for c in running.connectors.values()]
        try:
            return load_dir(settings.sync_connectors_dir, None, enabled_only=False)
        except ConnectorConfigError:
            return []

    def config(name: str) -> ConnectorConfig | None:
        return next((c for c in all_configs() if c.name == name), None)

    def admin(request: Request) -> JSONResponse | None:
        base = settings.base_url or f"{str(request.base_url).rstrip('/')}/fhir"
        try:
            principal = authenticator.principal(request, base)
        except FhirError as err:
            if hub.ctx.audit is not None:
                hub.ctx.audit.enqueue(AuditRecord("authorize", 4, None, request.client.host if request.client else None,
                                                  query=request.url.path, detail=err.code))
            return JSONResponse(err.outcome(), status_code=err.http_status, headers=err.headers, media_type="application/fhir+json")
        if not principal.permissions.admin:
            return _error(403, "FHIRHUB-AUTH-SCOPE", "Connector administration needs the fhirhub/admin scope")
        return None

    async def list_connectors(request: Request) -> Response:
        if (denied := admin(request)) is not None:
            return denied
        running = service()
        names = set(running.connectors) if running else set()
        found = [await run_in_threadpool(connector_status, hub.ctx.db, c, c.name in names) for c in all_configs()]
        return JSONResponse({"connectors": found})

    async def one(request: Request, name: str) -> Response:
        if (denied := admin(request)) is not None:
            return denied
        cfg = config(name)
        if cfg is None:
            return _error(404, "FHIRHUB-SYNC-UNKNOWN-CONNECTOR", f"No connector named {name}")
        running = service()
        return JSONResponse(await run_in_threadpool(connector_status, hub.ctx.db, cfg,
                                                    running is not None and name in running.connectors))

    async def dead_letters(request: Request, name: str) -> Response:
        if (denied := admin(request)) is not None:
            return denied
        if config(name) is None:
            return _error(404, "FHIRHUB-SYNC-UNKNOWN-CONNECTOR", f"No connector named {name}")
        statuses = tuple(request.query_params.getlist("status")) or ("dead", "replay")

        def read() -> list[dict[str, Any]]:
            with hub.ctx.db.read() as conn:
                return [d.to_json() for d in store.dead_letters(conn, name, statuses)]

        return JSONResponse({"deadLetters": await run_in_threadpool(read)})

    async def replay(request: Request, name: str) -> Response:
        if (denied := admin(request)) is not None:
            return denied
        if config(name) is None:
            return _error(404, "FHIRHUB-SYNC-UNKNOWN-CONNECTOR", f"No connector named {name}")
        ids = [int(v) for v in request.query_params.getlist("id") if v.isdigit()]
        resolve = request.query_params.get("resolve")
        if resolve is not None and resolve not in POLICIES[:2]:
            return _error(400, "FHIRHUB-SYNC-RESOLVE", "resolve must be remote-wins or local-wins")

        def mark() -> int:
            with hub.ctx.db.write() as conn:
                return store.request_replay(conn, name, ids or None, resolve)

        marked = await run_in_threadpool(mark)
        running = service()
        if running is not None and name in running.connectors:
            running.wake()
        return JSONResponse({"markedForReplay": marked}, status_code=202)

    async def run_now(request: Request, name: str, what: str) -> Response:
        if (denied := admin(request)) is not None:
            return denied
        running = service()
        connector = running.connectors.get(name) if running is not None else None
        if connector is None:
            return _error(404, "FHIRHUB-SYNC-NOT-RUNNING", f"No connector named {name} runs in this server")
        if what == "pull":
            res_type = request.query_params.get("type")
            if res_type is not None and res_type not in connector.cfg.pull_types:
                return _error(400, "FHIRHUB-SYNC-TYPE", f"{name} does not pull {res_type}")
            results = [await connector.pull(res_type)] if res_type else await connector.pull_all()
            return JSONResponse({"pull": [r.to_json() for r in results]})
        return JSONResponse({"push": (await connector.push()).to_json()})

    async def pull_now(request: Request, name: str) -> Response:
        return await run_now(request, name, "pull")

    async def push_now(request: Request, name: str) -> Response:
        return await run_now(request, name, "push")

    async def notify(request: Request, name: str) -> Response:
        running = service()
        connector = running.connectors.get(name) if running is not None else None
        token = connector.cfg.notify_token if connector is not None else None
        scheme, _, presented = (request.headers.get("authorization") or "").partition(" ")
        address = request.client.host if request.client else None
        if connector is None or token is None or scheme.lower() != "bearer" or \
                not hmac.compare_digest(presented.strip().encode(), token.reveal().encode()):
            if hub.ctx.audit is not None:
                hub.ctx.audit.enqueue(AuditRecord("authorize", 4, None, address, query=request.url.path,
                                                  detail="FHIRHUB-SYNC-NOTIFY-AUTH"))
            return _error(401, "FHIRHUB-SYNC-NOTIFY-AUTH", "A notification needs the connector's bearer token",
                          {"WWW-Authenticate": 'Bearer realm="fhirhub-sync"'})
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_NOTIFICATION_BYTES:
                return _error(413, "FHIRHUB-BODY-TOO-LARGE", "The notification is too large")
        try:
            body = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            return _error(400, "FHIRHUB-PARSE-JSON", "The notification is not JSON")
        refs = [r for r in notification_refs(body, connector.cfg.base_url) if r[0] in connector.cfg.pull_types]
        if hub.ctx.audit is not None:
            hub.ctx.audit.enqueue(AuditRecord("sync", 0, f"{connector.cfg.origin}:notify", address,
                                              entities=[f"{t}/{i}" for t, i in refs], query=request.url.path,
                                              detail="rest-hook notification received"))
        task = asyncio.get_running_loop().create_task(connector.notified(refs))
        background.add(task)
        task.add_done_callback(background.discard)
        return JSONResponse({"accepted": len(refs), "fetching": [f"{t}/{i}" for t, i in refs] or "all pulled types"},
                            status_code=202)

    app.add_api_route("/admin/connectors", list_connectors, methods=["GET"], include_in_schema=False)
    app.add_api_route("/admin/connectors/{name}", one, methods=["GET"], include_in_schema=False)
    app.add_api_route("/admin/connectors/{name}/dead-letters", dead_letters, methods=["GET"], include_in_schema=False)
    app.add_api_route("/admin/connectors/{name}/replay", replay, methods=["POST"], include_in_schema=False)
    app.add_api_route("/admin/connectors/{name}/pull", pull_now, methods=["POST"], include_in_schema=False)
    app.add_api_route("/admin/connectors/{name}/push", push_now, methods=["POST"], include_in_schema=False)
    app.add_api_route("/sync/{name}/notify", notify, methods=["POST"], include_in_schema=False)

