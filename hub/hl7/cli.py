"""HL7v2 commands of the ``fhirhub`` CLI (typer), registered in ``hub/cli.py``:

* ``fhirhub map MESSAGE.hl7`` - the FHIR Bundle a message becomes (nothing is stored);
* ``fhirhub map test`` - the golden tests (``mappings/tests``) with a readable diff per failure;
* ``fhirhub replay --since 2d [--mappings DIR]`` - stored messages through changed mappings: the FHIR difference;
* ``fhirhub messages list|show|reprocess|requeue|purge`` - the message store.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from hub.errors import FhirError
from hub.hl7 import store
from hub.hl7.admin import Admin, parse_when
from hub.hl7.errors import Hl7Error, MappingFileError
from hub.hl7.settings import Hl7Settings
from hub.hl7.tables import ACK_DELIVERIES

if TYPE_CHECKING:
    from hub.app import Hub

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)
messages_app = typer.Typer(help="The HL7v2 message store: list, show, reprocess, requeue, purge", no_args_is_help=True)


# ------------------------------------------------------------------------------------ helpers


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]{message}")
    return typer.Exit(code)


def _mappings_dir(mappings: Path | None) -> Path:
    return mappings if mappings is not None else Path(Hl7Settings().mappings_dir)


def _systems(pairs: list[str] | None) -> dict[str, str] | None:
    out_: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise _fail(f"--sender-system takes AUTHORITY=URI, not {pair!r}")
        out_[key] = value
    return out_ or None


def _admin() -> Admin:
    from hub.settings import Settings
    from hub.store.db import Database
    from hub.store.schema import upgrade

    settings = Settings()
    db = Database(settings.database_url)
    upgrade(db)

    def make_hub() -> Hub:
        from hub.app import build_hub

        hub = build_hub(settings)
        return hub

    return Admin(db, hub_factory=make_hub)


def _close(admin: Admin) -> None:
    hub = admin._hub
    if hub is not None:
        hub.close()
    admin.db.dispose()


# ------------------------------------------------------------------------------------ map


def map_command(
    target: str = typer.Argument(..., metavar="MESSAGE.hl7|test", help="a message file, or `test` to run the golden tests"),
    mappings: Path = typer.Option(None, "--mappings", help="mapping set directory (default FHIRHUB_MAPPINGS_DIR)"),
    tests: Path = typer.Option(None, "--tests", help="golden test folder (default <mappings>/tests)"),
    update: bool = typer.Option(False, "--update", help="map test: rewrite the expected files instead of comparing"),
    sender_system: list[str] = typer.Option(None, "--sender-system", help="AUTHORITY=URI (repeatable), as a connector's sender_systems"),
    timezone: str = typer.Option(None, "--timezone", help="zone of times without an offset"),
) -> None:
    """Print the FHIR Bundle a message becomes (stores nothing), or run the golden tests (`map test`)."""
    from hub.hl7.mapping import MappingSet
    from hub.hl7.tools import dumps, map_message, run_golden_tests

    directory = _mappings_dir(mappings)
    try:
        ms = MappingSet.load(directory)
    except MappingFileError as exc:
        raise _fail(str(exc)) from None
    if target == "test" and not Path("test").is_file():
        failures = run_golden_tests(tests, ms, update=update)
        root = tests or (ms.root / "tests")
        total = len(list(Path(root).glob("*.hl7")))
        if update:
            console.print(f"rewrote the expected files of {total} golden tests in {root}; review them with git diff")
            return
        for f in failures:
            out.print(f"[bold red]FAIL[/] {f.message}: {f.reason}")
            if f.diff:
                out.print(f.diff, markup=False)
        console.print(f"{total - len(failures)} passed, {len(failures)} failed ({root})")
        if failures:
            raise typer.Exit(1)
        return
    path = Path(target)
    if not path.is_file():
        raise _fail(f"{target}: no such file")
    from hub.hl7.parse import split_messages

    try:
        messages = split_messages(path.read_bytes())
    except Hl7Error as exc:
        raise _fail(f"{target}: {exc.message} ({exc.code} at {exc.location})", 1) from None
    failed = 0
    for raw in messages:
        try:
            result = map_message(raw, ms, sender_systems=_systems(sender_system), timezone=timezone)
        except Hl7Error as exc:
            failed += 1
            out.print(json.dumps({"error": {"code": exc.code, "ack": exc.ack_code, "location": exc.location,
                                            "hl7_code": exc.hl7_code, "message": exc.message}}, indent=2))
            continue
        out.print(dumps(result.bundle), end="", markup=False)
        for w in result.warnings:
            console.print(f"[yellow]warning[/] {w}")
    if failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------ replay


def replay_command(
    since: str = typer.Option(..., "--since", help="messages received since: an instant (2026-11-27T08:00Z) or a duration ago (2h, 7d)"),
    until: str = typer.Option(None, "--until", help="and before this"),
    mappings: Path = typer.Option(None, "--mappings", help="the changed mapping set to compare with the deployed one"),
    connector: str = typer.Option(None, "--connector", help="only this listener's messages"),
    message_type: str = typer.Option(None, "--type", help="only this type (ADT, ADT^A01)"),
    limit: int = typer.Option(1000, "--limit", help="at most this many messages"),
) -> None:
    """Run stored messages through changed mappings and show the FHIR difference (nothing is written).

    With --mappings DIR: the deployed mapping set against DIR. Without: the Bundle each message
    became when it was processed against the mapping files as they are now.
    """
    admin = _admin()
    try:
        found = admin.replay(parse_when(since, "since"), parse_when(until, "until") if until else None, mappings,
                             connector, message_type, limit)
    except (FhirError, MappingFileError) as exc:
        raise _fail(str(exc)) from None
    finally:
        _close(admin)
    for r in found:
        out.print(f"[bold]message {r.pk}[/] {r.message_type} MSH-10 {r.control_id or '-'}: "
                  f"{len(r.changes)} entr{'y' if len(r.changes) == 1 else 'ies'} change")
        if r.old_error != r.new_error:
            out.print(f"    outcome: {r.old_error or 'AA'} -> {r.new_error or 'AA'}")
        for change in r.changes:
            out.print(str(change), markup=False)
    console.print(f"{len(found)} message(s) would change")


# ------------------------------------------------------------------------------------ messages


@messages_app.command("list")
def messages_list(
    message_type: str = typer.Option(None, "--type", help="ADT, ADT^A01"),
    status: str = typer.Option(None, "--status", help="received,applied,error,rejected (in); queued,sent,dead (out)"),
    control_id: str = typer.Option(None, "--control-id"),
    sender: str = typer.Option(None, "--sender", help="part of MSH-3/MSH-4"),
    connector: str = typer.Option(None, "--connector"),
    direction: str = typer.Option(None, "--direction", help="in or out"),
    error: str = typer.Option(None, "--error", help="error class, e.g. HL7-MAP-REQUIRED"),
    ack_delivery: str = typer.Option(None, "--ack-delivery",
                                     help="undelivered: enhanced-mode application ACKs still owed to their sender; redelivered"),
    since: str = typer.Option(None, "--since", help="instant or duration ago (2h, 7d)"),
    until: str = typer.Option(None, "--until"),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
) -> None:
    """List stored messages, newest first."""
    if ack_delivery and ack_delivery not in ACK_DELIVERIES:
        raise _fail(f"--ack-delivery is one of {', '.join(ACK_DELIVERIES)}")
    admin = _admin()
    try:
        rows = admin.search(store.Query(
            message_type=message_type, status=status.split(",") if status else None, control_id=control_id,
            sender=sender, connector=connector, direction=direction, error_code=error, ack_delivery=ack_delivery or None,
            since=parse_when(since, "since") if since else None, until=parse_when(until, "until") if until else None,
            limit=limit))
    except FhirError as exc:
        raise _fail(exc.message) from None
    finally:
        _close(admin)
    if as_json:
        for r in rows:
            out.print(json.dumps(r), markup=False)
        return
    table = Table(title=f"{len(rows)} message(s)")
    for col in ("id", "dir", "connector", "type", "control id", "sender", "status", "ack", "error", "received"):
        table.add_column(col, overflow="fold")
    for r in rows:
        err = r.get("error") or {}
        table.add_row(str(r["id"]), r["direction"], r["connector"], r.get("type") or "", r.get("controlId") or "",
                      r["sender"], r["status"], f"{r.get('ack') or ''} {r.get('ackDelivery') or ''}".strip(),
                      f"{err.get('code', '')} {err.get('location') or ''}".strip(), r["received"])
    out.print(table)


@messages_app.command("show")
def messages_show(
    pk: int = typer.Argument(..., metavar="ID"),
    bundle: bool = typer.Option(False, "--bundle", help="also the FHIR Bundle it became"),
    as_json: bool = typer.Option(False, "--json"),
    raw: bool = typer.Option(False, "--raw", help="only the message, as received (for `fhirhub map`)"),
) -> None:
    """One message: its raw text, the ACK it got and the resources it produced."""
    if raw:
        admin = _admin()
        try:
            row = admin.raw(pk)
        except FhirError as exc:
            raise _fail(exc.message, 1) from None
        finally:
            _close(admin)
        sys.stdout.buffer.write(bytes(row.raw))
        sys.stdout.flush()
        return
    admin = _admin()
    try:
        found = admin.get(pk, bundle)
    except FhirError as exc:
        raise _fail(exc.message, 1) from None
    finally:
        _close(admin)
    if as_json:
        out.print(json.dumps(found, indent=2), markup=False)
        return
    for key in ("id", "direction", "connector", "type", "controlId", "sender", "receiver", "status", "ack",
                "ackDelivery", "received", "processed", "attempts", "duplicates", "peer", "source", "nextAttempt"):
        if found.get(key) not in (None, ""):
            out.print(f"{key:>11}: {found[key]}", markup=False)
    if "error" in found:
        e = found["error"]
        out.print(f"{'error':>11}: {e['code']} at {e.get('location') or '-'}: {e.get('detail') or ''}", markup=False)
    out.print("\n[bold]message[/]")
    out.print(found["message"].replace("\r", "\n").rstrip(), markup=False)
    if found.get("ackMessage"):
        out.print("\n[bold]ACK[/]")
        out.print(found["ackMessage"].replace("\r", "\n").rstrip(), markup=False)
    if found.get("resources"):
        out.print("\n[bold]resources[/]")
        for ref in found["resources"]:
            out.print(f"  {ref}", markup=False)
    if bundle and found.get("bundle"):
        out.print("\n[bold]bundle[/]")
        out.print(json.dumps(found["bundle"], indent=2), markup=False)


@messages_app.command("reprocess")
def messages_reprocess(
    pk: int = typer.Argument(None, metavar="[ID]", help="one message"),
    error: str = typer.Option(None, "--error", help="every failed message of this error class"),
    connector: str = typer.Option(None, "--connector", help="with --error: only this listener's"),
) -> None:
    """Run failed messages again through the current mapping files (after a fix) and commit them."""
    if (pk is None) == (error is None):
        raise _fail("give one message ID or --error CODE")
    admin = _admin()
    try:
        done = [admin.reprocess(pk)] if pk is not None else admin.reprocess_class(error, connector)
    except FhirError as exc:
        raise _fail(exc.message, 1) from None
    finally:
        _close(admin)
    for d in done:
        out.print(f"message {d.pk}: {d.ack_code} {d.status}" + (f" ({d.error_code})" if d.error_code else ""), markup=False)
    bad = sum(1 for d in done if d.ack_code != "AA")
    console.print(f"{len(done)} reprocessed, {len(done) - bad} applied, {bad} still failing")
    if bad:
        raise typer.Exit(1)


@messages_app.command("requeue")
def messages_requeue(pk: int = typer.Argument(..., metavar="ID")) -> None:
    """Put a dead outbound message back into its sender's queue."""
    admin = _admin()
    try:
        ok = admin.requeue(pk)
    finally:
        _close(admin)
    if not ok:
        raise _fail(f"message {pk} is not a dead outbound message", 1)
    console.print(f"message {pk} queued again")


@messages_app.command("purge")
def messages_purge(
    older_than: str = typer.Option(None, "--older-than", help="a duration: 30d, 12h"),
    before: str = typer.Option(None, "--before", help="an instant: 2026-01-01"),
    status: str = typer.Option(None, "--status", help="only these statuses (comma list)"),
    connector: str = typer.Option(None, "--connector"),
) -> None:
    """Delete stored messages received before a point in time (never ones still waiting)."""
    if (older_than is None) == (before is None):
        raise _fail("give --older-than or --before")
    admin = _admin()
    try:
        when = parse_when(older_than or before, "older-than" if older_than else "before")
        n = admin.purge(when, status.split(",") if status else None, connector)
    except FhirError as exc:
        raise _fail(exc.message) from None
    finally:
        _close(admin)
    console.print(f"{n} message(s) deleted")

