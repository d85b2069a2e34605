"""What a notification looks like on the wire: R4 rest-hook requests and Backport IG Bundles."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from hub.subscriptions.clock import to_instant
from hub.subscriptions.spec import FHIR_JSON, Spec

EVENT_NS = uuid.UUID("5b0f3c1e-8a44-4c59-9d2f-6f1c1d9a7e01")
STATUS_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
NOTIFICATION_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4"


def event_id(sub_id: str, outbox_pk: int) -> str:
    """The idempotency key of one event: the same for every attempt and every resend."""
    return str(uuid.uuid5(EVENT_NS, f"{sub_id}:{outbox_pk}"))


def signature(secret: str, key: str, body: bytes, now: float | None = None) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<Idempotency-Key>." + body)>``."""
    t = int(now if now is not None else time.time())
    mac = hmac.new(secret.encode(), f"{t}.{key}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, key: str, body: bytes, tolerance: float | None = None) -> bool:
    """Receiver side (and tests): check an ``X-Fhirhub-Signature`` header."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if tolerance is not None and abs(time.time() - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.{key}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass
class Event:
    """One matched change as the sender needs it."""

    pk: int  # delivery row
    sub_id: str
    outbox_pk: int
    event_number: int | None
    res_type: str
    res_id: str
    version: int
    interaction: str
    at: int  # the change's commit time (micros)
    data: bytes | None  # the version's JSON (None for a delete, or not loaded)


@dataclass
class Request:
    method: str
    url: str
    body: bytes
    headers: dict[str, str]


def status_parameters(spec: Spec, base_url: str, status: str, kind: str, events_since: int,
                      events: list[Event] | None = None, error: str | None = None,
                      extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A SubscriptionStatus as R4 Parameters (profile backport-subscription-status-r4)."""
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base_url}/Subscription/{spec.sub_id}"}},
    ]
    if spec.topic:
        params.append({"name": "topic", "valueCanonical": spec.topic})
    params += [
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since)},
    ]
    for ev in events or []:
        part: list[dict[str, Any]] = []
        if ev.event_number is not None:
            part.append({"name": "event-number", "valueString": str(ev.event_number)})
        part.append({"name": "timestamp", "valueInstant": to_instant(ev.at)})
        part.append({"name": "focus", "valueReference": {"reference": f"{base_url}/{ev.res_type}/{ev.res_id}"}})
        params.append({"name": "notification-event", "part": part})
    if error:
        params.append({"name": "error", "valueCodeableConcept": {"text": error[:1000]}})
    params += extra or []
    return {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": params}


def notification_bundle(spec: Spec, base_url: str, status: str, kind: str, events_since: int, events: list[Event],
                        now: int, content: str | None = None, error: str | None = None,
                        extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Backport notification Bundle (type history): the status first, then the focus resources."""
    content = content or spec.content
    status_id = str(uuid.uuid4())
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{status_id}",
        "resource": {**status_parameters(spec, base_url, status, kind, events_since,
                                         events, error, extra),
                     "id": status_id},
        "request": {"method": "GET", "url": f"{base_url}/Subscription/{spec.sub_id}/$status"},
        "response": {"status": "200"},
    }]
    if content == "empty":
        # no focus at all: strip the references from the status too
        for p in entries[0]["resource"]["parameter"]:
            if p["name"] == "notification-event":
                p["part"] = [x for x in p["part"] if x["name"] != "focus"]
    else:
        for ev in events:
            entry: dict[str, Any] = {"fullUrl": f"{base_url}/{ev.res_type}/{ev.res_id}"}
            if content == "full-resource" and ev.data is not None:
                entry["resource"] = orjson.loads(ev.data)
            method = {"create": "POST", "update": "PUT", "delete": "DELETE"}[ev.interaction]
            entry["request"] = {"method": method, "url": ev.res_type if method == "POST" else f"{ev.res_type}/{ev.res_id}"}
            entry["response"] = {"status": {"POST": "201", "PUT": "200", "DELETE": "204"}[method],
                                 "etag": f'W/"{ev.version}"'}
            entries.append(entry)
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "meta": {"profile": [NOTIFICATION_PROFILE]},
            "type": "history", "timestamp": to_instant(now), "entry": entries}


def event_request(spec: Spec, ev: Event, base_url: str, status: str, now: int, attempt: int) -> Request:
    """The HTTP request that delivers ``ev`` to ``spec``'s endpoint."""
    key = event_id(spec.sub_id, ev.outbox_pk)
    headers = {
        "Idempotency-Key": key,
        "X-Fhirhub-Subscription": f"Subscription/{spec.sub_id}",
        "X-Fhirhub-Event": f"{ev.res_type}/{ev.res_id}/_history/{ev.version}",
        "X-Fhirhub-Interaction": ev.interaction,
        "X-Fhirhub-Attempt": str(attempt),
    }
    endpoint = spec.endpoint
    if spec.kind == "topic":
        bundle = notification_bundle(spec, base_url, status, "event-notification", ev.event_number or 0, [ev], now)
        body = orjson.dumps(bundle)
        method, url = "POST", endpoint
        headers["Content-Type"] = FHIR_JSON
        if ev.event_number is not None:
            headers["X-Fhirhub-Event-Number"] = str(ev.event_number)
    elif spec.payload is None:
        method, url, body = "POST", endpoint, b""  # R4: no payload, an empty POST
    else:
        # R4: with a payload the endpoint is a FHIR base, and the change is replayed as an update (or delete)
        url = f"{endpoint.rstrip('/')}/{ev.res_type}/{ev.res_id}"
        if ev.interaction == "delete" or ev.data is None:
            method, body = "DELETE", b""
        else:
            method, body = "PUT", ev.data
            headers["Content-Type"] = spec.payload
    for name, value in spec.headers:
        headers[name] = value
    headers["X-Fhirhub-Signature"] = signature(spec.secret, key, body)
    return Request(method, url, body, headers)


def control_request(spec: Spec, base_url: str, kind: str, status: str, events_since: int, now: int) -> Request:
    """A handshake or heartbeat notification (topic-based subscriptions)."""
    body = orjson.dumps(notification_bundle(spec, base_url, status, kind, events_since, [], now))
    key = str(uuid.uuid4())
    headers = {"Idempotency-Key": key, "X-Fhirhub-Subscription": f"Subscription/{spec.sub_id}",
               "Content-Type": FHIR_JSON, "X-Fhirhub-Notification": kind}
    for name, value in spec.headers:
        headers[name] = value
    headers["X-Fhirhub-Signature"] = signature(spec.secret, key, body)
    return Request("POST", spec.endpoint, body, headers)
