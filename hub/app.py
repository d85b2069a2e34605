"""The composition root: every service is built here, once, and handed down. No globals."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse

from hub import __version__
from hub.api import auth as auth_api
from hub.api import fhir as fhir_api
from hub.api.auth import Authenticator, ExternalIssuer
from hub.api.headers import SecurityHeaders
from hub.fhir.definitions import Definitions
from hub.interactions.context import Context, Searching, Validating
from hub.interactions.router import FhirRouter
from hub.search.engine import SearchEngine
from hub.search.index import SearchIndexer
from hub.search.params import Registry
from hub.security.audit import AuditTrail
from hub.security.tokens import ClientStore, TokenService
from hub.settings import Settings
from hub.store.db import Database
from hub.store.repository import Repository
from hub.subscriptions.spec import TopicCatalog, subscription_types

log = logging.getLogger("hub.app")


class Service(Protocol):
    """A background part of the hub (subscription dispatcher, MLLP listener, sync connector)."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Hub:
    settings: Settings
    ctx: Context
    router: FhirRouter
    tokens: TokenService | None = None
    services: list[Service] = field(default_factory=list)

    def close(self) -> None:
        if self.ctx.audit is not None:
            self.ctx.audit.close()
        self.ctx.db.dispose()


@dataclass(frozen=True)
class Content:
    """The conformance content loaded from ``profiles/`` at start: definitions, validator, search parameters.

    Immutable once loaded, so several hubs (tests, tools) may share one.
    """

    definitions: Definitions
    validator: Validating
    registry: Registry | None

    @classmethod
    def load(cls, profiles_dir: Path, *, search: bool = True, validator: Validating | None = None) -> Content:
        from hub.validation import Validator

        validator = validator or Validator.load(profiles_dir)
        return cls(
            Definitions(frozenset(validator.resource_types)),  # the validator has read the definitions already
            validator,
            Registry.load(profiles_dir) if search else None,
        )


def build_hub(settings: Settings, *, content: Content | None = None, validator: Validating | None = None,
              search: bool = True, with_services: bool = False) -> Hub:
    """Open the database and wire the services around the conformance content.

    ``with_services`` adds the background services (subscriptions, workflows, MLLP, sync) that
    ``fhirhub serve`` runs; commands like ``load`` and in-process tests leave them out.
    """
    content = content or Content.load(settings.profiles_dir, search=search, validator=validator)
    db = Database(settings.database_url, settings.db_pool_size)
    engine: Searching | None = None
    repo = Repository()
    if content.registry is not None:
        repo = Repository(indexer=SearchIndexer(content.registry))
        engine = SearchEngine(content.registry)
    ctx = Context(
        settings=settings,
        db=db,
        repo=repo,
        definitions=content.definitions,
        validator=content.validator,
        search=engine,
        audit=AuditTrail(db),
    )
    topics = TopicCatalog.load(settings.profiles_dir)
    ctx.subscription_types = lambda resource: subscription_types(resource, topics)
    tokens = None if settings.auth_issuer else TokenService(db, ClientStore(db), token_ttl=settings.token_ttl)
    hub = Hub(settings, ctx, FhirRouter(ctx), tokens)
    if with_services:
        from hub.hl7 import service as hl7_service
        from hub.subscriptions import service as subscription_service
        from hub.sync import service as sync_service

        hub.services += subscription_service.services(hub)
        hub.services += hl7_service.services(hub)
        hub.services += sync_service.services(hub)
    return hub


def create_app(hub: Hub) -> FastAPI:
    settings = hub.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        started: list[Service] = []
        audit = hub.ctx.audit
        if audit is not None:
            audit.run_on(asyncio.get_running_loop())
        try:
            for service in hub.services:
                await service.start()
                started.append(service)
                log.info("started %s", service.name)
            yield
        finally:
            for service in reversed(started):
                await service.stop()
            if audit is not None:
                await audit.stop_loop()
            executor.shutdown(wait=False, cancel_futures=True)

    kwargs: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        # FastAPI's own OpenTelemetry (0.16x+): off. Its "logs" would record exception messages, which may hold
        # resource values (PHI), and its per-request checks cost ~3 % of a create.
        kwargs["telemetry"] = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    app = FastAPI(title="fhirhub", version=__version__, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  **kwargs)
    external = ExternalIssuer(settings.auth_issuer, settings.auth_jwks_url, settings.auth_audience) if settings.auth_issuer else None
    authenticator = Authenticator(settings, hub.tokens, external)
    auth_api.mount(app, settings, hub.tokens, hub.ctx.audit)
    executor = fhir_api.mount(app, hub.router, settings, authenticator)
    from hub.hl7 import api as hl7_api
    from hub.sync import api as sync_api

    sync_api.mount(app, hub, authenticator)  # /admin/connectors, /sync/<name>/notify
    hl7_api.mount(app, hub, authenticator)  # /admin/messages
    app.add_middleware(SecurityHeaders, hsts=settings.tls_certfile is not None)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "If-Match", "If-None-Exist", "Prefer"],
                           expose_headers=["ETag", "Location", "Last-Modified"])

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/fhir/metadata")

    return app
