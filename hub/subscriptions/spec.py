"""What a Subscription asks for, parsed once: R4 criteria or a Backport IG topic, and the channel.

A :class:`Spec` is what the dispatcher matches with and the delivery engine sends by. It is
stored (as JSON) in ``sub_state`` beside the dispatcher's cursor, so a restart matches exactly
as before. Parsing raises :class:`SpecError` with a text that becomes ``Subscription.error``.

Matching: a change matches a :class:`Trigger` when its type and interaction fit, the search
criteria match (the resource after the change; for a delete, the version before it), and the
FHIRPath condition over ``%previous``/``%current`` is true. Topic triggers may also have
``previous`` criteria (the version before the change) as in R5 ``queryCriteria``.
"""

from __future__ import annotations

import functools
import re
import secrets
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import Table

from hub.errors import FhirError
from hub.subscriptions import fhirpath

FHIRHUB_SD = "https://fhirhub.dev/StructureDefinition/"
EXT_CONDITION = FHIRHUB_SD + "subscription-trigger-condition"
EXT_INTERACTION = FHIRHUB_SD + "subscription-interaction"
EXT_SECRET = FHIRHUB_SD + "subscription-secret"
BACKPORT_SD = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
EXT_FILTER = BACKPORT_SD + "backport-filter-criteria"
EXT_HEARTBEAT = BACKPORT_SD + "backport-heartbeat-period"
EXT_TIMEOUT = BACKPORT_SD + "backport-timeout"
EXT_MAX_COUNT = BACKPORT_SD + "backport-max-count"
EXT_CONTENT = BACKPORT_SD + "backport-payload-content"
PROFILE_BACKPORT = BACKPORT_SD + "backport-subscription"
TOPICS_FILE = "fhirhub-subscription-topics.json"
INTERACTIONS = ("create", "update", "delete")
FHIR_JSON = "application/fhir+json"
_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")


class SpecError(ValueError):
    """The Subscription cannot be served; the text goes to ``Subscription.error``."""


@dataclass(frozen=True)
class Trigger:
    res_type: str
    interactions: tuple[str, ...]
    current: str | None = None  # search criteria on the resource after the change
    previous: str | None = None  # search criteria on the version before it (topics)
    require_both: bool = False
    condition: str | None = None  # FHIRPath over %previous / %current
    filters: tuple[str, ...] = ()  # further criteria on the resource (topic filters)

    @property
    def needs_previous(self) -> bool:
        return self.previous is not None or bool(self.condition and "%previous" in self.condition)


@dataclass
class Spec:
    sub_id: str
    kind: str  # r4 | topic
    endpoint: str
    endpoint_key: str
    triggers: list[Trigger]
    payload: str | None = None  # MIME type, None: no body (R4) / content "empty" (topic)
    content: str = "id-only"  # topic: empty | id-only | full-resource
    headers: list[tuple[str, str]] = field(default_factory=list)
    secret: str = ""
    secret_generated: bool = False
    topic: str | None = None
    heartbeat: int | None = None  # seconds
    timeout: float | None = None  # seconds
    end: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> Spec:
        raw = orjson.loads(data)
        raw["triggers"] = [Trigger(**{**t, "interactions": tuple(t["interactions"]), "filters": tuple(t["filters"])})
                           for t in raw["triggers"]]
        raw["headers"] = [tuple(h) for h in raw["headers"]]
        return cls(**raw)

    def same_config(self, other: Spec | None) -> bool:
        return other is not None and self.to_json() == other.to_json()

    @property
    def types(self) -> frozenset[str]:
        return frozenset(t.res_type for t in self.triggers)


# ----------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class Topic:
    url: str
    title: str
    triggers: tuple[Trigger, ...]
    can_filter: dict[str, frozenset[str]]  # type -> filter parameters allowed
    resource: dict[str, Any]


class TopicCatalog:
    """The server's subscription topics, from ``profiles/fhirhub-subscription-topics.json``."""

    def __init__(self, topics: Sequence[Topic]) -> None:
        self.by_url = {t.url: t for t in topics}

    @classmethod
    def load(cls, profiles_dir: Path) -> TopicCatalog:
        path = Path(profiles_dir) / TOPICS_FILE
        if not path.exists():
            return cls([])
        bundle = orjson.loads(path.read_bytes())
        topics = []
        for entry in bundle.get("entry", []):
            res = entry["resource"]
            triggers = []
            for rt in res.get("resourceTrigger", []):
                res_type = str(rt["resource"]).rsplit("/", 1)[-1]
                qc = rt.get("queryCriteria") or {}
                triggers.append(Trigger(res_type, tuple(rt.get("supportedInteraction") or INTERACTIONS),
                                        qc.get("current"), qc.get("previous"), bool(qc.get("requireBoth")),
                                        rt.get("fhirPathCriteria")))
            can: dict[str, set[str]] = {}
            for f in res.get("canFilterBy", []):
                can.setdefault(str(f.get("resource", "")).rsplit("/", 1)[-1], set()).add(f["filterParameter"])
            topics.append(Topic(res["url"], res.get("title", ""), tuple(triggers),
                                {k: frozenset(v) for k, v in can.items()}, res))
        return cls(topics)

    def get(self, url: str) -> Topic | None:
        return self.by_url.get(url)


# ----------------------------------------------------------------------------- parsing


def _ext(element: Mapping[str, Any] | None, url: str) -> list[Any]:
    out = []
    for e in (element or {}).get("extension", []) or []:
        if isinstance(e, dict) and e.get("url") == url:
            out.append(next((v for k, v in e.items() if k.startswith("value")), None))
    return out


def endpoint_key(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def split_criteria(criteria: str) -> tuple[str, str]:
    """``Patient?name=x`` -> ("Patient", "name=x")."""
    res_type, _, query = criteria.strip().partition("?")
    if not _TYPE.match(res_type):
        raise SpecError(f"criteria must start with a resource type, as in Patient?name=smith (got {criteria[:80]!r})")
    return res_type, query


def is_topic_based(resource: Mapping[str, Any]) -> bool:
    profiles = (resource.get("meta") or {}).get("profile") or []
    criteria = str(resource.get("criteria") or "")
    return PROFILE_BACKPORT in profiles or criteria.startswith(("http://", "https://"))


def parse(resource: Mapping[str, Any], topics: TopicCatalog, check: Any) -> Spec:
    """The Spec of a Subscription resource. ``check(res_type, query)`` raises on criteria it cannot match."""
    sub_id = str(resource.get("id"))
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise SpecError(f"channel.type {channel.get('type')!r} is not supported: this server delivers rest-hook only")
    endpoint = str(channel.get("endpoint") or "")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError("channel.endpoint must be an absolute http(s) URL")
    headers = []
    for h in channel.get("header") or []:
        name, sep, value = str(h).partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name.strip()):
            raise SpecError("channel.header entries must look like 'Name: value'")
        headers.append((name.strip(), value.strip()))
    payload = channel.get("payload")
    if payload is not None and payload not in (FHIR_JSON, "application/json"):
        raise SpecError(f"channel.payload {payload!r} is not supported: use application/fhir+json, or leave it out")
    secret_values = _ext(resource, EXT_SECRET)
    secret = str(secret_values[0]) if secret_values and secret_values[0] else ""
    generated = False
    if not secret:
        secret, generated = secrets.token_urlsafe(32), True
    criteria = str(resource.get("criteria") or "")
    if not criteria:
        raise SpecError("criteria is required")
    if is_topic_based(resource):
        topic = topics.get(criteria)
        if topic is None:
            raise SpecError(f"unknown subscription topic {criteria[:200]!r} (see the server's topics)")
        filters: dict[str, list[str]] = {}
        for f in _ext(resource.get("_criteria"), EXT_FILTER):
            res_type, query = split_criteria(str(f))
            if res_type not in {t.res_type for t in topic.triggers}:
                raise SpecError(f"filter on {res_type}: topic {topic.url} is about {', '.join(sorted({t.res_type for t in topic.triggers}))}")
            allowed = topic.can_filter.get(res_type, frozenset())
            for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True):
                if name.split(":")[0] not in allowed:
                    raise SpecError(f"topic {topic.url} cannot filter {res_type} by {name!r} (allowed: {', '.join(sorted(allowed))})")
            _check(check, res_type, query)
            filters.setdefault(res_type, []).append(query)
        triggers = [
            Trigger(t.res_type, t.interactions, t.current, t.previous, t.require_both, t.condition,
                    tuple(filters.get(t.res_type, ())))
            for t in topic.triggers
        ]
        content_values = _ext(channel.get("_payload"), EXT_CONTENT)
        content = str(content_values[0]) if content_values else ("empty" if payload is None else "id-only")
        if content not in ("empty", "id-only", "full-resource"):
            raise SpecError(f"payload content {content!r} must be empty, id-only or full-resource")
        heartbeat = _ext(channel, EXT_HEARTBEAT)
        timeout = _ext(channel, EXT_TIMEOUT)
        return Spec(sub_id, "topic", endpoint, endpoint_key(endpoint), triggers, payload or FHIR_JSON, content, headers,
                    secret, generated, topic.url, int(heartbeat[0]) if heartbeat and heartbeat[0] else None,
                    float(timeout[0]) if timeout and timeout[0] else None, resource.get("end"))
    res_type, query = split_criteria(criteria)
    _check(check, res_type, query)
    interactions = tuple(str(v) for v in _ext(resource, EXT_INTERACTION)) or ("create", "update")
    bad = [i for i in interactions if i not in INTERACTIONS]
    if bad:
        raise SpecError(f"interaction extension: {', '.join(bad)} is not create, update or delete")
    conditions = _ext(resource, EXT_CONDITION)
    condition = str(conditions[0]) if conditions and conditions[0] else None
    if condition:
        try:
            fhirpath.compile_expression(condition)
        except fhirpath.FhirPathError as exc:
            raise SpecError(f"trigger condition: {exc}") from None
    trigger = Trigger(res_type, interactions, query, None, False, condition)
    return Spec(sub_id, "r4", endpoint, endpoint_key(endpoint), [trigger], payload, "full-resource" if payload else "empty",
                headers, secret, generated, None, None, None, resource.get("end"))


def _check(check: Any, res_type: str, query: str) -> None:
    try:
        check(res_type, query)
    except FhirError as err:
        raise SpecError(f"criteria {res_type}?{query[:200]}: {err.message}") from None


def subscription_types(resource: Mapping[str, Any], topics: TopicCatalog) -> frozenset[str]:
    """The resource types a Subscription would disclose (for the scope check: the client must be able to read them)."""
    criteria = str(resource.get("criteria") or "")
    if is_topic_based(resource):
        topic = topics.get(criteria)
        return frozenset(t.res_type for t in topic.triggers) if topic else frozenset()
    res_type = criteria.partition("?")[0].strip()
    return frozenset([res_type]) if _TYPE.match(res_type) else frozenset()


# ----------------------------------------------------------------------------- matching


class Matcher:
    """Search criteria matched in memory with the search engine's parser and matcher, each parsed once."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._queries: dict[tuple[str, str], Any] = {}

    def check(self, res_type: str, query: str) -> None:
        self._query(res_type, query)
        self.engine.check_criteria(res_type, query)

    def _query(self, res_type: str, query: str) -> Any:
        key = (res_type, query)
        q = self._queries.get(key)
        if q is None:
            from hub.search.query import parse_query

            params = urllib.parse.parse_qsl(query, keep_blank_values=True)
            q = parse_query(self.engine.registry, (res_type,), params, strict=True, base_url="")
            if len(self._queries) > 10_000:
                self._queries.clear()
            self._queries[key] = q
        return q

    def rows(self, resource: Mapping[str, Any]) -> Mapping[Table, list[dict[str, Any]]]:
        rows: Mapping[Table, list[dict[str, Any]]] = self.engine.indexer.extract(resource)
        return rows

    def matches(self, res_type: str, query: str | None, resource: Mapping[str, Any] | None,
                rows: Callable[[], Mapping[Table, list[dict[str, Any]]] | None] | None = None) -> bool:
        """Whether ``resource`` meets ``query``; ``rows`` gives its index rows (computed only when a query
        needs them: criteria without parameters, such as ``Patient?``, match every resource of the type)."""
        if resource is None:
            return False
        if not query:
            return True
        from hub.search.memory import MemoryMatcher

        index = rows() if rows is not None else None
        try:
            return bool(MemoryMatcher(resource, index if index is not None else self.rows(resource)).query(self._query(res_type, query)))
        except FhirError:
            return False


class Change:
    """One outbox change with the resource before and after it, index rows computed at most once."""

    def __init__(self, res_type: str, interaction: str, current: dict[str, Any] | None, previous: dict[str, Any] | None,
                 matcher: Matcher) -> None:
        self.res_type = res_type
        self.interaction = interaction
        self.current = current
        self.previous = previous
        self._matcher = matcher
        self._rows: dict[int, Any] = {}

    def _rows_of(self, which: int) -> Any:
        if which not in self._rows:
            res = self.current if which == 0 else self.previous
            self._rows[which] = self._matcher.rows(res) if res is not None else None
        return self._rows[which]

    def matches(self, t: Trigger) -> bool:
        if t.res_type != self.res_type or self.interaction not in t.interactions:
            return False
        subject = self.current if self.current is not None else self.previous  # a delete is judged on the last content
        which = 0 if self.current is not None else 1
        subject_rows = functools.partial(self._rows_of, which)
        m = self._matcher
        if t.previous is not None or t.require_both:
            cur_ok = m.matches(t.res_type, t.current, self.current, functools.partial(self._rows_of, 0)) if self.current is not None else False
            if self.previous is None:
                prev_ok = True  # resultForCreate: test-passes
            else:
                prev_ok = m.matches(t.res_type, t.previous, self.previous, functools.partial(self._rows_of, 1))
            if self.current is None:
                cur_ok = t.current is None
            if not ((cur_ok and prev_ok) if t.require_both else (cur_ok or prev_ok)):
                return False
        elif t.current and not m.matches(t.res_type, t.current, subject, subject_rows):
            return False
        for f in t.filters:
            if not m.matches(t.res_type, f, subject, subject_rows):
                return False
        if t.condition:
            try:
                return fhirpath.is_true(t.condition, {"previous": self.previous, "current": self.current})
            except fhirpath.FhirPathError:
                return False
        return True
