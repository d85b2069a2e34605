"""The remote FHIR server: httpx calls with tokens, retries, and an AuditEvent for each.

* Tokens: the OAuth 2.0 client-credentials grant, built and parsed by ``oauthlib`` (the engine of
  requests-oauthlib) and sent through the same httpx client as the FHIR calls, so respx sees both.
  SMART Backend Services authenticates with a ``private_key_jwt`` assertion signed RS384/ES384 by
  :mod:`hub.security.assertion`; ``client-secret`` uses HTTP Basic. A token is cached until
  ``token_leeway`` seconds before it expires; a 401 from the FHIR server drops it.
* Retries: 429, 5xx, timeouts and connection failures are retried by ``tenacity`` with exponential
  backoff and jitter, waiting what ``Retry-After`` asks (capped at ``http.max_wait``) when the remote
  says. Anything else is a :class:`RemoteError` that is not ``transient``: the caller dead-letters it.
* Audit: every HTTP call (token requests included) enqueues an AuditEvent (subtype ``sync``, agent
  ``sync:<connector>``) with the resource reference it concerns and the method and path.

Nothing here logs a resource, a token or a secret.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
from oauthlib.oauth2 import BackendApplicationClient
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from hub.security.assertion import client_assertion, load_private_key
from hub.security.audit import AuditRecord, AuditTrail, outcome_code
from hub.sync.config import ConnectorConfig

log = logging.getLogger("hub.sync")
FHIR_JSON = "application/fhir+json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class RemoteError(Exception):
    """A failed remote call. ``transient`` ones (429, 5xx, timeouts, unreachable) are worth retrying."""

    def __init__(self, code: str, message: str, *, status: int | None = None, outcome: dict[str, Any] | None = None,
                 retry_after: float | None = None, transient: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.outcome = outcome
        self.retry_after = retry_after
        self.transient = transient

    @property
    def conflict(self) -> bool:
        return self.status in (409, 412)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After``: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _outcome(resp: httpx.Response) -> dict[str, Any] | None:
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None


class _WaitRetryAfter(wait_base):
    """Wait what the remote's Retry-After asks (capped), else exponential backoff with jitter."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.fallback = wait_exponential_jitter(multiplier=0.5, max=max(cap, 0.5), jitter=0.5)

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(exc, RemoteError) and exc.retry_after is not None:
            return min(exc.retry_after, self.cap)
        return min(float(self.fallback(retry_state)), self.cap)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, RemoteError) and exc.transient


class TokenSource:
    """Access tokens for the connector (client credentials), cached until shortly before expiry."""

    def __init__(self, cfg: ConnectorConfig, remote: Remote) -> None:
        self.cfg = cfg
        self.remote = remote
        self.token_url: str | None = cfg.auth.token_url
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.granted: tuple[str, ...] = ()
        self.fetched = 0  # token requests made (status)
        self._key = load_private_key(cfg.auth.private_key.reveal().encode()) if cfg.auth.private_key is not None else None

    def invalidate(self) -> None:
        self._token = None

    def valid(self) -> bool:
        return self._token is not None and self.remote.clock() < self._expires_at - self.cfg.auth.token_leeway

    async def header(self) -> dict[str, str]:
        if self.cfg.auth.method == "none":
            return {}
        async with self._lock:
            if not self.valid():
                await self._fetch()
        return {"Authorization": f"Bearer {self._token}"}

    async def _fetch(self) -> None:
        auth = self.cfg.auth
        if not self.token_url:
            raise RemoteError("FHIRHUB-SYNC-AUTH", "no token endpoint: set auth.token_url or let the remote publish "
                              ".well-known/smart-configuration")
        assert auth.client_id is not None
        client = BackendApplicationClient(auth.client_id)
        extra: dict[str, str] = {}
        basic: httpx.BasicAuth | None = None
        if auth.method == "smart-backend":
            assert self._key is not None and auth.kid is not None
            extra = {"client_assertion_type": ASSERTION_TYPE,
                     "client_assertion": client_assertion(auth.client_id, self.token_url, self._key, auth.alg, auth.kid,
                                                          now=self.remote.clock())}
        else:
            assert auth.client_secret is not None
            basic = httpx.BasicAuth(quote(auth.client_id, safe=""), quote(auth.client_secret.reveal(), safe=""))
        body = client.prepare_request_body(scope=list(auth.scopes) or None, include_client_id=False, **extra)
        started = self.remote.clock()
        try:
            resp = await self.remote.http.post(self.token_url, content=body, auth=basic or httpx.USE_CLIENT_DEFAULT,
                                               headers={"Content-Type": "application/x-www-form-urlencoded",
                                                        "Accept": "application/json"})
        except httpx.TimeoutException as exc:
            self.remote.audit_call("POST", self.token_url, None, "FHIRHUB-SYNC-TIMEOUT")
            raise RemoteError("FHIRHUB-SYNC-TIMEOUT", "the token endpoint did not answer in time", transient=True) from exc
        except httpx.TransportError as exc:
            self.remote.audit_call("POST", self.token_url, None, "FHIRHUB-SYNC-UNREACHABLE")
            raise RemoteError("FHIRHUB-SYNC-UNREACHABLE", f"the token endpoint cannot be reached ({type(exc).__name__})",
                              transient=True) from exc
        self.fetched += 1
        if resp.status_code == 429 or resp.status_code >= 500:
            self.remote.audit_call("POST", self.token_url, resp.status_code, "FHIRHUB-SYNC-AUTH")
            raise RemoteError("FHIRHUB-SYNC-AUTH", f"the token endpoint answered {resp.status_code}", status=resp.status_code,
                              retry_after=retry_after_seconds(resp.headers.get("retry-after"), time.time()), transient=True)
        try:
            token = client.parse_request_body_response(resp.text)
        except (OAuth2Error, ValueError, Warning) as exc:
            self.remote.audit_call("POST", self.token_url, resp.status_code, "FHIRHUB-SYNC-AUTH")
            error = getattr(exc, "error", None) or type(exc).__name__
            description = getattr(exc, "description", None) or ""
            raise RemoteError("FHIRHUB-SYNC-AUTH", f"the token request was refused: {error} {description}".strip(),
                              status=resp.status_code) from None
        self.remote.audit_call("POST", self.token_url, resp.status_code)
        lifetime = float(token.get("expires_in") or 300)
        self._token = str(token["access_token"])
        self._expires_at = started + lifetime
        granted = token.get("scope")
        self.granted = tuple(granted) if isinstance(granted, list) else tuple(str(granted or "").split())
        missing = [s for s in auth.scopes if self.granted and s not in self.granted]
        if missing:
            log.warning("connector %s: the remote granted fewer scopes than asked; missing: %s", self.cfg.name, " ".join(missing))


class Remote:
    """The remote FHIR server of one connector."""

    def __init__(self, cfg: ConnectorConfig, *, http: httpx.AsyncClient | None = None, audit: AuditTrail | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.cfg = cfg
        self.base = cfg.base_url
        self.http = http or httpx.AsyncClient(timeout=cfg.timeout, follow_redirects=False)
        self.audit = audit
        self.clock = clock
        self.sleep = sleep
        self.tokens = TokenSource(cfg, self)
        origin = urlsplit(self.base)
        self._origin = (origin.scheme, origin.netloc)

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------ audit
    def audit_call(self, method: str, url: str, status: int | None, detail: str | None = None,
                   entities: Sequence[str] = ()) -> None:
        if self.audit is None:
            return
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.audit.enqueue(AuditRecord("sync", outcome_code(status or 503), self.cfg.origin, None,
                                       entities=list(entities), query=f"{method} {parts.netloc}{path}", detail=detail))

    # ------------------------------------------------------------------ calls
    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            parts = urlsplit(path_or_url)
            if (parts.scheme, parts.netloc) != self._origin:
                raise RemoteError("FHIRHUB-SYNC-FOREIGN-LINK", "the remote pointed to another server; not followed")
            return path_or_url
        return f"{self.base}/{path_or_url.lstrip('/')}" if path_or_url else self.base

    async def call(self, method: str, path_or_url: str, *, params: Sequence[tuple[str, str]] | None = None,
                   body: Any = None, headers: dict[str, str] | None = None, entities: Sequence[str] = (),
                   authorized: bool = True) -> httpx.Response:
        """One FHIR call, retried while the failure is transient; a response under 400, or a RemoteError."""
        url = self.url(path_or_url)
        retrying = AsyncRetrying(stop=stop_after_attempt(self.cfg.attempts), wait=_WaitRetryAfter(self.cfg.max_wait),
                                 retry=retry_if_exception(_transient), sleep=self.sleep, reraise=True)
        unauthorized = [0]
        async for attempt in retrying:
            with attempt:
                return await self._once(method, url, params, body, headers, entities, authorized, unauthorized)
        raise AssertionError("unreachable")  # pragma: no cover - tenacity re-raises the last error

    async def _once(self, method: str, url: str, params: Sequence[tuple[str, str]] | None, body: Any,
                    headers: dict[str, str] | None, entities: Sequence[str], authorized: bool,
                    unauthorized: list[int]) -> httpx.Response:
        sent = {"Accept": FHIR_JSON, **(headers or {})}
        if authorized:
            sent.update(await self.tokens.header())
        content = None
        if body is not None:
            content = orjson.dumps(body)
            sent["Content-Type"] = FHIR_JSON
        try:
            resp = await self.http.request(method, url, params=list(params) if params else None, content=content, headers=sent)
        except httpx.TimeoutException as exc:
            self.audit_call(method, url, None, "FHIRHUB-SYNC-TIMEOUT", entities)
            raise RemoteError("FHIRHUB-SYNC-TIMEOUT", f"{method} timed out", transient=True) from exc
        except httpx.TransportError as exc:
            self.audit_call(method, url, None, "FHIRHUB-SYNC-UNREACHABLE", entities)
            raise RemoteError("FHIRHUB-SYNC-UNREACHABLE", f"the remote cannot be reached ({type(exc).__name__})",
                              transient=True) from exc
        status = resp.status_code
        full = str(resp.request.url) if params else url
        if status < 400:
            self.audit_call(method, full, status, None, entities)
            return resp
        outcome = _outcome(resp)
        if status == 401 and authorized and self.cfg.auth.method != "none":
            self.tokens.invalidate()
            unauthorized[0] += 1
            self.audit_call(method, full, status, "FHIRHUB-SYNC-AUTH", entities)
            # one fresh token is worth a try; a second 401 is final
            raise RemoteError("FHIRHUB-SYNC-AUTH", "the remote refused the access token", status=status, outcome=outcome,
                              transient=unauthorized[0] < 2)
        transient = status == 429 or status >= 500
        code = "FHIRHUB-SYNC-CONFLICT" if status in (409, 412) else "FHIRHUB-SYNC-REMOTE-REFUSED" if not transient \
            else "FHIRHUB-SYNC-REMOTE-UNAVAILABLE"
        self.audit_call(method, full, status, code, entities)
        raise RemoteError(code, f"{method} answered {status}", status=status, outcome=outcome, transient=transient,
                          retry_after=retry_after_seconds(resp.headers.get("retry-after"), time.time()))

    async def json(self, method: str, path_or_url: str, **kwargs: Any) -> Any:
        resp = await self.call(method, path_or_url, **kwargs)
        if not resp.content:
            return None
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise RemoteError("FHIRHUB-SYNC-REMOTE-JSON", f"{method} answered {resp.status_code} with a body that is not JSON",
                              status=resp.status_code) from exc
