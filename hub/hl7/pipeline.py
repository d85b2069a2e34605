"""The inbound pipeline of one stored HL7v2 message: parse, filter, map, commit, ACK (synchronous).

:meth:`Pipeline.process` runs in a worker thread (the listener calls it through its executor;
reprocessing from the API or the CLI calls it directly). It never raises: every failure becomes
an :class:`Result` whose ACK code comes from ``hub.errors.CATEGORIES`` (AE for content the
mapping or FHIR cannot accept, AR for unsupported types and for "cannot process now").

The FHIR side is the one write path: the Bundle goes to ``FhirRouter.dispatch`` as a
transaction with ``origin = principal = mllp:<connector>``; nothing here writes FHIR tables.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from sqlalchemy import Connection

from hub.errors import CATEGORIES, Category
from hub.hl7 import store
from hub.hl7.ack import Header, build_ack, read_header
from hub.hl7.connectors import Listener
from hub.hl7.convert import ConversionResult, convert
from hub.hl7.errors import (
    E_APPLICATION,
    E_VALUE_TOO_LONG,
    Hl7Error,
    MappingFileError,
    hl7_error,
    unsupported_error,
)
from hub.hl7.known import Known, Shortcut
from hub.hl7.mapping import MappingSet
from hub.hl7.parse import parse
from hub.hl7.store import Outcome, WriteGate
from hub.interactions import transaction
from hub.interactions.request import FhirRequest, FhirResponse
from hub.security.audit import AuditRecord, outcome_code
from hub.security.scopes import Principal

if TYPE_CHECKING:
    from hub.interactions.router import FhirRouter

log = logging.getLogger("hub.hl7")
STATUS_OF_ACK = {"AA": "applied", "AE": "error", "AR": "rejected"}
_ENTRY = re.compile(r"^Bundle\.entry\[(\d+)\]")
TRANSIENT_RETRIES = 3  # a FHIR transaction failing with 5xx is retried this often before AR


# ------------------------------------------------------------------------------------ mapping sets


class MappingCache:
    """The mapping sets in use, by directory. :meth:`check` reloads changed ones; a broken edit
    is logged (file and line) once and the previous set stays in use."""

    def __init__(self) -> None:
        self._sets: dict[Path, MappingSet] = {}
        self._keys: dict[Path, Path] = {}
        self._failed: dict[Path, str] = {}
        self._lock = threading.Lock()

    def get(self, directory: Path) -> MappingSet:
        key = self._keys.get(directory)
        if key is None:  # resolving a path costs system calls: once per directory, not per message
            key = self._keys[directory] = Path(directory).resolve()
        ms = self._sets.get(key)
        if ms is None:
            with self._lock:
                ms = self._sets.get(key)
                if ms is None:
                    ms = self._sets[key] = MappingSet.load(key)
        return ms

    def check(self) -> list[Path]:
        """Reload every set whose files changed; returns the directories reloaded."""
        from hub.hl7.mapping import fingerprint

        reloaded = []
        for key, ms in list(self._sets.items()):
            if not ms.changed():
                continue
            fp = fingerprint(key)
            if self._failed.get(key) == fp:
                continue  # this broken state was reported already
            try:
                new = MappingSet.load(key)
            except MappingFileError as exc:
                self._failed[key] = fp
                log.error("mapping files in %s not reloaded, the previous set stays in use: %s", key, exc)
                continue
            except OSError as exc:  # a file vanished mid-edit: try again next time
                log.warning("mapping files in %s not reloaded (%s)", key, type(exc).__name__)
                continue
            self._failed.pop(key, None)
            self._sets[key] = new
            reloaded.append(key)
            log.info("mapping files in %s reloaded (%d message types)", key, len(new.messages))
        return reloaded


# ------------------------------------------------------------------------------------ parse, filter, map


def prepare(connector: Listener, mappings: MappingSet, pk: int, raw: bytes, peer: str | None = None) -> Prepared:
    """Parse, filter and map one stored message (pure: nothing is read or written, so it runs in a thread
    or in a mapping process alike, see :mod:`hub.hl7.mapper`). Failures are carried, not raised."""
    t0 = time.perf_counter()
    prepared = Prepared(pk, raw, peer)
    try:
        msg = parse(raw, parser=connector.parser)
        prepared.message_type = f"{msg.message_code}^{msg.trigger}" if msg.trigger else msg.message_code
        if not connector.accepts(prepared.message_type):
            raise unsupported_error(f"{prepared.message_type} is not accepted by connector {connector.name}")
        prepared.conversion = convert(msg, mappings, sender_systems=connector.sender_systems or None,
                                      timezone=connector.timezone)
        prepared.bundle_json = orjson.dumps(prepared.conversion.bundle)
        prepared.merges = merged_patients(prepared.conversion.bundle)
    except Hl7Error as err:
        prepared.error = err
    except Exception as exc:  # noqa: BLE001 - the edge: a bug must not take the listener down
        log.error("hl7 message %d could not be mapped type=%s", pk, type(exc).__name__)
        log.debug("hl7 failure detail", exc_info=exc)
        prepared.error = hl7_error(Category.INTERNAL, "HL7-INTERNAL", "internal error while mapping the message")
    prepared.seconds["convert"] = time.perf_counter() - t0
    return prepared


# ------------------------------------------------------------------------------------ ACKs


class Acks:
    """Builds ACK messages with their own control ids and timestamps."""

    def __init__(self, connector: Listener) -> None:
        self.connector = connector
        self._seq = itertools.count(1)
        self._boot = f"{int(time.time()):x}"
        self._stamp = (0, "")

    def control_id(self) -> str:
        return f"{self._boot}{next(self._seq)}"

    def timestamp(self) -> str:
        now = int(time.time())
        if self._stamp[0] != now:
            self._stamp = (now, datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%S") + "+0000")
        return self._stamp[1]

    def build(self, original: str | bytes | Header | None, code: str, error: Exception | None = None) -> bytes:
        text = build_ack(
            original, code, control_id=self.control_id(), timestamp=self.timestamp(), error=error,
            sending_application=self.connector.ack_sending_application,
            sending_facility=self.connector.ack_sending_facility,
        )
        return text.encode("utf-8", "replace")


def error_from_row(code: str | None, location: str | None, detail: str | None, ack_code: str) -> Hl7Error:
    """The error a stored outcome stands for (to answer a resend of a failed message the same way)."""
    category = next((c for c, m in CATEGORIES.items() if m.ack_code == ack_code), Category.INTERNAL)
    if ack_code == "AE":
        category = Category.UNPROCESSABLE
    return hl7_error(category, code or "HL7-ERROR", detail or "the message was not applied", location=location,
                     hl7_code=_hl7_code_of(detail))


def _hl7_code_of(detail: str | None) -> str:
    m = re.search(r"\(HL7 (\d{3})\)", detail or "")
    return m.group(1) if m else E_APPLICATION


def describe(err: Hl7Error) -> str:
    """The stored error text: the message (positions and codes only) plus the table 0357 code."""
    return f"{err.message} (HL7 {err.hl7_code})"[:500]


# ------------------------------------------------------------------------------------ results


@dataclass
class Prepared:
    """A stored message after parsing and mapping (or the error that stopped it)."""

    pk: int
    raw: bytes
    peer: str | None
    message_type: str | None = None
    conversion: ConversionResult | None = None
    error: Hl7Error | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    bundle_json: bytes = b""  # the Bundle as converted (the transaction would change a dict in place)
    merges: list[str] = field(default_factory=list)  # ADT^A40: the conditional URL of each Patient merged away

    @property
    def patient_key(self) -> str | None:
        return self.conversion.patient_key if self.conversion is not None else None


@dataclass
class Result:
    outcome: Outcome
    ack: bytes
    audit: AuditRecord
    conversion: ConversionResult | None = None
    error: Hl7Error | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    stored: bool = False  # the outcome was committed with the FHIR writes (apply_many): no finish needed

    @property
    def ack_code(self) -> str:
        return self.outcome.ack_code


class Pipeline:
    """Everything one listener does with a stored message, given the hub's router."""

    def __init__(self, router: FhirRouter, connector: Listener, mappings: MappingCache, base_url: str,
                 gate: WriteGate | None = None, known: Known | None = None) -> None:
        self.router = router
        self.gate = gate or WriteGate(False)
        self.known = known
        self.connector = connector
        self.mappings = mappings
        self.base_url = base_url
        self.acks = Acks(connector)
        self.principal = Principal.system(connector.origin)

    # -------------------------------------------------------------------- one message
    def process(self, pk: int, raw: bytes, peer: str | None = None, *, mappings: MappingSet | None = None) -> Result:
        """Parse, filter, map and commit one stored message; the Result holds its application ACK."""
        return self.apply(self.prepare(pk, raw, peer, mappings=mappings))

    def prepare(self, pk: int, raw: bytes, peer: str | None = None, *, mappings: MappingSet | None = None) -> Prepared:
        """Parse, filter and map (pure: nothing is written). Failures are carried, not raised."""
        return prepare(self.connector, mappings or self.mappings.get(self.connector.mappings), pk, raw, peer)

    def apply(self, prepared: Prepared) -> Result:
        """Commit a prepared message through the one write path (or answer its error)."""
        pk, raw, peer, conversion = prepared.pk, prepared.raw, prepared.peer, prepared.conversion
        if prepared.error is not None or conversion is None:
            err = prepared.error or hl7_error(Category.INTERNAL, "HL7-INTERNAL", "the message was not mapped")
            return self._failed(pk, raw, peer, err, prepared.message_type, conversion, prepared.seconds)
        t1 = time.perf_counter()
        try:
            response, index = self.commit(prepared.bundle_json)
            prepared.seconds["commit"] = time.perf_counter() - t1
            if response.status >= 400:
                raise self.fhir_failure(response, conversion, index)
            refs = _written(response)
            if prepared.merges:
                t2 = time.perf_counter()
                refs += self.repoint(prepared.merges)
                prepared.seconds["repoint"] = time.perf_counter() - t2
        except Hl7Error as err:
            return self._failed(pk, raw, peer, err, prepared.message_type, conversion, prepared.seconds)
        except Exception as exc:  # noqa: BLE001 - the edge: a bug must not take the listener down
            log.error("hl7 message %d failed unexpectedly type=%s", pk, type(exc).__name__)
            log.debug("hl7 failure detail", exc_info=exc)
            internal = hl7_error(Category.INTERNAL, "HL7-INTERNAL", "internal error while processing the message")
            return self._failed(pk, raw, peer, internal, prepared.message_type, conversion, prepared.seconds)
        ack = self.acks.build(raw, "AA")
        outcome = Outcome(pk, "applied", "AA", ack, prepared.message_type, resources=refs, bundle=prepared.bundle_json,
                          patient_key=conversion.patient_key)
        audit = AuditRecord("hl7v2", 0, self.connector.origin, peer, entities=refs, detail=conversion.control_id)
        return Result(outcome, ack, audit, conversion, None, prepared.seconds)

    def apply_many(self, batch: list[Prepared]) -> list[Result]:
        """Commit several prepared messages in one database transaction, each in its own savepoint,
        with their outcomes (``hl7_message``) written in that same transaction (``Result.stored``).

        The messages must be independent of each other's order (the listener only batches the heads
        of different ordering lines). A message whose Bundle is refused is rolled back alone and gets
        its AE/AR like :meth:`apply` gives it; one that needs :meth:`apply`'s second chances (a 5xx,
        or a refused Bundle that was shortened by :class:`Known`) is left out of the batch's outcomes
        and applied again on its own afterwards; if the batch cannot commit at all, every message is
        applied on its own. Either way each message is applied exactly once.
        """
        if len(batch) == 1 and batch[0].error is None:
            return [self.apply(batch[0])]
        results: list[Result | None] = [None] * len(batch)
        todo: list[int] = []
        for i, prepared in enumerate(batch):
            if prepared.error is not None or prepared.conversion is None or prepared.merges:
                # no FHIR write (the error outcome), or a merge: its re-pointing follows its own commit
                results[i] = self.apply(prepared)
            else:
                todo.append(i)
        if not todo:
            return [r for r in results if r is not None]
        shortcuts: list[Shortcut | None] = (list(self.known.shorten_many([batch[i].bundle_json for i in todo]))
                                            if self.known is not None else [None] * len(todo))
        requests = [
            FhirRequest("POST", "", [], {"prefer": "return=minimal"},
                        sc.bundle if sc is not None else orjson.loads(batch[i].bundle_json), self.base_url,
                        origin=self.connector.origin, principal=self.principal)
            for i, sc in zip(todo, shortcuts, strict=True)
        ]
        again: list[int] = []  # positions in ``todo`` that apply() must take on alone
        t1 = time.perf_counter()

        def within(conn: Connection, responses: list[FhirResponse]) -> None:
            again.clear()
            outcomes = []
            for k, (i, response, sc) in enumerate(zip(todo, responses, shortcuts, strict=True)):
                if response.status >= 500 or (response.status >= 400 and sc is not None and sc.used):
                    again.append(k)
                    results[i] = None
                    continue
                result = self._result(batch[i], response, sc.index if sc is not None else None)
                result.stored = True
                results[i] = result
                outcomes.append(result.outcome)
            if outcomes:
                store.finish(conn, outcomes)

        try:
            with self.gate.transaction():
                responses = transaction.process_many(self.router, requests, within)
        except Exception as exc:  # noqa: BLE001 - the batch did not commit: each message on its own
            log.warning("hl7 batch of %d messages not committed (%s): applied one by one", len(todo), type(exc).__name__)
            log.debug("hl7 batch failure detail", exc_info=exc)
            for i in todo:
                results[i] = self.apply(batch[i])
            return [r for r in results if r is not None]
        elapsed = time.perf_counter() - t1
        for k, (i, sc) in enumerate(zip(todo, shortcuts, strict=True)):
            if k in again:
                continue
            batch[i].seconds["commit"] = elapsed / len(todo)
            if sc is not None and self.known is not None and responses[k].status < 300:
                self.known.learn(sc, responses[k].body)
        for k in again:
            sc = shortcuts[k]
            if sc is not None and sc.used and self.known is not None and responses[k].status < 500:
                self.known.forget(sc.used)
            results[todo[k]] = self.apply(batch[todo[k]])
        return [r for r in results if r is not None]

    def _result(self, prepared: Prepared, response: FhirResponse, index: list[int] | None) -> Result:
        """The Result of a committed (or refused) transaction of a prepared message."""
        conversion = prepared.conversion
        assert conversion is not None
        if response.status >= 400:
            err = self.fhir_failure(response, conversion, index)
            return self._failed(prepared.pk, prepared.raw, prepared.peer, err, prepared.message_type, conversion,
                                prepared.seconds)
        refs = _written(response)
        ack = self.acks.build(prepared.raw, "AA")
        outcome = Outcome(prepared.pk, "applied", "AA", ack, prepared.message_type, resources=refs,
                          bundle=prepared.bundle_json, patient_key=conversion.patient_key)
        audit = AuditRecord("hl7v2", 0, self.connector.origin, prepared.peer, entities=refs, detail=conversion.control_id)
        return Result(outcome, ack, audit, conversion, None, prepared.seconds)

    def commit(self, bundle_json: bytes) -> tuple[FhirResponse, list[int] | None]:
        """The one write path: the response, and (when known resources shortened the Bundle) the index in
        the converted Bundle of each entry committed.

        Retried a few times when it answers 5xx (database busy, deadlock); a failure of a shortened
        Bundle is retried once with the converted Bundle as it was (a remembered resource may have
        changed in the moment between the check and the commit). Each attempt gets a fresh copy:
        the transaction rewrites references in place.
        """
        response = FhirResponse(500)
        plain = False
        for attempt in range(TRANSIENT_RETRIES + 2):
            shortcut = self.known.shorten(bundle_json) if self.known is not None and not plain else None
            bundle = shortcut.bundle if shortcut is not None else orjson.loads(bundle_json)
            request = FhirRequest("POST", "", [], {"prefer": "return=minimal"}, bundle, self.base_url,
                                  origin=self.connector.origin, principal=self.principal)
            with self.gate.transaction():
                response = self.router.dispatch(request)
            if response.status >= 400 and shortcut is not None and shortcut.used and not plain:
                assert self.known is not None
                self.known.forget(shortcut.used)
                plain = True
                continue
            if response.status < 500:
                if response.status < 300 and shortcut is not None and self.known is not None:
                    self.known.learn(shortcut, response.body)
                return response, (shortcut.index if shortcut is not None else None)
            if attempt < TRANSIENT_RETRIES:
                time.sleep(0.05 * (2**attempt))
            else:
                break
        return response, None

    # -------------------------------------------------------------------- ADT^A40: references follow the merge
    def repoint(self, merges: list[str]) -> list[str]:
        """After a merge committed: every resource that refers to a Patient merged away (``Patient?identifier=``
        of each MRG) is changed to refer to the Patient that replaces it, through the one write path (transaction
        Bundles of ``PUT`` with ``If-Match``: outbox, audit, history). The Patients' own ``link`` elements and
        Provenance (a record of what happened to the old one) stay as they are. Returns ``Type/id/_history/v`` of
        what changed; nothing when nothing refers to the old Patient any more (a resent A40)."""
        written: list[str] = []
        for url in merges:
            for attempt in range(TRANSIENT_RETRIES + 1):
                try:
                    written += self._repoint_one(url)
                    break
                except _Retry:
                    if attempt == TRANSIENT_RETRIES:
                        raise _merge_error("FHIRHUB-CONFLICT", "the resources changed while they were re-pointed") from None
                    time.sleep(0.05 * (2**attempt))
        return written

    def _repoint_one(self, url: str) -> list[str]:
        res_type, _, query = url.partition("?")
        found = self._get(res_type, parse_qsl(query, keep_blank_values=True))
        olds = [r for r in found if r.get("resourceType") == "Patient"]
        if len(olds) != 1:  # the merge just wrote it: cannot happen unless it was deleted meanwhile
            raise _merge_error("HL7-MERGE-PATIENT", f"the merged patient was found {len(olds)} times")
        old = olds[0]
        old_id = str(old["id"])
        target = next((str((lk.get("other") or {}).get("reference") or "") for lk in old.get("link") or []
                       if lk.get("type") == "replaced-by"), "")
        if not target.startswith("Patient/") or target == f"Patient/{old_id}":
            raise _merge_error("HL7-MERGE-PATIENT", "the merged patient has no replaced-by link")
        target = "Patient/" + target.split("/")[1]  # no version
        matches = _OldRef(self.base_url, old_id)
        entries: list[dict[str, Any]] = []
        params: list[tuple[str, str]] = [("_count", str(REPOINT_PAGE))]
        while True:
            page = self._get(f"Patient/{old_id}/$everything", params, with_links=True)
            for res in page[:-1]:
                if res.get("resourceType") in REPOINT_SKIP or not matches.rewrite(res, target):
                    continue
                rid, version = str(res["id"]), str((res.get("meta") or {}).get("versionId") or "")
                entries.append({"fullUrl": f"{self.base_url}/{res['resourceType']}/{rid}", "resource": res,
                                "request": {"method": "PUT", "url": f"{res['resourceType']}/{rid}",
                                            **({"ifMatch": f'W/"{version}"'} if version else {})}})
            cursor = page[-1].get("_cursor")
            if not cursor:
                break
            params = [("_count", str(REPOINT_PAGE)), ("_cursor", str(cursor))]
        written: list[str] = []
        for start in range(0, len(entries), REPOINT_PAGE):
            chunk = entries[start:start + REPOINT_PAGE]
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": chunk}
            request = FhirRequest("POST", "", [], {"prefer": "return=minimal"}, bundle, self.base_url,
                                  origin=self.connector.origin, principal=self.principal)
            with self.gate.transaction():
                response = self.router.dispatch(request)
            if response.status in (409, 412) or response.status >= 500:
                raise _Retry
            if response.status >= 400:
                category = next((c for c, m in CATEGORIES.items() if m.http_status == response.status), Category.INTERNAL)
                raise _merge_error(_issue_code(response), "re-pointing the merged patient's resources was refused",
                                   category)
            written += _written(response)
        if written:
            log.info("hl7 merge: %d resources re-pointed from Patient/%s to %s", len(written), old_id, target)
        return written

    def _get(self, path: str, params: list[tuple[str, str]], with_links: bool = False) -> list[dict[str, Any]]:
        """The matches of a read through the router (``with_links``: plus one last item holding the next
        page's ``_cursor``)."""
        response = self.router.dispatch(FhirRequest("GET", path, params, {}, None, self.base_url,
                                                    principal=self.principal))
        if response.status >= 500:
            raise _Retry
        if response.status >= 400:
            raise _merge_error(_issue_code(response), "the merged patient's resources could not be read")
        body = orjson.loads(response.body or b"{}")
        out = [e["resource"] for e in body.get("entry") or []
               if (e.get("search") or {}).get("mode", "match") == "match" and isinstance(e.get("resource"), dict)]
        if with_links:
            nxt = next((str(lk.get("url") or "") for lk in body.get("link") or [] if lk.get("relation") == "next"), "")
            cursor = dict(parse_qsl(urlsplit(nxt).query)).get("_cursor") if nxt else None
            out.append({"_cursor": cursor})
        return out

    def fhir_failure(self, response: FhirResponse, conversion: ConversionResult, index: list[int] | None = None) -> Hl7Error:
        """A refused FHIR transaction as an HL7 error: its category decides AE/AR (``CATEGORIES``);
        the location is the segment that produced the failing entry. No values are copied."""
        category = next((c for c, m in CATEGORIES.items() if m.http_status == response.status), Category.INTERNAL)
        code, where = "FHIRHUB-ERROR", None
        try:
            outcome = orjson.loads(response.body or b"{}")
            issue = (outcome.get("issue") or [{}])[0]
            codings = ((issue.get("details") or {}).get("coding")) or [{}]
            code = str(codings[0].get("code") or code)
            expressions = issue.get("expression") or []
            where = str(expressions[0]) if expressions else None
        except (orjson.JSONDecodeError, AttributeError, IndexError):
            pass
        location = None
        resource = None
        m = _ENTRY.match(where or "")
        if m:
            idx = int(m.group(1))
            if index is not None and idx < len(index):
                idx = index[idx]  # the entry's place in the converted Bundle
            if idx < len(conversion.sources):
                location = conversion.sources[idx]
            entries = conversion.bundle.get("entry") or []
            if idx < len(entries):
                resource = entries[idx]["resource"].get("resourceType")
        path = _SAFE_PATH.sub("", where or "")[:120]
        text = f"the FHIR {resource or 'transaction'} was refused ({code})" + (f" at {path}" if path else "")
        if response.status >= 500:
            text = f"the FHIR store cannot process the message now ({code})"
        err = hl7_error(category, code, text, location=location, hl7_code=E_APPLICATION)
        return err

    def _failed(self, pk: int, raw: bytes, peer: str | None, err: Hl7Error, message_type: str | None,
                conversion: ConversionResult | None, timings: dict[str, float]) -> Result:
        code = CATEGORIES[err.category].ack_code
        ack = self.acks.build(raw, code, err)
        outcome = Outcome(pk, STATUS_OF_ACK[code], code, ack, message_type, err.code, err.location, describe(err),
                          bundle=orjson.dumps(conversion.bundle) if conversion is not None else None,
                          patient_key=conversion.patient_key if conversion is not None else None)
        header = read_header(raw) if conversion is None else None
        control_id = conversion.control_id if conversion is not None else (header.control_id if header else "")
        audit = AuditRecord("hl7v2", outcome_code(CATEGORIES[err.category].http_status), self.connector.origin, peer,
                            detail=f"{control_id} {err.code}".strip())
        return Result(outcome, ack, audit, conversion, err, timings)

    # -------------------------------------------------------------------- answers without processing
    def duplicate(self, raw: bytes, peer: str | None, ack_code: str | None, error: Hl7Error | None,
                  control_id: str) -> tuple[bytes, AuditRecord]:
        """The ACK of a resent message (same outcome as the first copy), and its audit record."""
        code = ack_code or "AA"
        ack = self.acks.build(raw, code, error if code != "AA" else None)
        audit = AuditRecord("hl7v2", 0 if code == "AA" else 4, self.connector.origin, peer,
                            detail=f"{control_id} duplicate")
        return ack, audit

    def refuse(self, raw: bytes, peer: str | None, err: Hl7Error, *, enhanced_accept: bool = False) -> tuple[bytes, AuditRecord]:
        """An answer for a frame that was not stored (oversized, or the store failed): AR / CR."""
        code = CATEGORIES[err.category].ack_code
        if enhanced_accept:
            code = {"AA": "CA", "AE": "CE", "AR": "CR"}[code]
        ack = self.acks.build(raw, code, err)
        header = read_header(raw)
        audit = AuditRecord("hl7v2", outcome_code(CATEGORIES[err.category].http_status), self.connector.origin, peer,
                            detail=f"{header.control_id} {err.code}".strip())
        return ack, audit


_SAFE_PATH = re.compile(r"[^A-Za-z0-9_.\[\]]")
REPOINT_PAGE = 200  # resources read per page and written per transaction when a merge re-points references
REPOINT_SKIP = frozenset({"Provenance"})  # records of what happened: they keep naming the old Patient


class _Retry(Exception):
    """The re-pointing met a concurrent change (412/409) or a transient failure: read and try again."""


def _merge_error(code: str, text: str, category: Category = Category.INTERNAL) -> Hl7Error:
    """A merge that committed but whose references could not be re-pointed: the message is not done (a resend
    is processed again; the merge itself is then a no-op)."""
    if category is Category.INTERNAL:
        category = Category.UNPROCESSABLE
    return hl7_error(category, code, f"ADT merge: {text} ({code})", location="MRG^1", hl7_code=E_APPLICATION)


def _issue_code(response: FhirResponse) -> str:
    try:
        issue = (orjson.loads(response.body or b"{}").get("issue") or [{}])[0]
        return str((((issue.get("details") or {}).get("coding")) or [{}])[0].get("code") or "FHIRHUB-ERROR")
    except (orjson.JSONDecodeError, AttributeError, IndexError):
        return "FHIRHUB-ERROR"


def merged_patients(bundle: dict[str, Any]) -> list[str]:
    """The request URL (``Patient?identifier=…``) of every Patient a converted Bundle links ``replaced-by``
    another: the Patients an ADT^A40 merges away."""
    out = []
    for e in bundle.get("entry") or []:
        res = e.get("resource") or {}
        if res.get("resourceType") == "Patient" and any(
                isinstance(lk, dict) and lk.get("type") == "replaced-by" for lk in res.get("link") or []):
            url = (e.get("request") or {}).get("url")
            if isinstance(url, str) and url.startswith("Patient?"):
                out.append(url)
    return out


class _OldRef:
    """Finds and rewrites references to one Patient (relative, versioned or absolute on this server)."""

    def __init__(self, base_url: str, patient_id: str) -> None:
        self.pattern = re.compile(rf"^(?:{re.escape(base_url.rstrip('/'))}/)?Patient/{re.escape(patient_id)}(?:/_history/[^/]+)?$")

    def rewrite(self, resource: dict[str, Any], target: str) -> bool:
        """Point every reference to the old Patient at ``target``, except a Patient's own ``link``s."""
        changed = False
        for key, value in resource.items():
            if key in ("meta", "text", "contained") or (key == "link" and resource.get("resourceType") == "Patient"):
                continue
            changed = self._walk(value, target) or changed
        return changed

    def _walk(self, node: Any, target: str) -> bool:
        changed = False
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    if self.pattern.match(value):
                        node[key] = target
                        changed = True
                elif isinstance(value, dict | list):
                    changed = self._walk(value, target) or changed
        elif isinstance(node, list):
            for value in node:
                changed = self._walk(value, target) or changed
        return changed


def oversized_error(limit: int) -> Hl7Error:
    return hl7_error(Category.TOO_LARGE, "HL7-TOO-LARGE", f"the message exceeds {limit} bytes", location="MSH^1",
                     hl7_code=E_VALUE_TOO_LONG)


def unavailable_error() -> Hl7Error:
    return hl7_error(Category.TRANSIENT, "HL7-UNAVAILABLE", "the message cannot be stored now; send it again later")


def _written(response: FhirResponse) -> list[str]:
    """``Type/id/_history/v`` of every entry of a transaction-response."""
    try:
        body = orjson.loads(response.body or b"{}")
    except orjson.JSONDecodeError:
        return []
    out = []
    for e in body.get("entry") or []:
        loc = (e.get("response") or {}).get("location")
        if isinstance(loc, str):
            out.append(loc.split("/fhir/", 1)[-1])
    return out
