"""Connector definitions: ``connectors/*.yaml``, checked with jsonschema at start.

Every error names the file and the line (:class:`ConnectorFileError`), so ``fhirhub serve``
refuses to start with e.g. ``mllp-inbound.yaml:7: schema: at port: 70000 is greater than
the maximum of 65535``. Environment overrides (for tests and for running several hubs on one
machine) are applied after the check; see :mod:`hub.hl7.settings`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from hub.hl7.errors import MappingFileError
from hub.hl7.settings import Hl7Settings, override
from hub.hl7.yamlload import LDict, line_of, load_yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "connectors" / "schema" / "connector.schema.json"


class ConnectorFileError(MappingFileError):
    """A connector file is broken; ``str()`` names the file and line."""


@dataclass(frozen=True)
class Tls:
    certfile: Path | None = None
    keyfile: Path | None = None
    ca: Path | None = None  # listener: client CA (mutual TLS); sender: CA of the receiver
    server_hostname: str | None = None


@dataclass(frozen=True)
class Listener:
    name: str
    path: str  # the file it came from
    host: str
    port: int
    mappings: Path
    system: str | None = None
    tls: Tls | None = None
    message_types: tuple[str, ...] = ()  # empty: whatever the mapping set maps
    sender_systems: dict[str, str] = field(default_factory=dict)
    timezone: str | None = None
    parser: str = "split"
    ack_mode: str = "original"  # original | enhanced
    ordering: str = "connection"  # connection | patient
    apply: str = "immediate"  # immediate | idle (apply only after apply_idle seconds without a message)
    apply_idle: float = 0.2
    workers: int = 4
    mapping_processes: int = 0  # 0: map in the worker threads; N: in N processes (hub/hl7/mapper.py)
    max_message_bytes: int = 1024 * 1024
    max_connections: int = 64
    max_backlog: int = 20000
    frame_timeout: float = 30.0
    idle_timeout: float = 3600.0
    ack_sending_application: str | None = None
    ack_sending_facility: str | None = None

    @property
    def origin(self) -> str:
        """What the changes this listener causes carry as ``origin`` (and the audit client id)."""
        return f"mllp:{self.name}"

    def accepts(self, message_type: str) -> bool:
        """Is ``ADT^A01`` among the accepted types (``*`` and ``ADT^*`` wildcards)?"""
        if not self.message_types:
            return True
        code = message_type.split("^", 1)[0]
        return any(t == "*" or t == message_type or t == f"{code}^*" for t in self.message_types)


@dataclass(frozen=True)
class Sender:
    name: str
    path: str
    host: str
    port: int
    mappings: Path
    system: str | None = None
    tls: Tls | None = None
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip_origins: tuple[str, ...] = ()
    start_at: str = "head"
    sending_application: str = "FHIRHUB"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    ack_timeout: float = 30.0
    connect_timeout: float = 10.0
    max_message_bytes: int = 1024 * 1024
    retry_initial: float = 1.0
    retry_max: float = 300.0
    retry_attempts: int = 10

    @property
    def consumer(self) -> str:
        """Its outbox cursor name."""
        return f"mllp-sender:{self.name}"

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed tries: initial * 2^(n-1), capped."""
        return float(min(self.retry_max, self.retry_initial * (2 ** max(0, attempts - 1))))


@dataclass
class Connectors:
    listeners: list[Listener] = field(default_factory=list)
    senders: list[Sender] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)

    def listener(self, name: str) -> Listener | None:
        return next((c for c in self.listeners if c.name == name), None)

    def sender(self, name: str) -> Sender | None:
        return next((c for c in self.senders if c.name == name), None)


@lru_cache(maxsize=1)
def _validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _check(data: Any, rel: str) -> None:
    errors = list(_validator().iter_errors(data))
    if not errors:
        return
    # the deepest error locates best; among equals, the one jsonschema ranks best
    best = jsonschema.exceptions.best_match(errors)
    deepest = max(errors, key=lambda e: len(list(e.absolute_path)))
    err = deepest if len(list(deepest.absolute_path)) > len(list(best.absolute_path)) else best
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    raise ConnectorFileError(rel, line_of(data, list(err.absolute_path)), f"schema: at {where}: {err.message}")


def _path(value: str | None, base: Path) -> Path | None:
    if value is None:
        return None
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def load(settings: Hl7Settings | None = None, directory: Path | None = None) -> Connectors:
    """Every ``*.yaml`` in the connectors directory, checked; disabled ones are only named."""
    settings = settings or Hl7Settings()
    root = Path(directory) if directory is not None else Path(settings.connectors_dir)
    out = Connectors()
    if not root.is_dir():
        return out
    base = root.resolve().parent  # relative paths in connector files are relative to the deployment root
    names: dict[str, str] = {}
    ports: dict[tuple[str, int], str] = {}
    for file in sorted(list(root.glob("*.yaml")) + list(root.glob("*.yml"))):
        rel = file.name
        try:
            data = load_yaml(file.read_text(encoding="utf-8"), rel)
        except MappingFileError as exc:
            raise ConnectorFileError(exc.path, exc.line, exc.detail) from None
        if not isinstance(data, LDict):
            raise ConnectorFileError(rel, 1, "a connector file must be a YAML mapping with `kind` and `name`")
        _check(data, rel)
        name = str(data["name"])
        if name in names:
            raise ConnectorFileError(rel, line_of(data, ["name"]), f"connector name {name!r} is also used by {names[name]}")
        names[name] = rel
        if data.get("enabled") is False:
            out.disabled.append(name)
            continue
        mappings = _path(data.get("mappings"), base) or Path(settings.mappings_dir)
        if not mappings.is_dir():
            raise ConnectorFileError(rel, line_of(data, ["mappings"]), f"mapping directory {mappings} not found")
        tls = _tls(data, rel, base)
        if data["kind"] == "mllp-listener":
            port = int(data["port"]) + settings.mllp_port_offset
            if (forced := override("PORT", name)) is not None:
                if not forced.isdigit() or not 0 < int(forced) < 65536:
                    raise ConnectorFileError(rel, line_of(data, ["port"]), f"FHIRHUB_MLLP_PORT_{name}: not a port")
                port = int(forced)
            if not 0 < port < 65536:
                raise ConnectorFileError(rel, line_of(data, ["port"]), f"port {port} (after FHIRHUB_MLLP_PORT_OFFSET) is out of range")
            host = override("HOST", name) or str(data.get("host", "127.0.0.1"))
            if (host, port) in ports:
                raise ConnectorFileError(rel, line_of(data, ["port"]), f"{host}:{port} is also used by {ports[(host, port)]}")
            ports[(host, port)] = rel
            out.listeners.append(
                Listener(
                    name=name, path=rel, host=host, port=port, mappings=mappings, system=data.get("system"), tls=tls,
                    message_types=tuple(data.get("message_types") or ()),
                    sender_systems={str(k): str(v) for k, v in (data.get("sender_systems") or {}).items()},
                    timezone=data.get("timezone"), parser=str(data.get("parser", "split")),
                    ack_mode=str(data.get("ack_mode", "original")), ordering=str(data.get("ordering", "connection")),
                    apply=str(data.get("apply", "immediate")), apply_idle=float(data.get("apply_idle", 0.2)),
                    workers=int(data.get("workers", 4)), mapping_processes=int(data.get("mapping_processes", 0)),
                    max_message_bytes=int(data.get("max_message_bytes", 1 << 20)),
                    max_connections=int(data.get("max_connections", 64)), max_backlog=int(data.get("max_backlog", 20000)),
                    frame_timeout=float(data.get("frame_timeout", 30)), idle_timeout=float(data.get("idle_timeout", 3600)),
                    ack_sending_application=data.get("ack_sending_application"),
                    ack_sending_facility=data.get("ack_sending_facility"),
                )
            )
        else:
            host, port = str(data["host"]), int(data["port"])
            if (target := override("TARGET", name)) is not None:
                m = re.fullmatch(r"(.+):(\d{1,5})", target)
                if not m:
                    raise ConnectorFileError(rel, line_of(data, ["host"]), f"FHIRHUB_MLLP_TARGET_{name}: expected host:port")
                host, port = m.group(1), int(m.group(2))
            retry = data.get("retry") or {}
            out.senders.append(
                Sender(
                    name=name, path=rel, host=host, port=port, mappings=mappings, system=data.get("system"), tls=tls,
                    resources={str(k): dict(v or {}) for k, v in (data.get("resources") or {}).items()},
                    skip_origins=tuple(data.get("skip_origins") or ()), start_at=str(data.get("start_at", "head")),
                    sending_application=str(data.get("sending_application", "FHIRHUB")),
                    sending_facility=str(data.get("sending_facility", "")),
                    receiving_application=str(data.get("receiving_application", "")),
                    receiving_facility=str(data.get("receiving_facility", "")),
                    ack_timeout=float(data.get("ack_timeout", 30)), connect_timeout=float(data.get("connect_timeout", 10)),
                    max_message_bytes=int(data.get("max_message_bytes", 1 << 20)),
                    retry_initial=float(retry.get("initial", 1)), retry_max=float(retry.get("max", 300)),
                    retry_attempts=int(retry.get("attempts", 10)),
                )
            )
    # a sender never echoes what a listener of the same system received
    for i, s in enumerate(out.senders):
        echo = {f"mllp:{lst.name}" for lst in out.listeners if s.system and lst.system == s.system}
        if echo:
            out.senders[i] = _replace(s, skip_origins=tuple(sorted(set(s.skip_origins) | echo)))
    return out


def _replace(sender: Sender, **changes: Any) -> Sender:
    from dataclasses import replace

    return replace(sender, **changes)


def _tls(data: LDict, rel: str, base: Path) -> Tls | None:
    spec = data.get("tls")
    if not spec:
        return None
    files: dict[str, Path | None] = {}
    for key in ("certfile", "keyfile", "client_ca", "ca"):
        p = _path(spec.get(key), base)
        if p is not None and not p.is_file():
            raise ConnectorFileError(rel, line_of(data, ["tls", key]), f"tls.{key}: file {p} not found")
        files[key] = p
    if (files["certfile"] is None) != (files["keyfile"] is None):
        raise ConnectorFileError(rel, line_of(data, ["tls"]), "tls: certfile and keyfile go together")
    return Tls(files["certfile"], files["keyfile"], files["client_ca"] or files["ca"], spec.get("server_hostname"))
