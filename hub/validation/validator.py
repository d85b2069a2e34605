"""The resource validator: one walk over the parsed JSON against the compiled model.

What is checked (FHIR R4 4.0.1):

* JSON shape: ``resourceType`` known and concrete; unknown properties (in
  resources, datatypes, backbone elements, contained resources and resources
  nested in ``Bundle.entry.resource`` / ``Parameters.parameter.resource``);
  ``_element`` primitive extension siblings (only next to primitives, array
  lengths aligned, ``null`` only where the sibling has content); arrays vs
  single values; no empty objects, arrays or strings; no JSON ``null``.
* Cardinality (min/max) from the snapshots; choice elements ``x[x]``: at most
  one type (exactly one where required), only the declared type suffixes.
* Primitives: JSON type, the format regex from the type definitions, calendar
  dates, integer ranges (32-bit, unsignedInt >= 0, positiveInt >= 1), decimals
  limited to 18 digits, base64Binary, string length.
* Required bindings on ``code``, ``Coding`` and ``CodeableConcept`` (see
  :mod:`hub.validation.terminology` for what is expandable locally).
* References: shape (``Type/id``, ``Type/id/_history/v``, absolute URL,
  ``#local``, ``urn:uuid:``, ``urn:oid:``, conditional ``Type?query`` only in
  transaction/batch Bundle entries), known resource type, target type against
  ``targetProfile`` and ``Reference.type``; ``#id`` resolves to a contained
  resource (ref-1); contained resources are referenced (dom-3) and carry no
  nested contained / versionId / lastUpdated / security (dom-2/4/5).
* Resource ids: ``[A-Za-z0-9\\-\\.]{1,64}``.
* Narrative XHTML (txt-1/txt-2), see :mod:`hub.validation.xhtml`.
* Extensions: ``url`` present, extension xor ``value[x]`` (ext-1). Extension
  definitions are not available locally, so an extension's own content model
  and context are not checked; unknown extensions are accepted (R4
  extensibility: "Applications should not reject resources merely because they
  contain extensions"), configurable with ``ValidatorOptions.unknown_extensions``.
* Attachments: ``size`` agrees with the decoded ``data``.
* Bundles: ``fullUrl`` absolute and consistent with the entry's id; link
  relations self/first/previous/next/last at most once; references inside the
  Bundle that match entries must match exactly one (version-specific ones the
  right version).
* FHIR invariants (error severity) with fhirpathpy, see
  :mod:`hub.validation.invariants`.

Diagnostics name the rule and the element, never the element's value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from hub.errors import Issue
from hub.validation.invariants import InvariantEngine
from hub.validation.model import (
    PRIMITIVE,
    RESOURCE,
    XHTML,
    Constraint,
    Elem,
    Model,
    TypeDef,
    compile_model,
)
from hub.validation.primitives import base64_decoded_length, base64_ok, check_primitive
from hub.validation.references import (
    ABSOLUTE_TAIL,
    ABSOLUTE_URI,
    CONDITIONAL,
    HTTP,
    OTHER_ABSOLUTE,
    RELATIVE,
    URN_OID,
    URN_UUID,
    is_example_url,
    split_history,
)
from hub.validation.terminology import Terminology
from hub.validation.xhtml import check_xhtml

ID_RE = re.compile(r"[A-Za-z0-9\-\.]{1,64}").fullmatch
_MARKDOWN_HTML = re.compile(r"<[A-Za-z/!]").search
_PAGING_RELATIONS = frozenset({"self", "first", "previous", "prev", "next", "last"})
_URI_TYPES = frozenset({"uri", "url", "canonical"})

PROFILE_FILES = ("profiles-types.json", "profiles-resources.json", "valuesets.json")


@dataclass(frozen=True)
class ValidatorOptions:
    """Policy switches. The defaults are what the hub uses on every write."""

    allow_example_urls: bool = True  # URLs on example.org/.com/.net hosts (RFC 2606)
    validate_contained: bool = True  # validate contained resources (else only their ids are used)
    html_in_markdown: str = "warning"  # "ignore" | "warning" | "error"
    unknown_extensions: str = "ignore"  # "ignore" | "warning" | "error"
    check_invariants: bool = True


@dataclass(slots=True, eq=False)
class _BundleCtx:
    type: str | None
    transactional: bool
    by_full_url: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # (reference, expression, fullUrl of the entry it is in)
    refs: list[tuple[str, str, str | None]] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _ResCtx:
    resource: dict[str, Any]
    container: _ResCtx | None  # set for contained resources
    bundle: _BundleCtx | None  # the Bundle this resource is an entry of
    full_url: str | None
    cur_entry: dict[str, Any] | None = None  # while walking Bundle.entry
    contained_ids: set[str] = field(default_factory=set)
    contained: list[tuple[int, str | None, _ResCtx, str]] = field(default_factory=list)
    local_refs: list[tuple[str, str]] = field(default_factory=list)  # ('#x' target, expression)
    hash_refs: set[str] = field(default_factory=set)  # every '#...' reference/uri value
    refers_to_container: bool = False
    ext_depth: int = 0
    own_bundle: _BundleCtx | None = None  # when this resource is itself a Bundle


class _Walk:
    """State of one validate() call."""

    def __init__(self, v: Validator, issues: list[Issue], in_transaction: bool | None = None) -> None:
        self.v = v
        self.in_transaction = in_transaction
        self.model = v._model
        self.props_holder = v._model.extension_holder
        self.opts = v._options
        self.issues = issues
        self.resource_types = v._model.resource_types

    # -- reporting -------------------------------------------------------------------------------
    def err(self, code: str, path: str, msg: str) -> None:
        self.issues.append(Issue("error", code, msg, path))

    def warn(self, code: str, path: str, msg: str) -> None:
        self.issues.append(Issue("warning", code, msg, path))

    def policy(self, level: str, code: str, path: str, msg: str) -> None:
        if level == "error":
            self.err(code, path, msg)
        elif level == "warning":
            self.warn(code, path, msg)

    # -- resources -------------------------------------------------------------------------------
    def resource(
        self,
        obj: Any,
        path: str | None,
        container: _ResCtx | None,
        bundle: _BundleCtx | None,
        full_url: str | None,
    ) -> _ResCtx | None:
        where = path or "Resource"
        if type(obj) is not dict and isinstance(obj, Mapping):
            obj = dict(obj)
        if type(obj) is not dict:
            self.err("structure", where, "a resource must be a JSON object")
            return None
        rt = obj.get("resourceType")
        if type(rt) is not str:
            self.err("required", where, "resourceType is missing")
            return None
        td = self.model.types.get(rt) if rt in self.resource_types else None
        if td is None:
            self.err("not-supported", where, f"unknown or abstract resource type '{_safe_name(rt)}'")
            return None
        path = path or rt
        ctx = _ResCtx(obj, container, bundle, full_url)
        if rt == "Bundle":
            ctx.own_bundle = self._bundle_ctx(obj)
        self.complex(obj, td, path, ctx, None)
        rid = obj.get("id")
        if type(rid) is str and rid and ID_RE(rid) is None:
            self.err("value", f"{path}.id", "invalid resource id: 1-64 characters from [A-Za-z0-9-.]")
        if container is None:
            self._local_reference_checks(ctx, path)
        if ctx.own_bundle is not None:
            self._bundle_checks(obj, path, ctx.own_bundle)
        elif rt == "StructureDefinition":
            self._structure_definition_paths(obj, path)
        return ctx

    def _local_reference_checks(self, ctx: _ResCtx, path: str) -> None:
        for target, where in ctx.local_refs:
            if target not in ctx.contained_ids:
                self.err(
                    "invariant",
                    where,
                    "Constraint failed: ref-1: SHALL have a contained resource if a local reference is provided",
                )
        for _index, cid, cctx, cpath in ctx.contained:
            if cid is None or (f"#{cid}" not in ctx.hash_refs and not cctx.refers_to_container):
                self.err(
                    "invariant",
                    cpath,
                    "Constraint failed: dom-3: a contained resource SHALL be referred to from elsewhere "
                    "in the resource or SHALL refer to the containing resource",
                )

    def _contained(self, item: Any, path: str, ctx: _ResCtx, index: int) -> None:
        if type(item) is not dict:
            self.err("structure", path, "a contained resource must be a JSON object")
            return
        cid = item.get("id") if type(item.get("id")) is str else None
        root = ctx.container or ctx
        if cid is not None:
            root.contained_ids.add(cid)
        if ctx.container is not None:
            self.err(
                "invariant",
                path,
                "Constraint failed: dom-2: a contained resource SHALL NOT contain resources",
            )
        meta = item.get("meta")
        if type(meta) is dict:
            if "versionId" in meta or "lastUpdated" in meta:
                self.err(
                    "invariant",
                    path,
                    "Constraint failed: dom-4: a contained resource SHALL NOT have a meta.versionId or meta.lastUpdated",
                )
            if "security" in meta:
                self.err(
                    "invariant",
                    path,
                    "Constraint failed: dom-5: a contained resource SHALL NOT have a security label",
                )
        if not self.opts.validate_contained:
            if cid is not None and root is ctx:
                ctx.contained.append(
                    (index, cid, _ResCtx(item, ctx, None, None, refers_to_container=True), path)
                )
            return
        cctx = self.resource(item, path, root, ctx.bundle, None)
        if cctx is not None and root is ctx:
            ctx.contained.append((index, cid, cctx, path))

    # -- complex content -------------------------------------------------------------------------
    def complex(self, obj: Any, td: TypeDef, path: str, ctx: _ResCtx, elem: Elem | None) -> None:
        if type(obj) is not dict:
            self.err("structure", path, f"{td.name} must be a JSON object")
            return
        if not obj:
            self.err("structure", path, "an object must have some content (ele-1)")
        props = td.props
        choices_seen: dict[str, set[str]] | None = None
        is_ext = td.is_extension
        if is_ext:
            ctx.ext_depth += 1
        if td.is_bundle_entry:
            outer_entry = ctx.cur_entry
            ctx.cur_entry = obj
        for key, val in obj.items():
            el = props.get(key)
            if el is None:
                if key[:1] == "_":
                    el = props.get(key[1:])
                    if el is not None and el.kind == PRIMITIVE:
                        if el.choice is not None:
                            choices_seen = choices_seen or {}
                            choices_seen.setdefault(el.choice, set()).add(el.name)
                        self.prim_ext(val, el, obj, path, ctx)
                        continue
                elif key == "resourceType" and td.is_resource:
                    continue
                self.err("structure", path, f"unrecognized property '{_safe_name(key)}'")
                continue
            if el.choice is not None:
                choices_seen = choices_seen or {}
                choices_seen.setdefault(el.choice, set()).add(el.name)
            if el.kind == PRIMITIVE or el.kind == XHTML:
                self.prim_prop(val, el, obj, path, ctx)
            else:
                self.prop(val, el, path, ctx)
        if is_ext:
            ctx.ext_depth -= 1
        if td.is_bundle_entry:
            ctx.cur_entry = outer_entry
        for el in td.required:
            if el.name not in obj and (el.kind != PRIMITIVE or f"_{el.name}" not in obj):
                self.err(
                    "required",
                    f"{path}.{el.name}",
                    f"{el.path}: minimum required = {el.min}, but only found 0",
                )
        if choices_seen:
            for base, names in choices_seen.items():
                if len(names) > 1:
                    self.err(
                        "structure",
                        f"{path}.{base}",
                        f"{base}[x] must have only one type, found {len(names)}",
                    )
        for base, mn in td.required_choices:
            if choices_seen is None or base not in choices_seen:
                self.err(
                    "required",
                    f"{path}.{base}",
                    f"{td.name}.{base}[x]: minimum required = {mn}, but only found 0",
                )
        if td.constraints and self.opts.check_invariants:
            self.invariants(td.constraints, obj, path, ctx)

    def prop(self, val: Any, el: Elem, parent: str, ctx: _ResCtx) -> None:
        step = f"{parent}.{el.fhirpath}"
        if el.array:
            if type(val) is not list:
                self.err(
                    "structure", step, f"the property {el.name} must be a JSON array, not a single value"
                )
                self.value(val, el, f"{step}[0]", ctx, 0)
                return
            if not val:
                self.err("structure", step, "an array cannot be empty - the property should be absent")
                return
            if el.max is not None and len(val) > el.max:
                self.err("structure", step, f"{el.path}: maximum allowed = {el.max}, but found {len(val)}")
            for i, item in enumerate(val):
                self.value(item, el, f"{step}[{i}]", ctx, i)
        else:
            if type(val) is list:
                self.err(
                    "structure", step, f"the property {el.name} must be a single value, not a JSON array"
                )
                return
            self.value(val, el, step, ctx, 0)

    def value(self, item: Any, el: Elem, path: str, ctx: _ResCtx, index: int) -> None:
        if item is None:
            self.err("structure", path, "null is not a valid value")
            return
        kind = el.kind
        if kind == RESOURCE:
            if el.name == "contained":
                self._contained(item, path, ctx, index)
            elif el.path == "Bundle.entry.resource":
                entry = ctx.cur_entry or {}
                fu = entry.get("fullUrl")
                self.resource(item, path, None, ctx.own_bundle, fu if type(fu) is str else None)
            else:
                self.resource(item, path, None, None, None)
            return
        td = el.typedef
        if td is None:
            return
        self.complex(item, td, path, ctx, el)
        if type(item) is not dict:
            return
        code = el.type_code
        if code == "Reference":
            self.reference(item, el, path, ctx)
        elif code == "Extension":
            self.extension(item, path, ctx)
        elif code == "Coding" or code == "CodeableConcept":
            if el.binding is not None:
                self.complex_binding(item, el, path)
        elif code == "Attachment":
            self.attachment(item, path)
        elif code == "Quantity" and el.simple_quantity and "comparator" in item:
            self.err(
                "invariant", path, "Constraint failed: sqty-1: the comparator is not used on a SimpleQuantity"
            )
        if el.constraints and self.opts.check_invariants:
            self.invariants(el.constraints, item, path, ctx)

    # -- primitives ------------------------------------------------------------------------------
    def prim_prop(self, val: Any, el: Elem, obj: dict[str, Any], parent: str, ctx: _ResCtx) -> None:
        step = f"{parent}.{el.fhirpath}"
        if el.array:
            if type(val) is not list:
                self.err(
                    "structure", step, f"the property {el.name} must be a JSON array, not a single value"
                )
                self.prim(val, el, f"{step}[0]", ctx)
                return
            if not val:
                self.err("structure", step, "an array cannot be empty - the property should be absent")
                return
            if el.max is not None and len(val) > el.max:
                self.err("structure", step, f"{el.path}: maximum allowed = {el.max}, but found {len(val)}")
            ext = obj.get(f"_{el.name}")
            ext_list = ext if type(ext) is list else None
            if ext_list is not None and len(ext_list) != len(val):
                self.err("structure", step, f"the arrays {el.name} and _{el.name} must have the same length")
            for i, item in enumerate(val):
                if item is None:
                    if ext_list is None or i >= len(ext_list) or ext_list[i] is None:
                        self.err(
                            "structure",
                            f"{step}[{i}]",
                            "null is only allowed where the _ sibling has content",
                        )
                    continue
                self.prim(item, el, f"{step}[{i}]", ctx)
        else:
            if type(val) is list:
                self.err(
                    "structure", step, f"the property {el.name} must be a single value, not a JSON array"
                )
                return
            if val is None:
                self.err("structure", step, "null is not a valid value")
                return
            self.prim(val, el, step, ctx)

    def prim(self, value: Any, el: Elem, path: str, ctx: _ResCtx) -> None:
        pt = el.prim
        assert pt is not None
        msg = check_primitive(pt, value)
        if msg is not None:
            self.err("value", path, f"{el.path}: {msg}")
            return
        if type(value) is not str:
            return
        name = pt.name
        if el.kind == XHTML:
            for problem in check_xhtml(value):
                self.err("invariant" if "txt-" in problem else "value", path, problem)
            return
        if el.binding is not None and name == "code":
            ok = self.v._terminology.expand(el.binding.value_set).check_code(value)
            if ok is False:
                self.err(
                    "code-invalid",
                    path,
                    f"{el.path}: the code is not in the required value set {el.binding.value_set}",
                )
        elif name in _URI_TYPES:
            if value[0] == "#":
                (ctx.container or ctx).hash_refs.add(value)
            elif not self.opts.allow_example_urls and is_example_url(value):
                self.err("invalid", path, "example URLs are not allowed in this context")
        elif name == "markdown" and self.opts.html_in_markdown != "ignore" and _MARKDOWN_HTML(value):
            self.policy(
                self.opts.html_in_markdown,
                "invalid",
                path,
                "the markdown appears to contain an embedded HTML tag",
            )

    def prim_ext(self, val: Any, el: Elem, obj: dict[str, Any], parent: str, ctx: _ResCtx) -> None:
        """The ``_name`` sibling of a primitive: Element content (id, extension)."""
        step = f"{parent}.{el.fhirpath}"
        has_value = obj.get(el.name) is not None
        holder = self.props_holder
        if el.array:
            if type(val) is not list:
                self.err("structure", step, f"the property _{el.name} must be a JSON array")
                return
            if not val:
                self.err("structure", step, "an array cannot be empty - the property should be absent")
                return
            values = obj.get(el.name)
            for i, item in enumerate(val):
                if item is None:
                    continue
                self.complex(item, holder, f"{step}[{i}]", ctx, None)
                item_has_value = type(values) is list and i < len(values) and values[i] is not None
                if type(item) is dict and not item_has_value and "extension" not in item:
                    self.err(
                        "structure", f"{step}[{i}]", "a primitive must have a value or an extension (ele-1)"
                    )
            return
        if type(val) is list:
            self.err("structure", step, f"the property _{el.name} must be a single object, not a JSON array")
            return
        self.complex(val, holder, step, ctx, None)
        if type(val) is dict and not has_value and "extension" not in val:
            self.err("structure", step, "a primitive must have a value or an extension (ele-1)")

    # -- datatype specifics ----------------------------------------------------------------------
    def reference(self, item: dict[str, Any], el: Elem, path: str, ctx: _ResCtx) -> None:
        ref = item.get("reference")
        found_type: str | None = None
        if type(ref) is str and ref:
            where = f"{path}.reference"
            root = ctx.container or ctx
            if ref[0] == "#":
                root.hash_refs.add(ref)
                if len(ref) == 1:
                    if ctx.container is not None:
                        ctx.refers_to_container = True
                else:
                    root.local_refs.append((ref[1:], where))
            else:
                m = RELATIVE(ref)
                if m is not None:
                    found_type = m.group(1)
                    if found_type not in self.resource_types:
                        self.err(
                            "invalid",
                            where,
                            f"the reference names an unknown resource type '{_safe_name(found_type)}'",
                        )
                        found_type = None
                elif HTTP(ref) is not None:
                    tail = ABSOLUTE_TAIL(ref)
                    if tail is not None and tail.group(1) in self.resource_types:
                        found_type = tail.group(1)
                elif ref.startswith("urn:uuid:"):
                    if URN_UUID(ref) is None:
                        self.warn("invalid", where, "a urn:uuid: reference should be a valid UUID")
                elif ref.startswith("urn:oid:"):
                    if URN_OID(ref) is None:
                        self.warn("invalid", where, "a urn:oid: reference should be a valid OID")
                elif (cm := CONDITIONAL(ref)) is not None:
                    if ctx.bundle is not None:
                        allowed: bool | None = ctx.bundle.transactional
                    else:
                        allowed = self.in_transaction
                    if not allowed:
                        (self.err if allowed is False else self.warn)(
                            "invalid",
                            where,
                            "conditional references are only allowed in transaction or batch Bundle entries",
                        )
                    found_type = cm.group(1) if cm.group(1) in self.resource_types else None
                elif OTHER_ABSOLUTE(ref) is None:
                    self.err(
                        "invalid",
                        where,
                        "not a valid reference: expected Type/id, an absolute URL, #id, urn:uuid: or urn:oid:",
                    )
                if ctx.bundle is not None:
                    ctx.bundle.refs.append((ref, where, ctx.full_url))
            if found_type is not None and el.targets is not None and found_type not in el.targets:
                self.err(
                    "invalid",
                    where,
                    f"{el.path}: a reference to {found_type} is not allowed; expected "
                    + ", ".join(sorted(el.targets)),
                )
            if not self.opts.allow_example_urls and is_example_url(ref):
                self.err("invalid", where, "example URLs are not allowed in this context")
        declared = item.get("type")
        if type(declared) is str and declared and ":" not in declared:
            where = f"{path}.type"
            if declared not in self.resource_types:
                self.err("invalid", where, "Reference.type must name a resource type")
            elif el.targets is not None and declared not in el.targets:
                self.err("invalid", where, f"{el.path}: Reference.type {declared} is not an allowed target")
            elif found_type is not None and found_type != declared:
                self.err("invalid", where, "Reference.type does not agree with the type in the reference")

    def extension(self, item: dict[str, Any], path: str, ctx: _ResCtx) -> None:
        has_ext = "extension" in item
        has_value = False
        for k in item:
            if k.startswith("value") or k.startswith("_value"):
                has_value = True
                break
        if has_ext == has_value:
            self.err(
                "invariant",
                path,
                "Constraint failed: ext-1: Must have either extensions or value[x], not both",
            )
        url = item.get("url")
        if type(url) is not str or ctx.ext_depth > 0:
            return
        if ABSOLUTE_URI(url) is None:
            self.err("value", f"{path}.url", "an extension url must be an absolute URL")
        elif "|" in url:
            # Extension.url is a uri naming the StructureDefinition, not a versioned canonical
            self.err("value", f"{path}.url", "an extension url must not contain a version ('|')")
        if self.opts.unknown_extensions != "ignore":
            self.policy(
                self.opts.unknown_extensions,
                "structure",
                path,
                "the extension definition is not known, so its content was not checked",
            )

    def complex_binding(self, item: dict[str, Any], el: Elem, path: str) -> None:
        assert el.binding is not None
        exp = self.v._terminology.expand(el.binding.value_set)
        if exp.all_unchecked:
            return
        if el.type_code == "Coding":
            codings = [item]
        else:
            raw = item.get("coding")
            codings = [c for c in raw if type(c) is dict] if type(raw) is list else []
        if not codings:
            return
        for c in codings:
            system = c.get("system")
            code = c.get("code")
            if type(code) is not str:
                return  # nothing judgeable (e.g. display only)
            if exp.check_coding(system if type(system) is str else None, code) is not False:
                return
        self.err(
            "code-invalid",
            path,
            f"{el.path}: no coding is from the required value set {el.binding.value_set}",
        )

    def attachment(self, item: dict[str, Any], path: str) -> None:
        data = item.get("data")
        size = item.get("size")
        if (
            type(data) is str
            and type(size) is int
            and base64_ok(data)
            and base64_decoded_length(data) != size
        ):
            self.err("value", f"{path}.size", "Attachment.size does not match the size of the data")

    # -- invariants ------------------------------------------------------------------------------
    def invariants(
        self, constraints: tuple[Constraint, ...], node: dict[str, Any], path: str, ctx: _ResCtx
    ) -> None:
        engine = self.v._invariants
        root = (ctx.container or ctx).resource
        resolver = partial(self.v._resolve, ctx)
        for c in constraints:
            if engine.check(c, node, ctx.resource, root, resolver) is False:
                self.err("invariant", path, f"Constraint failed: {c.key}: {c.human}")

    # -- conformance resources -------------------------------------------------------------------
    def _structure_definition_paths(self, obj: dict[str, Any], path: str) -> None:
        """A profile's element paths must exist in the type it constrains (or extends)."""
        if obj.get("kind") == "logical" or obj.get("derivation") != "constraint":
            return
        sd_type = obj.get("type")
        td = self.model.types.get(sd_type) if type(sd_type) is str else None
        if td is None:
            return
        for part in ("differential", "snapshot"):
            section = obj.get(part)
            elements = section.get("element") if type(section) is dict else None
            if type(elements) is not list:
                continue
            for i, el in enumerate(elements):
                epath = el.get("path") if type(el) is dict else None
                if type(epath) is str and not self._path_exists(td, td.name, epath):
                    self.err(
                        "invalid",
                        f"{path}.{part}.element[{i}].path",
                        f"the element path does not exist in the type {sd_type}",
                    )

    def _path_exists(self, td: TypeDef, type_name: str, epath: str) -> bool:
        segments = epath.split(".")
        if segments[0] != type_name:
            return False
        cur: TypeDef | None = td
        for seg in segments[1:]:
            if cur is None:
                return True  # inside a resource-typed element: not followed
            if not seg:
                return False
            el = cur.props.get(seg)
            if el is None and seg.endswith("[x]"):
                group = cur.choices.get(seg[:-3])
                if not group:
                    return False
                el = group[0] if len(group) == 1 else None
                if el is None:
                    cur = None  # several types: children depend on the type chosen
                    continue
            if el is None:
                return False
            if el.kind == RESOURCE:
                cur = None
            elif el.kind == PRIMITIVE or el.kind == XHTML:
                cur = self.props_holder
            else:
                cur = el.typedef
        return True

    # -- bundles ---------------------------------------------------------------------------------
    def _bundle_ctx(self, obj: dict[str, Any]) -> _BundleCtx:
        btype = obj.get("type") if type(obj.get("type")) is str else None
        b = _BundleCtx(btype, btype in ("transaction", "batch"))
        entries = obj.get("entry")
        if type(entries) is list:
            for e in entries:
                if type(e) is dict and type(e.get("fullUrl")) is str:
                    b.by_full_url.setdefault(e["fullUrl"], []).append(e)
        return b

    def _bundle_checks(self, obj: dict[str, Any], path: str, b: _BundleCtx) -> None:
        entries = obj.get("entry")
        if type(entries) is list:
            for i, e in enumerate(entries):
                if type(e) is not dict:
                    continue
                fu = e.get("fullUrl")
                if type(fu) is not str or not fu:
                    continue
                where = f"{path}.entry[{i}].fullUrl"
                if ABSOLUTE_URI(fu) is None:
                    self.err("invalid", where, "fullUrl must be an absolute URL (or a urn:uuid:/urn:oid:)")
                    continue
                res = e.get("resource")
                if type(res) is dict and type(res.get("id")) is str and HTTP(fu) is not None:
                    tail = ABSOLUTE_TAIL(fu)
                    if (
                        tail is not None
                        and tail.group(1) in self.resource_types
                        and (tail.group(1) != res.get("resourceType") or tail.group(2) != res["id"])
                    ):
                        self.err("invalid", where, "fullUrl disagrees with the resource's type and id")
        links = obj.get("link")
        if type(links) is list:
            seen: set[str] = set()
            for i, link in enumerate(links):
                rel = link.get("relation") if type(link) is dict else None
                if type(rel) is str and rel in _PAGING_RELATIONS:
                    if rel in seen:
                        self.err(
                            "invalid", f"{path}.link[{i}]", f"the link relation '{rel}' can only occur once"
                        )
                    seen.add(rel)
        if b.type != "history":
            self._bundle_references(path, b)

    def _bundle_references(self, path: str, b: _BundleCtx) -> None:
        for ref, where, base in b.refs:
            key, version = split_history(ref)
            if RELATIVE(ref) is not None:
                if base is None or HTTP(base) is None:
                    continue
                head = split_history(base)[0]
                tail = ABSOLUTE_TAIL(head)
                if tail is None:
                    continue
                key = f"{head[: tail.start()]}/{key}"
            matches = b.by_full_url.get(key)
            if not matches:
                continue
            if version is None:
                if len(matches) > 1:
                    self.err("invalid", where, f"the reference matches {len(matches)} entries in the Bundle")
                continue
            versions = [_version_id(e) for e in matches]
            if any(v is None for v in versions):
                continue
            hits = sum(1 for v in versions if v == version)
            if hits == 0:
                self.err("invalid", where, "no entry in the Bundle has the referenced version")
            elif hits > 1:
                self.err("invalid", where, f"the reference matches {hits} entries in the Bundle")


def _version_id(entry: dict[str, Any]) -> str | None:
    res = entry.get("resource")
    meta = res.get("meta") if type(res) is dict else None
    vid = meta.get("versionId") if type(meta) is dict else None
    return vid if type(vid) is str else None


_SAFE_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,63}").fullmatch


def _safe_name(name: str) -> str:
    """Echo a property or type name only if it is shaped like a FHIR name (it could hold data)."""
    return name if _SAFE_NAME(name) else "(not shown)"


class Validator:
    """Validates parsed FHIR R4 JSON resources against the core definitions."""

    def __init__(
        self,
        model: Model,
        terminology: Terminology,
        invariants: InvariantEngine,
        options: ValidatorOptions | None = None,
    ) -> None:
        self._model = model
        self._terminology = terminology
        self._invariants = invariants
        self._options = options or ValidatorOptions()

    @classmethod
    def load(cls, profiles_dir: Path) -> Validator:
        """Load and compile profiles-types.json, profiles-resources.json and valuesets.json."""
        profiles_dir = Path(profiles_dir)
        sds: list[dict[str, Any]] = []
        for name in PROFILE_FILES[:2]:
            bundle = orjson.loads((profiles_dir / name).read_bytes())
            sds.extend(
                e["resource"]
                for e in bundle.get("entry", [])
                if e["resource"].get("resourceType") == "StructureDefinition"
            )
        model = compile_model(sds)
        vs_bundle = orjson.loads((profiles_dir / PROFILE_FILES[2]).read_bytes())
        terminology = Terminology([e["resource"] for e in vs_bundle.get("entry", [])])
        return cls(model, terminology, InvariantEngine(model))

    def with_options(self, options: ValidatorOptions) -> Validator:
        """A validator sharing this one's compiled definitions, with other options."""
        return Validator(self._model, self._terminology, self._invariants, options)

    @property
    def options(self) -> ValidatorOptions:
        return self._options

    @property
    def resource_types(self) -> frozenset[str]:
        return self._model.resource_types

    def validate(self, resource: Mapping[str, Any], *, in_transaction: bool | None = None) -> list[Issue]:
        """Validate one parsed resource; returns every issue found (errors and warnings).

        ``in_transaction`` says whether the resource is the entry of a transaction or batch
        Bundle being validated on its own: True allows conditional references
        (``Type?query``), False makes them errors, None (unknown) reports them as warnings.
        Inside a Bundle validated whole, the Bundle's type decides.
        """
        issues: list[Issue] = []
        try:
            _Walk(self, issues, in_transaction).resource(resource, None, None, None, None)
        except RecursionError:
            issues.append(Issue("error", "too-costly", "the resource is nested too deeply to be validated"))
        return issues

    def _resolve(self, ctx: _ResCtx, item: Any) -> list[Any]:
        """resolve() for FHIRPath: contained resources and Bundle entries only."""
        ref = item.get("reference") if isinstance(item, dict) else item if isinstance(item, str) else None
        if not isinstance(ref, str) or not ref:
            return []
        root = ctx.container or ctx
        if ref[0] == "#":
            if len(ref) == 1:
                return [root.resource]
            contained = root.resource.get("contained")
            if isinstance(contained, list):
                return [c for c in contained if isinstance(c, dict) and c.get("id") == ref[1:]]
            return []
        b = ctx.bundle
        if b is None:
            return []
        key = split_history(ref)[0]
        if RELATIVE(ref) is not None and ctx.full_url and HTTP(ctx.full_url):
            head = split_history(ctx.full_url)[0]
            tail = ABSOLUTE_TAIL(head)
            if tail is not None:
                key = f"{head[: tail.start()]}/{key}"
        entries = b.by_full_url.get(key, [])
        return [e["resource"] for e in entries[:1] if isinstance(e.get("resource"), dict)]
