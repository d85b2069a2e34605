"""The ``fhirhub`` command line (typer)."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.security.tokens import ClientStore
from hub.settings import Settings
from hub.store.db import Database

GIL_SWITCH_INTERVAL_S = 0.001  # see serve()

app = typer.Typer(help="fhirhub: a FHIR R4 interoperability hub", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(stderr=True)


def _settings() -> Settings:
    return Settings()


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs every request's full URL at INFO; a FHIR query string can hold PHI (names, birth dates).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


@app.command()
def serve(
    host: str = typer.Option(None, help="address to listen on (default FHIRHUB_HOST or 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default FHIRHUB_PORT or 8080)"),
    workers: int = typer.Option(None, help="API worker processes (default FHIRHUB_WORKERS or 1)"),
    worker_fd: int = typer.Option(None, hidden=True, help="internal: serve as an API worker on this inherited socket"),
    primary: str = typer.Option(None, hidden=True, help="internal: the primary's private socket (API workers)"),
) -> None:
    """Serve the FHIR API at /fhir (migrates the database first)."""
    import uvicorn

    from hub.api.auth import is_loopback
    from hub.app import build_hub, create_app
    from hub.store.schema import upgrade

    settings = _settings()
    # CPython hands the GIL over every 5 ms by default. A thread that holds SQLite's cross-process write lock
    # (run_write, db.write(): the loader, the HL7 pipeline, the services) must not wait that long for the GIL
    # while every other process waits for the lock (measured, when REST writes still ran on a writer thread:
    # creates at 16 clients 700/s at 5 ms, 860-900/s at 1 ms; reads unchanged).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    _configure_logging(settings.log_level)
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    if worker_fd is not None and workers > 1:
        # The services process keeps FHIRHUB_DB_POOL_SIZE (its dispatcher, deliveries, listeners and audit all hold
        # connections at once); the API workers share the same number again between them.
        settings = settings.model_copy(update={"db_pool_size": max(4, settings.db_pool_size // workers)})
    log = logging.getLogger("hub.cli")
    ssl = {"ssl_certfile": str(settings.tls_certfile) if settings.tls_certfile else None,
           "ssl_keyfile": str(settings.tls_keyfile) if settings.tls_keyfile else None}
    common = {"log_level": settings.log_level.lower(), "access_log": False, **ssl}
    if worker_fd is not None:  # an API worker started by the primary (hub/workers.py)
        from hub import workers as procs

        procs.exit_with_parent()
        hub = build_hub(settings)
        procs.advertise_service_operations(hub.router)
        announcer = procs.CommitAnnouncer(hub.ctx.db)
        if not hub.ctx.db.is_sqlite:  # the primary LISTENs (SQLite: it sees data_version change)
            hub.ctx.changes.subscribe(announcer)
        app = procs.ForwardToPrimary(create_app(hub), primary, settings.max_body_bytes)
        # socket(fileno=…) reads the family from the descriptor (uvicorn's own fd= would take it for a Unix
        # socket, and asyncio then leaves Nagle on: 40 ms per answer).
        sock = socket.socket(fileno=worker_fd)
        try:
            uvicorn.Server(uvicorn.Config(app, **common)).run(sockets=[sock])  # type: ignore[arg-type]
        finally:
            announcer.close()
            hub.close()
        return
    if settings.auth == "off":
        if not is_loopback(host):
            console.print(f"[red]FHIRHUB_AUTH=off is only accepted on a loopback address, not {host}")
            raise typer.Exit(2)
        log.warning("FHIRHUB_AUTH=off: the FHIR API accepts requests without a token (loopback only)")
    elif settings.auth != "on":
        console.print("[red]FHIRHUB_AUTH must be on or off")
        raise typer.Exit(2)
    if settings.subscription_senders is None:
        # With API workers the services process has no request to serve, but its loop then carries every
        # delivery's HTTP client: one sender process takes that off it (hub/subscriptions/transport.py).
        settings = settings.model_copy(update={"subscription_senders": 1 if workers > 1 else 0})
    hub = build_hub(settings, with_services=True)
    upgrade(hub.ctx.db)
    scheme = "https" if settings.tls_certfile else "http"
    try:
        if workers <= 1:
            log.info("serving FHIR R4 at %s://%s:%d/fhir", scheme, host, port)
            uvicorn.run(create_app(hub), host=host, port=port, **common)
            return
        from hub import workers as procs

        socks = procs.bind(host, port, workers)
        uds = procs.socket_path()
        hub.services.append(procs.WorkerPool(hub, workers, socks, uds))  # started last, stopped first
        log.info("serving FHIR R4 at %s://%s:%d/fhir with %d API workers", scheme, host, port, workers)
        uvicorn.run(procs.FromWorkers(create_app(hub)), uds=uds, log_level=common["log_level"], access_log=False)
    finally:
        hub.close()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database or bring it to the newest schema."""
    from hub.store.db import Database
    from hub.store.schema import upgrade

    settings = _settings()
    db = Database(settings.database_url)
    upgrade(db)
    db.dispose()
    console.print(f"database is at the newest schema ({db.dialect})")


@app.command()
def load(paths: list[Path] = typer.Argument(..., help="Bundle JSON, NDJSON files or folders of them")) -> None:
    """Load resources through the one write path; prints created, updated and failed with reasons."""
    from hub.app import build_hub
    from hub.loader import LoadReport, bundles_of, files_under, load_bundle, tally
    from hub.store.schema import upgrade

    settings = _settings()
    _configure_logging("WARNING")
    hub = build_hub(settings)
    upgrade(hub.ctx.db)
    base = settings.base_url or f"http://{settings.host}:{settings.port}/fhir"
    report = LoadReport()
    files = files_under(paths)
    missing = [p for p in files if not p.exists()]
    if missing:
        console.print(f"[red]not found: {', '.join(map(str, missing))}")
        raise typer.Exit(2)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("loading", total=len(files))
        for path in files:
            progress.update(task, description=f"loading {path.name}")
            try:
                for label, bundle in bundles_of(path):
                    tally(report, label, bundle, load_bundle(hub.router, bundle, base, origin="fhirhub-load"))
            except (orjson.JSONDecodeError, OSError, AttributeError) as exc:
                report.fail(path.name, f"cannot read: {type(exc).__name__}")
            progress.advance(task)
    hub.close()
    table = Table(title="load summary")
    for col in ("created", "updated", "unchanged", "failed"):
        table.add_column(col, justify="right")
    table.add_row(str(report.created), str(report.updated), str(report.unchanged), str(report.failed))
    console.print(table)
    for reason, n in report.reasons.most_common():
        console.print(f"  [red]failed[/red] {n} × {reason}")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def export(
    out: Path = typer.Argument(..., help="folder to write Type.ndjson files into"),
    type_: list[str] = typer.Option(None, "--type", help="resource type(s) to export (default: all)"),
) -> None:
    """Export current resources as NDJSON, one file per type."""
    from hub.exporter import export_ndjson
    from hub.store.db import Database

    settings = _settings()
    db = Database(settings.database_url)
    counts = export_ndjson(db, out, type_ or None)
    db.dispose()
    for res_type, n in sorted(counts.items()):
        console.print(f"{res_type}: {n}")


clients_app = typer.Typer(help="Registered SMART Backend Services clients", no_args_is_help=True)
app.add_typer(clients_app, name="clients")


def _client_store() -> tuple[Database, ClientStore]:
    from hub.store.schema import upgrade

    db = Database(_settings().database_url)
    upgrade(db)
    return db, ClientStore(db)


@clients_app.command("add")
def clients_add(
    name: str = typer.Option(..., help="a name for people"),
    scopes: str = typer.Option(..., help="space-separated SMART scopes, e.g. 'system/Patient.rs system/Appointment.cruds'"),
    jwks: Path = typer.Option(None, help="file with the client's public JWKS"),
    jwks_url: str = typer.Option(None, help="URL the client publishes its JWKS at"),
    client_id: str = typer.Option(None, help="client id (default: a new UUID)"),
) -> None:
    """Register a client; prints its client id."""
    db, store = _client_store()
    try:
        keys = orjson.loads(jwks.read_bytes()) if jwks else None
        client = store.add(name, scopes.split(), jwks=keys, jwks_url=jwks_url, client_id=client_id)
    except (ValueError, OSError, orjson.JSONDecodeError) as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(2) from None
    finally:
        db.dispose()
    typer.echo(client.client_id)


@clients_app.command("list")
def clients_list() -> None:
    """List registered clients."""
    db, store = _client_store()
    table = Table(title="clients")
    for col in ("client id", "name", "scopes", "keys", "revoked"):
        table.add_column(col)
    for c in store.list():
        table.add_row(c.client_id, c.name, " ".join(c.scopes), c.jwks_url or "inline JWKS", "yes" if c.revoked else "")
    db.dispose()
    Console().print(table)


@clients_app.command("revoke")
def clients_revoke(client_id: str) -> None:
    """Revoke a client: its token requests and tokens are refused from now on."""
    db, store = _client_store()
    found = store.revoke(client_id)
    db.dispose()
    if not found:
        console.print(f"[red]no client {client_id}")
        raise typer.Exit(1)
    console.print(f"revoked {client_id}")


from hub.hl7 import cli as hl7_cli  # noqa: E402
from hub.sync import cli as sync_cli  # noqa: E402

app.add_typer(sync_cli.app, name="connectors")
app.command("map")(hl7_cli.map_command)
app.command("replay")(hl7_cli.replay_command)
app.add_typer(hl7_cli.messages_app, name="messages")

def main() -> None:
    app()
