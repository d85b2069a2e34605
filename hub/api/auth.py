"""The OAuth edge: the SMART token endpoint, discovery, and bearer-token authentication."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hub.errors import Category, FhirError
from hub.security.audit import AuditRecord, AuditTrail
from hub.security.scopes import Permissions, Principal
from hub.security.tokens import OAuthError, TokenService
from hub.settings import Settings

log = logging.getLogger("hub.auth")
SCOPES_SUPPORTED = ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write", "fhirhub/admin", "fhirhub/audit"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ExternalIssuer:
    """Tokens from an external OIDC issuer, checked against its JWKS (PyJWT's PyJWKClient caches the keys)."""

    def __init__(self, issuer: str, jwks_url: str | None, audience: str | None) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        if jwks_url is None:
            import httpx

            jwks_url = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10).json()["jwks_uri"]
        self.jwks = jwt.PyJWKClient(jwks_url, cache_keys=True)

    def verify(self, token: str, audience: str) -> Principal:
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=["RS256", "RS384", "ES256", "ES384"],
                                audience=self.audience or audience, issuer=self.issuer, options={"require": ["exp"]})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_token", f"the access token is not acceptable ({type(exc).__name__})", 401) from exc
        scope = claims.get("scope") or " ".join(claims.get("scp") or [])
        client = claims.get("client_id") or claims.get("azp") or claims.get("sub") or "unknown"
        return Principal(str(client), Permissions.from_scopes(scope))


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per client: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float:
        """0 when allowed, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = _Bucket(float(self.burst), now)
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
            if b.tokens >= 1:
                b.tokens -= 1
                return 0.0
            return (1 - b.tokens) / self.rate


class Authenticator:
    """Turns an HTTP request into a Principal, or a 401/429 FhirError."""

    def __init__(self, settings: Settings, tokens: TokenService | None, external: ExternalIssuer | None) -> None:
        self.enabled = settings.auth != "off"
        self.settings = settings
        self.tokens = tokens
        self.external = external
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)

    def principal(self, request: Request, fhir_base: str) -> Principal:
        address = request.client.host if request.client else None
        if not self.enabled:
            principal = Principal("anonymous", Permissions.everything(), address)
            key = address or "anonymous"
        else:
            header = request.headers.get("authorization") or ""
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise unauthorized("A bearer access token is required", "invalid_request")
            try:
                if self.external is not None:
                    found = self.external.verify(token, fhir_base)
                else:
                    assert self.tokens is not None
                    found = self.tokens.verify(token, fhir_base, token_url(fhir_base))
            except OAuthError as exc:
                raise unauthorized(exc.description, exc.error) from None
            principal = Principal(found.client_id, found.permissions, address)
            key = principal.client_id
        wait = self.limiter.check(key)
        if wait:
            request.state.principal = principal  # who was throttled, for the audit record of the 429
            raise FhirError(Category.TOO_MANY, "FHIRHUB-RATE-LIMIT", "Too many requests; slow down",
                            headers={"Retry-After": str(max(1, round(wait + 0.5)))})
        return principal


def unauthorized(message: str, error: str) -> FhirError:
    return FhirError(Category.UNAUTHORIZED, "FHIRHUB-AUTH-TOKEN", message,
                     headers={"WWW-Authenticate": f'Bearer realm="fhirhub", error="{error}"'})


def token_url(fhir_base: str) -> str:
    return fhir_base.rsplit("/fhir", 1)[0] + "/auth/token"


def smart_configuration(fhir_base: str, settings: Settings) -> dict[str, Any]:
    root = fhir_base.rsplit("/fhir", 1)[0]
    if settings.auth_issuer:
        return {"issuer": settings.auth_issuer, "token_endpoint": f"{settings.auth_issuer.rstrip('/')}/token",
                "capabilities": ["client-confidential-asymmetric"], "grant_types_supported": ["client_credentials"]}
    return {
        "issuer": f"{root}/auth/token",
        "jwks_uri": f"{root}/auth/jwks",
        "token_endpoint": f"{root}/auth/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }


def mount(app: FastAPI, settings: Settings, tokens: TokenService | None, audit: AuditTrail | None) -> None:
    def fhir_base(request: Request) -> str:
        return settings.base_url or f"{str(request.base_url).rstrip('/')}/fhir"

    async def discovery(request: Request) -> JSONResponse:
        return JSONResponse(smart_configuration(fhir_base(request), settings))

    app.add_api_route("/.well-known/smart-configuration", discovery, methods=["GET"], include_in_schema=False)
    app.add_api_route("/fhir/.well-known/smart-configuration", discovery, methods=["GET"], include_in_schema=False)
    if tokens is None:
        return
    service = tokens

    async def token(request: Request) -> JSONResponse:
        form = {k: str(v) for k, v in (await request.form()).items()}
        base = fhir_base(request)
        try:
            body = await run_in_threadpool(service.token, form, token_url(base), base)
        except OAuthError as exc:
            log.warning("token request refused error=%s", exc.error)
            if audit is not None:
                address = request.client.host if request.client else None
                audit.enqueue(AuditRecord("authorize", 4, None, address, detail=f"token {exc.error}"))
            return JSONResponse(exc.body(), status_code=exc.status, headers={"Cache-Control": "no-store"})
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.public_jwks))

    app.add_api_route("/auth/token", token, methods=["POST"], include_in_schema=False)
    app.add_api_route("/auth/jwks", jwks, methods=["GET"], include_in_schema=False)
