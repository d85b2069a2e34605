"""``connectors/fhir-*.yaml``: the configuration of a ``fhir-rest`` connector, checked at start.

A file is YAML, loaded with the line-keeping loader of :mod:`hub.hl7.yamlload` and checked
against ``hub/sync/schema/fhir-rest.schema.json``; every error names the file and the line.
Secrets (private key, client secret, notification token) are never written in the file:
it says ``{env: NAME}`` or ``{file: PATH}`` (relative to the file's folder) and the value is
read at load time. A :class:`Secret` never shows its value in ``repr`` or logs.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from hub.hl7.errors import MappingFileError
from hub.hl7.yamlload import line_of, load_yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "fhir-rest.schema.json"
PATTERN = "fhir-*.yaml"
POLICIES = ("remote-wins", "local-wins", "manual")


class ConnectorConfigError(Exception):
    """A connector file is broken. ``str()`` names the file and the line; never a secret's value."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.detail = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


class Secret:
    """A value read from the environment or a file; shown as ``Secret(env:NAME)``, never as itself."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__


@dataclass(frozen=True)
class AuthConfig:
    method: str  # smart-backend | client-secret | none
    client_id: str | None = None
    private_key: Secret | None = None
    alg: str = "ES384"
    kid: str | None = None
    client_secret: Secret | None = None
    scopes: tuple[str, ...] = ()
    token_url: str | None = None
    token_leeway: float = 30.0


@dataclass(frozen=True)
class Schedule:
    every: float | None = None  # seconds
    cron: str | None = None


@dataclass(frozen=True)
class ConnectorConfig:
    name: str
    base_url: str
    auth: AuthConfig
    path: str = "<memory>"
    enabled: bool = True
    description: str = ""
    pull_types: tuple[str, ...] = ()
    pull_mode: str = "search"
    page_size: int = 200
    schedule: Schedule = field(default_factory=lambda: Schedule(every=300.0))
    since: str | None = None
    pull_deletes: bool = False
    pull_at_start: bool = True
    push_types: tuple[str, ...] = ()
    push_from: str = "now"
    link_identifier: bool = True
    push_deletes: bool = False
    push_poll: float = 5.0
    push_batch: int = 200
    conflict: str = "remote-wins"
    match: dict[str, tuple[str, ...]] = field(default_factory=dict)
    timeout: float = 30.0
    attempts: int = 5
    max_wait: float = 60.0
    notify_token: Secret | None = None

    @property
    def origin(self) -> str:
        """The ``origin`` of the changes a pull writes (outbox rows), and the audit agent."""
        return f"sync:{self.name}"

    @property
    def source(self) -> str:
        """``meta.source`` of pulled resources."""
        return f"urn:fhirhub:connector:{self.name}"

    @property
    def link_system(self) -> str:
        """The identifier system under which the local id travels to the remote."""
        return f"urn:fhirhub:connector:{self.name}"

    @property
    def consumer(self) -> str:
        """The push's outbox cursor."""
        return f"sync:{self.name}"

    def match_systems(self, res_type: str) -> tuple[str, ...]:
        return self.match.get(res_type, self.match.get("*", ()))

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.pull_types + self.push_types))


@functools.cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def duration(value: float | int | str) -> float:
    """``90``, ``"30s"``, ``"5m"``, ``"1h"``, ``"250ms"`` -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(raw: dict[str, Any], base_dir: Path, path: str, doc: Any, where: list[Any]) -> Secret:
    if "env" in raw:
        name = raw["env"]
        value = os.environ.get(name)
        if value is None or not value.strip():
            raise ConnectorConfigError(path, line_of(doc, where), f"environment variable {name} is not set")
        return Secret(value, f"env:{name}")
    file = Path(os.path.expanduser(raw["file"]))
    if not file.is_absolute():
        file = base_dir / file
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConnectorConfigError(path, line_of(doc, where), f"secret file {file} cannot be read ({type(exc).__name__})") from None
    return Secret(text.strip() if not text.lstrip().startswith("-----BEGIN") else text, f"file:{file}")


def parse(doc: Any, path: str = "<memory>", base_dir: Path | None = None,
          resource_types: Iterable[str] | None = None) -> ConnectorConfig:
    """Check one loaded document and build its configuration (secrets resolved)."""
    base_dir = base_dir or Path.cwd()
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        where = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            extra = [k for k in err.instance if k not in err.schema.get("properties", {})]
            where += extra[:1]  # point at the unknown key itself
        label = ".".join(str(p) for p in where) or "(top level)"
        raise ConnectorConfigError(path, line_of(doc, where), f"{label}: {_message(err)}")
    known = frozenset(resource_types) if resource_types is not None else None
    for section in ("pull", "push"):
        for i, res_type in enumerate((doc.get(section) or {}).get("types") or []):
            if known is not None and res_type not in known:
                raise ConnectorConfigError(path, line_of(doc, [section, "types", i]), f"{res_type} is not an R4 resource type")
    base_url = str(doc["base_url"]).rstrip("/")
    if base_url.startswith("http://") and not doc.get("allow_insecure_http") and not is_loopback_url(base_url):
        raise ConnectorConfigError(path, line_of(doc, ["base_url"]),
                                   "base_url must be https:// (http:// only on loopback, or with allow_insecure_http: true)")
    a = doc["auth"]
    scopes = a.get("scopes") or []
    auth = AuthConfig(
        method=a["method"],
        client_id=a.get("client_id"),
        private_key=_secret(a["private_key"], base_dir, path, doc, ["auth", "private_key"]) if "private_key" in a else None,
        alg=a.get("alg", "ES384"),
        kid=a.get("kid"),
        client_secret=_secret(a["client_secret"], base_dir, path, doc, ["auth", "client_secret"]) if "client_secret" in a else None,
        scopes=tuple(scopes.split() if isinstance(scopes, str) else scopes),
        token_url=a.get("token_url"),
        token_leeway=float(a.get("token_leeway", 30)),
    )
    if auth.method == "smart-backend":
        from hub.security.assertion import load_private_key

        assert auth.private_key is not None
        try:
            key = load_private_key(auth.private_key.reveal().encode())
        except (ValueError, TypeError):
            raise ConnectorConfigError(path, line_of(doc, ["auth", "private_key"]), "private_key is not a PEM RSA or EC private key") from None
        kind = type(key).__name__
        if (auth.alg == "RS384") != ("RSA" in kind):
            raise ConnectorConfigError(path, line_of(doc, ["auth", "alg"]), f"alg {auth.alg} does not fit the private key")
    pull = doc.get("pull") or {}
    push = doc.get("push") or {}
    sched = pull.get("schedule") or {"every": 300}
    http = doc.get("http") or {}
    notifications = doc.get("notifications")
    return ConnectorConfig(
        name=doc["name"],
        base_url=base_url,
        auth=auth,
        path=path,
        enabled=bool(doc.get("enabled", True)),
        description=str(doc.get("description") or ""),
        pull_types=tuple(pull.get("types") or ()),
        pull_mode=pull.get("mode", "search"),
        page_size=int(pull.get("page_size", 200)),
        schedule=Schedule(every=duration(sched["every"])) if "every" in sched else Schedule(cron=sched["cron"]),
        since=pull.get("since"),
        pull_deletes=bool(pull.get("deletes", False)),
        pull_at_start=bool(pull.get("at_start", True)),
        push_types=tuple(push.get("types") or ()),
        push_from=push.get("from", "now"),
        link_identifier=bool(push.get("link_identifier", True)),
        push_deletes=bool(push.get("deletes", False)),
        push_poll=float(push.get("poll", 5)),
        push_batch=int(push.get("batch", 200)),
        conflict=doc.get("conflict", "remote-wins"),
        match={k: tuple(v) for k, v in (doc.get("match") or {}).items()},
        timeout=float(http.get("timeout", 30)),
        attempts=int(http.get("attempts", 5)),
        max_wait=float(http.get("max_wait", 60)),
        notify_token=_secret(notifications["token"], base_dir, path, doc, ["notifications", "token"]) if notifications else None,
    )


SECRET_KEYS = ("private_key", "client_secret", "token")


def _message(err: jsonschema.ValidationError) -> str:
    """The schema's message, except where it would repeat what was written in a secret's place."""
    if any(p in SECRET_KEYS for p in err.absolute_path):
        return "a secret is {env: NAME} or {file: PATH}, never the value itself"
    if err.validator == "additionalProperties":
        return err.message.replace("Additional properties are not allowed", "unknown key(s)")
    return err.message if len(err.message) < 300 else err.message[:300] + "…"


def load_file(path: Path, resource_types: Iterable[str] | None = None) -> ConnectorConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConnectorConfigError(str(path), None, f"cannot read ({type(exc).__name__})") from None
    try:
        doc = load_yaml(text, str(path))
    except MappingFileError as exc:
        raise ConnectorConfigError(exc.path, exc.line, exc.detail) from None
    if not isinstance(doc, dict):
        raise ConnectorConfigError(str(path), 1, "a connector file is a YAML mapping")
    return parse(doc, str(path), path.parent, resource_types)


def load_dir(folder: Path, resource_types: Iterable[str] | None = None, *, enabled_only: bool = True) -> list[ConnectorConfig]:
    """Every ``fhir-*.yaml`` in ``folder`` (sorted by file name); names must be unique."""
    if not folder.is_dir():
        return []
    out: list[ConnectorConfig] = []
    seen: dict[str, str] = {}
    for path in sorted(folder.glob(PATTERN)):
        cfg = load_file(path, resource_types)
        if cfg.name in seen:
            raise ConnectorConfigError(str(path), None, f"connector name {cfg.name!r} is also used by {seen[cfg.name]}")
        seen[cfg.name] = str(path)
        if cfg.enabled or not enabled_only:
            out.append(cfg)
    return out
