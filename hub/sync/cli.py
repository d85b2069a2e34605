"""``fhirhub connectors …``: status, check (discovery), dead letters and replay of the fhir-rest connectors.

``status`` and ``dead-letters`` read the database, so they work whether or not the server runs;
``replay`` marks dead letters, and the running server replays them on its next push cycle.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from hub.settings import Settings
from hub.store.db import Database
from hub.sync import store
from hub.sync.config import ConnectorConfig, ConnectorConfigError, load_dir

app = typer.Typer(help="EHR connectors (fhir-rest): status, discovery, dead letters", no_args_is_help=True)
err = Console(stderr=True)
out = Console()


def _configs(settings: Settings) -> list[ConnectorConfig]:
    try:
        return load_dir(settings.sync_connectors_dir, None, enabled_only=False)
    except ConnectorConfigError as exc:
        err.print(f"[red]{exc}")
        raise typer.Exit(2) from None


def _db(settings: Settings) -> Database:
    from hub.store.schema import upgrade

    db = Database(settings.database_url)
    upgrade(db)
    return db


def _pick(cfgs: list[ConnectorConfig], name: str) -> ConnectorConfig:
    cfg = next((c for c in cfgs if c.name == name), None)
    if cfg is None:
        err.print(f"[red]no connector {name} in {Settings().sync_connectors_dir}")
        raise typer.Exit(1)
    return cfg


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Last pull and push per type, lag, counts, errors, dead-letter backlog, discovery warnings."""
    from hub.sync.status import connector_status

    settings = Settings()
    cfgs = _configs(settings)
    db = _db(settings)
    try:
        found = [connector_status(db, c, running=False) for c in cfgs]
    finally:
        db.dispose()
    for item in found:
        item.pop("running", None)
    if as_json:
        typer.echo(json.dumps({"connectors": found}, indent=2))
        return
    if not found:
        err.print(f"no fhir-rest connectors in {settings.sync_connectors_dir}")
        return
    for c in found:
        table = Table(title=f"{c['name']} → {c['baseUrl']} ({'enabled' if c['enabled'] else 'disabled'}, conflict {c['conflict']})")
        for col in ("direction", "type", "last success", "lag s", "count", "errors", "pending", "last error"):
            table.add_column(col)
        for direction in ("pull", "push"):
            for row in c[direction]:
                table.add_row(direction, row["type"], row["lastSuccess"] or "never", _num(row.get("lagSeconds")),
                              str(row["count"]), str(row["errors"]), str(row.get("pending", "")), (row["lastError"] or "")[:60])
        out.print(table)
        dl = c["deadLetters"]
        out.print(f"  dead letters: {dl['dead']} dead, {dl['replay']} waiting for replay, {dl['resolved']} resolved;"
                  f" links: {', '.join(f'{k} {v}' for k, v in c['links'].items()) or 'none'}")
        for warning in c["warnings"]:
            out.print(f"  [yellow]warning[/yellow] {warning}")


def _num(value: Any) -> str:
    return "" if value is None else f"{value:g}"


@app.command("check")
def check(name: str = typer.Argument(None, help="connector (default: all)")) -> None:
    """Check the files and run discovery against each remote: what it supports, and warnings."""
    from hub.sync.discovery import discover
    from hub.sync.remote import Remote

    settings = Settings()
    cfgs = _configs(settings)
    chosen = [_pick(cfgs, name)] if name else cfgs

    async def run(cfg: ConnectorConfig) -> dict[str, Any]:
        remote = Remote(cfg)
        try:
            return await discover(remote)
        finally:
            await remote.aclose()

    warnings = 0
    for cfg in chosen:
        report = asyncio.run(run(cfg))
        out.print(f"[bold]{cfg.name}[/bold] ({cfg.path}) → {cfg.base_url}: FHIR {report['fhirVersion'] or '?'}")
        for res_type, info in report["supports"].items():
            out.print(f"  {res_type}: {', '.join(info['interactions'])}"
                      f"{'; conditional create' if info['conditionalCreate'] else ''}; versioning {info['versioning']}")
        if report["smart"]:
            out.print(f"  token endpoint: {report['smart'].get('token_endpoint')}")
        for warning in report["warnings"]:
            out.print(f"  [yellow]warning[/yellow] {warning}")
        warnings += len(report["warnings"])
    if warnings:
        raise typer.Exit(1)


@app.command("dead-letters")
def dead_letters(name: str, all_: bool = typer.Option(False, "--all", help="resolved ones too")) -> None:
    """List a connector's dead letters."""
    settings = Settings()
    _pick(_configs(settings), name)
    db = _db(settings)
    with db.read() as conn:
        items = store.dead_letters(conn, name, ("dead", "replay", "resolved") if all_ else ("dead", "replay"))
    db.dispose()
    table = Table(title=f"{name}: dead letters")
    for col in ("id", "direction", "resource", "status", "http", "code", "reason", "attempts"):
        table.add_column(col)
    for d in items:
        res = f"{d.res_type}/{d.local_id or '-'} ↔ {d.remote_id or '-'}"
        table.add_row(str(d.pk), d.direction, res, d.status, str(d.http_status or ""), d.code, d.reason[:70], str(d.attempts))
    out.print(table)


@app.command("replay")
def replay(
    name: str,
    ids: list[int] = typer.Argument(None, help="dead-letter ids (default: all of the connector's)"),
    resolve: str = typer.Option(None, help="for conflicts: remote-wins or local-wins"),
) -> None:
    """Mark dead letters for replay; the running server replays them on its next push cycle."""
    if resolve is not None and resolve not in ("remote-wins", "local-wins"):
        err.print("[red]--resolve must be remote-wins or local-wins")
        raise typer.Exit(2)
    settings = Settings()
    _pick(_configs(settings), name)
    db = _db(settings)
    with db.write() as conn:
        marked = store.request_replay(conn, name, ids or None, resolve)
    db.dispose()
    out.print(f"{marked} dead letter(s) marked for replay")
