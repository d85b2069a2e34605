"""FHIR operations of the subscription service, registered on the router (``FhirRouter.operations``).

* ``GET Subscription/{id}/$status`` (and ``GET Subscription/$status?_id=a,b``): a Bundle of
  SubscriptionStatus Parameters (Backport IG ``query-status``) for R4 and topic subscriptions
  alike, with the hub's additions: ``backlog`` (pending deliveries), ``dead``, ``last-error``,
  ``last-error-at`` and ``last-delivered-at``.
* ``GET Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=``: the recorded
  events as a notification Bundle (``query-event``).
* ``POST Subscription/{id}/$resend`` (or ``POST Subscription/$resend`` with ``subscription``):
  replays deliveries, by ``status`` (dead, the default; delivered; all), ``resource``
  (``Type/id``), time range (``since``/``until``, on the change's time) or event numbers. The
  replays are new delivery rows (same event, same ``Idempotency-Key``); parked dead rows become
  ``resent``. Needs the ``u`` scope on Subscription.
* ``GET $workflow-runs?workflow=&status=&resource=Type/id&run=&_count=``: workflow runs, newest
  first, each a Parameters resource with its steps. Needs the ``fhirhub/admin`` scope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import func, insert, select, update

from hub.errors import Category, FhirError, invalid
from hub.interactions.request import FhirRequest, FhirResponse
from hub.security.policy import forbidden
from hub.subscriptions import notify
from hub.subscriptions.clock import parse_instant, to_instant
from hub.subscriptions.notify import Event
from hub.subscriptions.tables import delivery_t, run_t, step_t

if TYPE_CHECKING:
    from hub.interactions.router import FhirRouter, Route
    from hub.subscriptions.service import SubscriptionService, SubState


def register(router: FhirRouter, service: SubscriptionService) -> None:
    ops = Operations(service)
    router.operations.update({
        "$status": ops.status,
        "$events": ops.events,
        "$resend": ops.resend,
        "$workflow-runs": ops.workflow_runs,
    })


def _params(req: FhirRequest) -> dict[str, list[str]]:
    """Query parameters and, for a POST, a Parameters body's primitive values."""
    out: dict[str, list[str]] = {}
    for k, v in req.params:
        if k not in ("_format", "_pretty"):
            out.setdefault(k, []).append(v)
    body = req.body
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for p in body.get("parameter", []) or []:
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if isinstance(value, dict) and "reference" in value:
                value = value["reference"]
            if value is not None:
                out.setdefault(str(p.get("name")), []).append(str(value))
    return out


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _int(params: dict[str, list[str]], name: str) -> int | None:
    value = _one(params, name)
    if value is None:
        return None
    if not value.isdigit():
        raise invalid("FHIRHUB-OPERATION-PARAM", f"{name} must be a non-negative integer")
    return int(value)


def _instant(params: dict[str, list[str]], name: str) -> int | None:
    value = _one(params, name)
    if value is None:
        return None
    micros = parse_instant(value)
    if micros is None:
        raise invalid("FHIRHUB-OPERATION-PARAM", f"{name} must be an instant with a time zone")
    return micros


class Operations:
    def __init__(self, service: SubscriptionService) -> None:
        self.service = service

    def _state(self, sub_id: str) -> SubState:
        st = self.service.subscription(sub_id)
        if st is None:
            raise FhirError(Category.NOT_FOUND, "FHIRHUB-SUBSCRIPTION-UNKNOWN", f"Subscription/{sub_id} is not known to the dispatcher")
        return st

    @staticmethod
    def _subscription_only(route: Route) -> None:
        if route.res_type != "Subscription":
            raise FhirError(Category.NOT_SUPPORTED, "FHIRHUB-OPERATION-UNKNOWN", f"Operation {route.operation} applies to Subscription")

    # ------------------------------------------------------------------ $status
    def status(self, req: FhirRequest, route: Route) -> FhirResponse:
        self._subscription_only(route)
        if req.method not in ("GET", "POST"):
            raise FhirError(Category.NOT_ALLOWED, "FHIRHUB-METHOD-NOT-ALLOWED", "$status is read with GET or POST")
        params = _params(req)
        ids = [route.res_id] if route.res_id else [i for v in params.get("_id", params.get("id", [])) for i in v.split(",")]
        if not ids:
            ids = sorted(self.service.states)
        entries = []
        with self.service.db.read() as conn:
            d = delivery_t.c
            counts: dict[tuple[str, str], int] = {
                (r.sub_id, r.status): r.n
                for r in conn.execute(select(d.sub_id, d.status, func.count().label("n"))
                                      .where(d.sub_id.in_(ids), d.status.in_(("pending", "dead"))).group_by(d.sub_id, d.status))
            }
        for sid in ids:
            st = self.service.subscription(sid)
            if st is None:
                if route.res_id:
                    self._state(sid)
                continue
            entries.append({"fullUrl": f"urn:uuid:{notify.event_id(sid, 0)}",
                            "resource": self._status_resource(req, st, counts.get((sid, "pending"), 0), counts.get((sid, "dead"), 0)),
                            "search": {"mode": "match"}})
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
        return FhirResponse.json(200, bundle)

    def _status_resource(self, req: FhirRequest, st: SubState, backlog: int, dead: int) -> dict[str, Any]:
        extra: list[dict[str, Any]] = [
            {"name": "backlog", "valueInteger": backlog},
            {"name": "dead", "valueInteger": dead},
        ]
        if st.last_error:
            extra.append({"name": "last-error", "valueString": st.last_error})
        if st.last_error_at:
            extra.append({"name": "last-error-at", "valueInstant": to_instant(st.last_error_at)})
        if st.last_delivered_at:
            extra.append({"name": "last-delivered-at", "valueInstant": to_instant(st.last_delivered_at)})
        if st.spec is None:
            params: list[dict[str, Any]] = [
                {"name": "subscription", "valueReference": {"reference": f"{req.base_url}/Subscription/{st.sub_id}"}},
                {"name": "status", "valueCode": st.status},
                {"name": "type", "valueCode": "query-status"},
                {"name": "events-since-subscription-start", "valueString": str(st.events)},
            ]
            if st.error:
                params.append({"name": "error", "valueCodeableConcept": {"text": st.error}})
            return {"resourceType": "Parameters", "meta": {"profile": [notify.STATUS_PROFILE]}, "parameter": params + extra}
        return notify.status_parameters(st.spec, req.base_url, st.status, "query-status", st.events, error=st.error, extra=extra)

    # ------------------------------------------------------------------ $events
    def events(self, req: FhirRequest, route: Route) -> FhirResponse:
        self._subscription_only(route)
        if not route.res_id:
            raise invalid("FHIRHUB-OPERATION-PARAM", "$events is invoked on one Subscription: Subscription/{id}/$events")
        st = self._state(route.res_id)
        params = _params(req)
        since, until = _int(params, "eventsSinceNumber"), _int(params, "eventsUntilNumber")
        content = _one(params, "content") or (st.spec.content if st.spec else "id-only")
        if content not in ("empty", "id-only", "full-resource"):
            raise invalid("FHIRHUB-OPERATION-PARAM", "content must be empty, id-only or full-resource")
        d = delivery_t.c
        stmt = select(d.pk, d.outbox_pk, d.event_number, d.res_type, d.res_id, d.version, d.interaction, d.created_at)
        stmt = stmt.where(d.sub_id == st.sub_id, d.resend_of.is_(None))
        if since is not None:
            stmt = stmt.where(d.event_number >= since)
        if until is not None:
            stmt = stmt.where(d.event_number <= until)
        stmt = stmt.order_by(d.pk).limit(self.service.settings.max_page_size)
        events: list[Event] = []
        with self.service.db.read() as conn:
            for r in conn.execute(stmt):
                data = None
                if content == "full-resource" and r.interaction != "delete":
                    stored = self.service.hub.ctx.repo.vread(conn, r.res_type, r.res_id, r.version)
                    data = stored.data if stored is not None else None
                events.append(Event(r.pk, st.sub_id, r.outbox_pk, r.event_number, r.res_type, r.res_id, r.version,
                                    r.interaction, r.created_at, data))
        if st.spec is None:
            raise FhirError(Category.CONFLICT, "FHIRHUB-SUBSCRIPTION-INVALID", f"Subscription/{st.sub_id} is in error: {st.error}")
        can_see = req.principal.permissions.can_see
        events = [e for e in events if can_see(e.res_type)]
        bundle = notify.notification_bundle(st.spec, req.base_url, st.status, "query-event", st.events, events,
                                            self.service.clock(), content=content)
        return FhirResponse.json(200, bundle)

    # ------------------------------------------------------------------ $resend
    def resend(self, req: FhirRequest, route: Route) -> FhirResponse:
        self._subscription_only(route)
        if req.method != "POST":
            raise FhirError(Category.NOT_ALLOWED, "FHIRHUB-METHOD-NOT-ALLOWED", "$resend is invoked with POST")
        if not req.principal.permissions.allows("Subscription", "u"):
            raise forbidden("$resend needs the 'u' scope on Subscription")
        params = _params(req)
        sub_ids = [route.res_id] if route.res_id else [v.rsplit("/", 1)[-1] for v in params.get("subscription", [])]
        if not sub_ids:
            raise invalid("FHIRHUB-OPERATION-PARAM", "$resend needs a subscription: Subscription/{id}/$resend, or the subscription parameter")
        states = [self._state(s) for s in sub_ids]
        status = _one(params, "status") or "dead"
        if status not in ("dead", "delivered", "all"):
            raise invalid("FHIRHUB-OPERATION-PARAM", "status must be dead, delivered or all")
        d = delivery_t.c
        cond: list[Any] = [d.sub_id.in_([s.sub_id for s in states]), d.status.in_(("dead", "delivered", "resent") if status == "all"
                                                                       else (status,))]
        resource = _one(params, "resource")
        if resource:
            res_type, _, res_id = resource.partition("/")
            if not res_type or not res_id:
                raise invalid("FHIRHUB-OPERATION-PARAM", "resource must be Type/id")
            cond += [d.res_type == res_type, d.res_id == res_id]
        since, until = _instant(params, "since"), _instant(params, "until")
        if since is not None:
            cond.append(d.created_at >= since)
        if until is not None:
            cond.append(d.created_at <= until)
        first, last = _int(params, "eventsSinceNumber"), _int(params, "eventsUntilNumber")
        if first is not None:
            cond.append(d.event_number >= first)
        if last is not None:
            cond.append(d.event_number <= last)
        now = self.service.clock()
        cols = [d.sub_id, d.endpoint_key, d.outbox_pk, d.event_number, d.res_type, d.res_id, d.version, d.interaction,
                d.created_at]
        with self.service.db.write() as conn:
            rows = conn.execute(select(d.pk, *cols).where(*cond).order_by(d.pk).limit(100_000)).all()
            if rows:
                conn.execute(insert(delivery_t), [
                    {"sub_id": r.sub_id, "endpoint_key": r.endpoint_key, "outbox_pk": r.outbox_pk,
                     "event_number": r.event_number, "res_type": r.res_type, "res_id": r.res_id, "version": r.version,
                     "interaction": r.interaction, "created_at": r.created_at, "status": "pending", "attempts": 0,
                     "next_at": now, "resend_of": r.pk}
                    for r in rows
                ])
                dead = [r.pk for r in rows]
                for i in range(0, len(dead), 500):
                    conn.execute(update(delivery_t).where(d.pk.in_(dead[i : i + 500]), d.status == "dead")
                                 .values(status="resent"))
        self.service.kick({r.endpoint_key for r in rows})
        out = {"resourceType": "Parameters", "parameter": [{"name": "resent", "valueInteger": len(rows)}]}
        return FhirResponse.json(200, out)

    # ------------------------------------------------------------------ $workflow-runs
    def workflow_runs(self, req: FhirRequest, route: Route) -> FhirResponse:
        if route.res_type is not None or req.method != "GET":
            raise FhirError(Category.NOT_SUPPORTED, "FHIRHUB-OPERATION-UNKNOWN", "$workflow-runs is a system operation: GET [base]/$workflow-runs")
        if not req.principal.permissions.admin:
            raise forbidden("Workflow runs need the fhirhub/admin scope")
        params = _params(req)
        r = run_t.c
        stmt = select(run_t)
        if (wf := _one(params, "workflow")) is not None:
            stmt = stmt.where(r.workflow == wf)
        if (status := _one(params, "status")) is not None:
            stmt = stmt.where(r.status.in_(status.split(",")))
        if (resource := _one(params, "resource")) is not None:
            res_type, _, res_id = resource.partition("/")
            stmt = stmt.where(r.res_type == res_type, r.res_id == res_id)
        if (run_id := _one(params, "run")) is not None:
            stmt = stmt.where(r.run_id == run_id)
        count = min(_int(params, "_count") or self.service.settings.default_page_size, self.service.settings.max_page_size)
        stmt = stmt.order_by(r.pk.desc()).limit(count)
        with self.service.db.read() as conn:
            runs = conn.execute(stmt).all()
            steps: dict[int, list[Any]] = {}
            if runs:
                s = step_t.c
                for row in conn.execute(select(step_t).where(s.run_pk.in_([x.pk for x in runs])).order_by(s.run_pk, s.idx)):
                    steps.setdefault(row.run_pk, []).append(row)
        entries = [{"fullUrl": f"urn:uuid:{x.run_id}", "resource": run_parameters(x, steps.get(x.pk, [])),
                    "search": {"mode": "match"}} for x in runs]
        return FhirResponse.json(200, {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})


def run_parameters(run: Any, steps: list[Any]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "run", "valueString": run.run_id},
        {"name": "workflow", "valueString": run.workflow},
        {"name": "status", "valueCode": run.status},
        {"name": "trigger", "valueReference": {"reference": f"{run.res_type}/{run.res_id}/_history/{run.version}"}},
        {"name": "interaction", "valueCode": run.interaction},
        {"name": "created", "valueInstant": to_instant(run.created_at)},
        {"name": "next-step", "valueInteger": run.step},
    ]
    for name, value in (("started", run.started_at), ("ended", run.ended_at), ("wake-at", run.wake_at)):
        if value:
            params.append({"name": name, "valueInstant": to_instant(value)})
    if run.reason:
        params.append({"name": "reason", "valueString": run.reason})
    if run.error:
        params.append({"name": "error", "valueString": run.error})
    for s in steps:
        part: list[dict[str, Any]] = [
            {"name": "index", "valueInteger": s.idx},
            {"name": "name", "valueString": s.name},
            {"name": "kind", "valueCode": s.kind},
            {"name": "status", "valueCode": s.status},
            {"name": "key", "valueString": s.key},
            {"name": "attempts", "valueInteger": s.attempts},
            {"name": "started", "valueInstant": to_instant(s.started_at)},
        ]
        if s.ended_at:
            part.append({"name": "ended", "valueInstant": to_instant(s.ended_at)})
        if s.result:
            part.append({"name": "result", "valueString": s.result})
        if s.error:
            part.append({"name": "error", "valueString": s.error})
        params.append({"name": "step", "part": part})
    return {"resourceType": "Parameters", "id": run.run_id, "parameter": params}


__all__ = ["orjson", "register", "run_parameters"]
