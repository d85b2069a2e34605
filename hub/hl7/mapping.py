"""Loading and checking mapping files (``mappings/``).

A mapping set is a directory tree of YAML files, one document each, told
apart by ``kind``:

* ``message``  - one per message type/trigger: which templates run on which segments;
* ``resource`` - segment (or datatype) -> FHIR resource templates, with a business key;
* ``fragment`` - segment -> part of another resource (NK1 -> Patient.contact, PD1 -> Patient);
* ``datatype`` - v2 datatype -> FHIR datatype templates (XPN -> HumanName ...);
* ``codemap``  - vocabulary maps taken from the IG's code system CSVs;
* ``outbound`` - FHIR resource -> v2 message templates;
* ``settings`` - defaults (time zone, identifier system prefixes, sender systems).

Every file is checked against ``mappings/schema/mapping.schema.json`` and then
semantically (functions, templates, code maps and step names must exist).
Errors raise :class:`hub.hl7.errors.MappingFileError` naming file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from hub.hl7.errors import MappingFileError
from hub.hl7.yamlload import LDict, LList, line_of, load_yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "mappings" / "schema" / "mapping.schema.json"
DEFAULT_MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "mappings"

_FIELDREF = re.compile(r"^(?:([A-Z][A-Z0-9]{2})-([0-9]+))?((?:\.[0-9]+){0,2})$")


@dataclass(frozen=True)
class FieldRef:
    segment: str | None  # None: relative to the current value
    field: int  # 0 when relative
    comp: int  # 0: whole field
    sub: int  # 0: whole component


@lru_cache(maxsize=4096)
def parse_fieldref(text: str) -> FieldRef:
    m = _FIELDREF.match(text)
    if not m or (m.group(1) is None and not m.group(3)):
        raise ValueError(f"bad field reference {text!r}")
    parts = [int(p) for p in m.group(3).split(".")[1:]] if m.group(3) else []
    comp = parts[0] if parts else 0
    sub = parts[1] if len(parts) > 1 else 0
    return FieldRef(m.group(1), int(m.group(2)) if m.group(2) else 0, comp, sub)


@dataclass
class Codemap:
    name: str
    entries: dict[str, dict[str, Any]]
    target_system: str | None
    source_system: str | None
    case_insensitive: bool
    unmapped: str
    path: str

    def lookup(self, code: str) -> dict[str, Any] | None:
        if self.case_insensitive:
            return self.entries.get(code.upper())
        return self.entries.get(code)


@dataclass
class Doc:
    kind: str
    name: str
    data: LDict
    path: str  # relative to the mapping root, for messages

    def line(self, *path: Any) -> int | None:
        return line_of(self.data, list(path))


@dataclass
class Settings:
    default_timezone: str = "UTC"
    id_system_prefix: str = "urn:fhirhub:id:"
    key_system_prefix: str = "urn:fhirhub:key:"
    uuid_namespace: str = "6f1c7a52-7f5e-4d0a-9a7e-2f6c0f6b1e01"
    sender_systems: dict[str, str] = field(default_factory=dict)


class MappingSet:
    """All mapping files of one directory, checked and indexed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.messages: dict[str, Doc] = {}  # "ADT^A01" -> message doc
        self.templates: dict[str, Doc] = {}  # resource + fragment templates
        self.datatypes: dict[str, Doc] = {}
        self.codemaps: dict[str, Codemap] = {}
        self.outbound: dict[str, Doc] = {}
        self.settings = Settings()
        self.files: list[Path] = []
        self._fingerprint = ""

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, directory: str | os.PathLike[str] | None = None) -> MappingSet:
        root = Path(directory) if directory is not None else DEFAULT_MAPPINGS_DIR
        if not root.is_dir():
            raise MappingFileError(str(root), None, "mapping directory not found")
        ms = cls(root)
        validator = _validator()
        docs: list[Doc] = []
        for path in _mapping_files(root):
            rel = str(path.relative_to(root))
            text = path.read_text(encoding="utf-8")
            data = load_yaml(text, rel)
            if not isinstance(data, LDict):
                raise MappingFileError(rel, 1, "a mapping file must be a YAML mapping with a `kind`")
            errors = sorted(
                validator.iter_errors(data), key=lambda e: (len(list(e.absolute_path)), str(e.message))
            )
            if errors:
                err = _best_error(errors)
                line = line_of(data, list(err.absolute_path))
                where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                raise MappingFileError(rel, line, f"schema: at {where}: {err.message}")
            kind = data["kind"]
            name = str(data.get("name") or path.stem)
            docs.append(Doc(kind, name, data, rel))
            ms.files.append(path)
        for doc in docs:
            ms._index(doc)
        for doc in docs:
            _check_semantics(ms, doc)
        ms._fingerprint = fingerprint(root)
        return ms

    def _index(self, doc: Doc) -> None:
        def dup(table: dict[str, Any], key: str) -> None:
            if key in table:
                other = table[key]
                other_path = other.path if hasattr(other, "path") else "?"
                raise MappingFileError(
                    doc.path, doc.line("name"), f"duplicate {doc.kind} {key!r} (also in {other_path})"
                )

        if doc.kind == "message":
            for i, ev in enumerate(doc.data["events"]):
                if ev in self.messages:
                    raise MappingFileError(
                        doc.path,
                        doc.line("events", i),
                        f"event {ev} already mapped by {self.messages[ev].path}",
                    )
                self.messages[ev] = doc
        elif doc.kind in ("resource", "fragment"):
            dup(self.templates, doc.name)
            self.templates[doc.name] = doc
        elif doc.kind == "datatype":
            dup(self.datatypes, doc.name)
            self.datatypes[doc.name] = doc
        elif doc.kind == "codemap":
            dup(self.codemaps, doc.name)
            ci = bool(doc.data.get("case_insensitive", False))
            entries: dict[str, dict[str, Any]] = {}
            for k, v in doc.data["map"].items():
                entry = dict(v) if isinstance(v, dict) else {"code": v}
                if (
                    "system" not in entry
                    and doc.data.get("target_system")
                    and not isinstance(entry["code"], bool)
                ):
                    entry["system"] = doc.data["target_system"]
                entries[k.upper() if ci else k] = entry
            self.codemaps[doc.name] = Codemap(
                doc.name,
                entries,
                doc.data.get("target_system"),
                doc.data.get("source_system"),
                ci,
                str(doc.data.get("unmapped", "warn")),
                doc.path,
            )
        elif doc.kind == "outbound":
            dup(self.outbound, doc.name)
            self.outbound[doc.name] = doc
        elif doc.kind == "settings":
            s = doc.data
            self.settings = Settings(
                default_timezone=str(s.get("default_timezone", "UTC")),
                id_system_prefix=str(s.get("id_system_prefix", "urn:fhirhub:id:")),
                key_system_prefix=str(s.get("key_system_prefix", "urn:fhirhub:key:")),
                uuid_namespace=str(s.get("uuid_namespace", Settings.uuid_namespace)),
                sender_systems={str(k): str(v) for k, v in (s.get("sender_systems") or {}).items()},
            )

    # --------------------------------------------------------------- reloading
    def fingerprint(self) -> str:
        """Fingerprint taken at load time (compare with :func:`fingerprint` of the directory)."""
        return self._fingerprint

    def changed(self) -> bool:
        """True when a file was added, removed or modified since load."""
        return fingerprint(self.root) != self._fingerprint

    def reload_if_changed(self) -> MappingSet:
        """The same set if nothing changed, otherwise a freshly loaded (and checked) one."""
        return MappingSet.load(self.root) if self.changed() else self

    def message_for(self, code: str, trigger: str) -> Doc | None:
        return self.messages.get(f"{code}^{trigger}")

    def supports_type(self, code: str) -> bool:
        return any(ev.split("^", 1)[0] == code for ev in self.messages)


def _mapping_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        rel = path.relative_to(root).parts
        if rel and rel[0] in ("tests", "schema"):
            continue
        out.append(path)
    return out


def fingerprint(directory: str | os.PathLike[str]) -> str:
    """Hash of names, sizes and mtimes of every mapping file (cheap; for a watcher)."""
    root = Path(directory)
    h = hashlib.sha256()
    for path in _mapping_files(root):
        st = path.stat()
        h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if SCHEMA_PATH.exists():
        st = SCHEMA_PATH.stat()
        h.update(f"schema\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


@lru_cache(maxsize=1)
def _validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _best_error(errors: list[Any]) -> Any:
    best = jsonschema.exceptions.best_match(errors)
    # prefer the deepest error: it has the most precise line
    deepest = max(errors, key=lambda e: len(list(e.absolute_path)))
    if len(list(deepest.absolute_path)) > len(list(best.absolute_path)):
        return deepest
    return best


# ---------------------------------------------------------------- semantics

_SPEC_KEYS_WITH_SPECS = ("object", "first", "list")


def _check_semantics(ms: MappingSet, doc: Doc) -> None:
    from hub.hl7.functions import FUNCTIONS  # local: functions import mapping types

    def fail(path: list[Any], msg: str) -> None:
        raise MappingFileError(doc.path, line_of(doc.data, path), msg)

    def check_cond(cond: Any, path: list[Any]) -> None:
        if not isinstance(cond, dict):
            return
        for k, v in cond.items():
            if k in ("all", "any"):
                for i, c in enumerate(v):
                    check_cond(c, [*path, k, i])
            elif k == "not":
                check_cond(v, [*path, k])

    def check_spec(spec: Any, path: list[Any]) -> None:
        if not isinstance(spec, dict):
            return
        fn = spec.get("fn")
        if fn is not None and fn not in FUNCTIONS:
            fail([*path, "fn"], f"unknown function {fn!r} (registered: {', '.join(sorted(FUNCTIONS))})")
        dt = spec.get("datatype")
        if dt is not None and dt not in ms.datatypes:
            fail([*path, "datatype"], f"unknown datatype template {dt!r}")
        res = spec.get("resource")
        if res is not None:
            tmpl = ms.templates.get(res)
            if tmpl is None or tmpl.kind != "resource":
                fail([*path, "resource"], f"unknown resource template {res!r}")
        cm = spec.get("map")
        if cm is not None and cm not in ms.codemaps:
            fail([*path, "map"], f"unknown code map {cm!r}")
        if "when" in spec:
            check_cond(spec["when"], [*path, "when"])
        obj = spec.get("object")
        if isinstance(obj, dict):
            for k, v in obj.items():
                check_spec(v, [*path, "object", k])
        for key in ("first", "list"):
            seq = spec.get(key)
            if isinstance(seq, list):
                for i, v in enumerate(seq):
                    check_spec(v, [*path, key, i])

    def check_rules(rules: Any, path: list[Any]) -> None:
        if isinstance(rules, list):
            for i, r in enumerate(rules):
                check_spec(r, [*path, i])

    data = doc.data
    if doc.kind in ("resource", "fragment", "datatype"):
        check_rules(data.get("rules"), ["rules"])
        for i, k in enumerate(data.get("key") or []):
            if "identifier" in k:
                check_spec(k["identifier"], ["key", i, "identifier"])
            for j, part in enumerate(k.get("synthetic") or []):
                check_spec(part, ["key", i, "synthetic", j])
        if "display" in data:
            check_spec(data["display"], ["display"])
    elif doc.kind == "message":
        names: set[str] = set()

        def walk(steps: Any, path: list[Any]) -> None:
            for i, st in enumerate(steps):
                sp = [*path, i]
                if "template" in st:
                    tmpl = ms.templates.get(st["template"])
                    if tmpl is None:
                        fail([*sp, "template"], f"unknown template {st['template']!r}")
                    assert tmpl is not None
                    if tmpl.kind == "fragment" and "into" not in st:
                        fail(sp, f"fragment template {tmpl.name!r} needs `into: <step name>`")
                    if tmpl.kind == "resource" and "into" in st:
                        fail([*sp, "into"], "`into` is only for fragment templates")
                    if "into" in st and st["into"] not in names:
                        fail([*sp, "into"], f"`into` names no earlier step ({st['into']!r})")
                    if not (st.get("segment") or st.get("each") or tmpl.data.get("segment")):
                        fail(sp, "step needs a segment (template has none)")
                if "name" in st:
                    names.add(st["name"])
                check_rules(st.get("set"), [*sp, "set"])
                if "when" in st:
                    check_cond(st["when"], [*sp, "when"])
                if "steps" in st:
                    walk(st["steps"], [*sp, "steps"])

        walk(data["steps"], ["steps"])
        if "patient" in data and data["patient"] not in names:
            fail(["patient"], f"`patient` names no step ({data['patient']!r})")
    elif doc.kind == "outbound":
        for i, seg in enumerate(data["segments"]):
            for fno, spec in (seg.get("fields") or {}).items():
                _check_ospec(ms, doc, spec, ["segments", i, "fields", fno])


def _check_ospec(ms: MappingSet, doc: Doc, spec: Any, path: list[Any]) -> None:
    from hub.hl7.outbound import OUT_FUNCTIONS

    if not isinstance(spec, dict):
        return
    if "fn" in spec and spec["fn"] not in OUT_FUNCTIONS:
        raise MappingFileError(
            doc.path, line_of(doc.data, [*path, "fn"]), f"unknown outbound function {spec['fn']!r}"
        )
    if "map" in spec and spec["map"] not in ms.codemaps:
        raise MappingFileError(
            doc.path, line_of(doc.data, [*path, "map"]), f"unknown code map {spec['map']!r}"
        )
    for i, c in enumerate(spec.get("components") or []):
        _check_ospec(ms, doc, c, [*path, "components", i])


__all__ = [
    "Codemap",
    "Doc",
    "FieldRef",
    "LDict",
    "LList",
    "MappingSet",
    "Settings",
    "fingerprint",
    "parse_fieldref",
]
