"""Discovery: what the remote says it supports (``metadata``, ``.well-known/smart-configuration``),
and a warning for everything the connector's configuration asks for that the remote lacks.

:func:`analyze` is a pure function of the configuration and the two documents, so the warnings are
tested without a server; :func:`discover` fetches the documents (without a token: both are public).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from hub.security.scopes import parse_scope
from hub.sync.config import ConnectorConfig
from hub.sync.remote import Remote, RemoteError

log = logging.getLogger("hub.sync")


def _covered(scope: str, supported: list[str]) -> bool:
    if scope in supported:
        return True
    wanted = parse_scope(scope)
    if wanted is None:
        return False
    context = scope.split("/", 1)[0]
    for offer in supported:
        have = parse_scope(offer)
        if have is None or offer.split("/", 1)[0] != context:
            continue
        if have[0] in ("*", wanted[0]) and set(wanted[1]) <= set(have[1]):
            return True
    return False


def analyze(cfg: ConnectorConfig, capability: dict[str, Any] | None, smart: dict[str, Any] | None,
            problems: list[str] | None = None) -> dict[str, Any]:
    """The discovery report: ``supports`` (per type), ``smart``, and ``warnings`` (sentences, no secrets)."""
    warnings: list[str] = list(problems or [])
    types: dict[str, dict[str, Any]] = {}
    fhir_version = None
    if capability is not None:
        fhir_version = capability.get("fhirVersion")
        if fhir_version and not str(fhir_version).startswith("4.0"):
            warnings.append(f"the remote speaks FHIR {fhir_version}, not R4 (4.0.x)")
        rests = [r for r in capability.get("rest") or [] if r.get("mode", "server") == "server"]
        rest = rests[0] if rests else {}
        common = {p.get("name") for p in rest.get("searchParam") or []}
        for res in rest.get("resource") or []:
            interactions = sorted({i.get("code") for i in res.get("interaction") or [] if i.get("code")})
            types[res.get("type", "?")] = {
                "interactions": interactions,
                "searchParams": sorted({p.get("name") for p in res.get("searchParam") or []} | common),
                "versioning": res.get("versioning"),
                "conditionalCreate": bool(res.get("conditionalCreate")),
                "conditionalUpdate": bool(res.get("conditionalUpdate")),
            }
        for res_type in cfg.pull_types:
            info = types.get(res_type)
            if info is None:
                warnings.append(f"pull {res_type}: the remote's CapabilityStatement does not list {res_type}")
                continue
            need = "search-type" if cfg.pull_mode == "search" else "history-type"
            if need not in info["interactions"]:
                warnings.append(f"pull {res_type}: the remote does not offer {need}, which {cfg.pull_mode} mode needs")
            if cfg.pull_mode == "search" and "_lastUpdated" not in info["searchParams"]:
                warnings.append(f"pull {res_type}: the remote does not list _lastUpdated; every pull may fetch everything")
            if "read" not in info["interactions"]:
                warnings.append(f"pull {res_type}: the remote does not offer read; notifications cannot be fetched at once")
        for res_type in cfg.push_types:
            info = types.get(res_type)
            if info is None:
                warnings.append(f"push {res_type}: the remote's CapabilityStatement does not list {res_type}")
                continue
            for need in ("create", "update"):
                if need not in info["interactions"]:
                    warnings.append(f"push {res_type}: the remote does not offer {need}")
            if not info["conditionalCreate"]:
                warnings.append(f"push {res_type}: the remote does not support conditional create; "
                                "a create retried after a failure may be duplicated")
            if info["versioning"] != "versioned-update":
                warnings.append(f"push {res_type}: the remote does not say it honours If-Match (versioning "
                                f"{info['versioning'] or 'not stated'}); conflicts may go unnoticed")
    smart_report: dict[str, Any] | None = None
    auth = cfg.auth
    if smart is not None:
        smart_report = {k: smart.get(k) for k in ("token_endpoint", "token_endpoint_auth_methods_supported",
                                                  "token_endpoint_auth_signing_alg_values_supported",
                                                  "grant_types_supported", "scopes_supported", "capabilities")}
    if auth.method != "none":
        if smart is None and not auth.token_url:
            warnings.append("auth: the remote publishes no .well-known/smart-configuration and auth.token_url is not set")
        elif smart is not None:
            grants = smart.get("grant_types_supported")
            if grants is not None and "client_credentials" not in grants:
                warnings.append("auth: the remote does not list the client_credentials grant")
            methods = smart.get("token_endpoint_auth_methods_supported")
            wanted = "private_key_jwt" if auth.method == "smart-backend" else "client_secret_basic"
            if methods is not None and wanted not in methods:
                warnings.append(f"auth: the remote does not list {wanted} among its token endpoint auth methods")
            algs = smart.get("token_endpoint_auth_signing_alg_values_supported")
            if auth.method == "smart-backend" and algs is not None and auth.alg not in algs:
                warnings.append(f"auth: the remote does not accept assertions signed {auth.alg} (it lists {', '.join(algs)})")
            offered = smart.get("scopes_supported")
            if offered:
                missing = [s for s in auth.scopes if not _covered(s, list(offered))]
                if missing:
                    warnings.append(f"auth: the remote does not list scope(s) {' '.join(missing)}")
    return {
        "checked": datetime.now(UTC).isoformat(timespec="seconds"),
        "fhirVersion": fhir_version,
        "software": (capability or {}).get("software"),
        "supports": {t: types[t] for t in cfg.types if t in types},
        "smart": smart_report,
        "warnings": warnings,
    }


async def discover(remote: Remote) -> dict[str, Any]:
    """Fetch and analyze; sets the token endpoint from smart-configuration when the file gives none."""
    cfg = remote.cfg
    problems: list[str] = []
    capability: dict[str, Any] | None = None
    smart: dict[str, Any] | None = None
    try:
        found = await remote.json("GET", "metadata", authorized=False)
        if isinstance(found, dict) and found.get("resourceType") == "CapabilityStatement":
            capability = found
        else:
            problems.append("the remote's metadata is not a CapabilityStatement")
    except RemoteError as exc:
        problems.append(f"the remote's metadata cannot be read ({exc.code}{f', {exc.status}' if exc.status else ''})")
    try:
        found = await remote.json("GET", ".well-known/smart-configuration", authorized=False)
        smart = found if isinstance(found, dict) else None
    except RemoteError:
        smart = None
    if smart is not None and not remote.tokens.token_url and isinstance(smart.get("token_endpoint"), str):
        remote.tokens.token_url = smart["token_endpoint"]
    report = analyze(cfg, capability, smart, problems)
    for warning in report["warnings"]:
        log.warning("connector %s: %s", cfg.name, warning)
    return report
