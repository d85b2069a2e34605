"""The composition root: every service is built here, once, and handed down. No globals."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from hub import __version__
from hub.api import fhir as fhir_api
from hub.fhir.definitions import Definitions
from hub.interactions.context import Context, Searching, Validating
from hub.interactions.router import FhirRouter
from hub.settings import Settings
from hub.store.db import Database
from hub.store.repository import Repository

log = logging.getLogger("hub.app")


@dataclass
class Hub:
    settings: Settings
    ctx: Context
    router: FhirRouter

    def close(self) -> None:
        self.ctx.db.dispose()


def build_hub(settings: Settings, *, validator: Validating | None = None, search: bool = True) -> Hub:
    """Load the conformance content, open the database, wire the services."""
    definitions = Definitions.load(settings.profiles_dir)
    db = Database(settings.database_url, settings.db_pool_size)
    engine: Searching | None = None
    repo = Repository()
    if search:
        from hub.search.engine import SearchEngine
        from hub.search.index import SearchIndexer
        from hub.search.params import SearchRegistry

        registry = SearchRegistry.load(settings.profiles_dir)
        repo = Repository(indexer=SearchIndexer(registry))
        engine = SearchEngine(registry)
    if validator is None:
        from hub.validation import Validator

        validator = Validator.load(settings.profiles_dir)
    ctx = Context(
        settings=settings,
        db=db,
        repo=repo,
        definitions=definitions,
        validator=validator,
        search=engine,
    )
    return Hub(settings, ctx, FhirRouter(ctx))


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(title="fhirhub", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    fhir_api.mount(app, hub.router, hub.settings)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/fhir/metadata")

    return app
