"""SMART Backend Services: the token endpoint, and verification of the tokens it issues.

https://hl7.org/fhir/smart-app-launch/backend-services.html

* ``client_credentials`` grant with a ``private_key_jwt`` client assertion signed
  RS384 or ES384, checked against the client's registered JWKS (inline or by URL);
* the assertion's ``iss``/``sub`` (the client id), ``aud`` (this token endpoint),
  ``exp`` (at most five minutes ahead) and ``jti`` (never seen before) are checked;
* the access token is a JWT the hub signs ES384 with its own key (kept in the
  database), valid for ``token_ttl`` seconds, carrying the granted scopes.

JWT handling is PyJWT's; nothing here parses or verifies a JWT by hand.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from hub.security.scopes import Permissions, Principal, valid_scope
from hub.security.tables import client_t, jti_t, key_t
from hub.store.db import Database

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300


class OAuthError(Exception):
    """An RFC 6749 error answer: ``error`` code, description and HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    jwks: dict[str, Any] | None
    jwks_url: str | None
    scopes: tuple[str, ...]
    revoked: bool


class ClientStore:
    """Registered clients (``fhirhub clients add/list/revoke``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.on_revoke: list[Callable[[str], None]] = []  # told at once of a revocation made in this process

    def add(self, name: str, scopes: list[str], jwks: dict[str, Any] | None = None, jwks_url: str | None = None,
            client_id: str | None = None) -> Client:
        bad = [s for s in scopes if not valid_scope(s)]
        if bad:
            raise ValueError(f"unsupported scope(s): {' '.join(bad)}")
        if (jwks is None) == (jwks_url is None):
            raise ValueError("give exactly one of a JWKS or a JWKS URL")
        if jwks is not None and not isinstance(jwks.get("keys"), list):
            raise ValueError("a JWKS is an object with a 'keys' array")
        client = Client(client_id or str(uuid.uuid4()), name, jwks, jwks_url, tuple(scopes), False)
        with self.db.write() as conn:
            conn.execute(
                insert(client_t).values(
                    client_id=client.client_id,
                    name=name,
                    jwks=json.dumps(jwks) if jwks is not None else None,
                    jwks_url=jwks_url,
                    scopes=" ".join(scopes),
                    revoked=False,
                    created=int(time.time()),
                )
            )
        return client

    def get(self, client_id: str) -> Client | None:
        with self.db.read() as conn:
            row = conn.execute(select(client_t).where(client_t.c.client_id == client_id)).first()
        return None if row is None else _client(row)

    def list(self) -> list[Client]:
        with self.db.read() as conn:
            return [_client(r) for r in conn.execute(select(client_t).order_by(client_t.c.pk))]

    def revoke(self, client_id: str) -> bool:
        from sqlalchemy import update

        with self.db.write() as conn:
            found = bool(conn.execute(update(client_t).where(client_t.c.client_id == client_id).values(revoked=True)).rowcount)
        for listener in self.on_revoke:
            listener(client_id)
        return found


def _client(row: Any) -> Client:
    return Client(row.client_id, row.name, json.loads(row.jwks) if row.jwks else None, row.jwks_url,
                  tuple(row.scopes.split()), bool(row.revoked))


class TokenService:
    VERIFIED_MAX = 10_000  # verified tokens remembered (LRU)
    REVOCATION_TTL = 2.0  # seconds a client's revoked state is trusted before it is read again

    def __init__(self, db: Database, clients: ClientStore, *, token_ttl: int = 300,
                 clock: Callable[[], float] = time.time, http: httpx.Client | None = None) -> None:
        self.db = db
        self.clients = clients
        self.token_ttl = token_ttl
        self.clock = clock
        self.http = http or httpx.Client(timeout=10)
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._kid = ""
        self._lock = threading.Lock()
        self._verified: OrderedDict[tuple[str, str, str], tuple[Principal, float]] = OrderedDict()
        self._revoked_cache: dict[str, tuple[bool, float]] = {}
        self._jwks_cache: dict[str, tuple[dict[str, Any], float]] = {}
        clients.on_revoke.append(self.forget_client)

    # ------------------------------------------------------------- signing key
    def signing_key(self) -> tuple[ec.EllipticCurvePrivateKey, str]:
        with self._lock:
            if self._key is None:
                with self.db.write() as conn:
                    if conn.dialect.name == "postgresql":
                        # API worker processes may ask at once on a new database: one of them creates the key,
                        # the others wait and read it (SQLite's writers are serialized already).
                        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7245002)")
                    row = conn.execute(select(key_t).order_by(key_t.c.pk.desc()).limit(1)).first()
                    if row is None:
                        key = ec.generate_private_key(ec.SECP384R1())
                        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
                        kid = uuid.uuid4().hex
                        conn.execute(insert(key_t).values(kid=kid, private_pem=pem, created=int(self.clock())))
                    else:
                        pem, kid = row.private_pem, row.kid
                loaded = serialization.load_pem_private_key(pem, None)
                assert isinstance(loaded, ec.EllipticCurvePrivateKey)
                self._key, self._kid = loaded, kid
            return self._key, self._kid

    def public_jwks(self) -> dict[str, Any]:
        key, kid = self.signing_key()
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": kid, "alg": "ES384", "use": "sig"})
        return {"keys": [jwk]}

    # ----------------------------------------------------------- token request
    def token(self, form: dict[str, str], token_url: str, audience: str) -> dict[str, Any]:
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only grant_type=client_credentials is supported")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion") or ""
        client = self._check_assertion(assertion, token_url)
        requested = (form.get("scope") or "").split()
        if not requested:
            raise OAuthError("invalid_scope", "scope is required")
        granted = [s for s in requested if s in client.scopes or _covered(s, client.scopes)]
        if not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes is registered for this client")
        now = int(self.clock())
        key, kid = self.signing_key()
        access = jwt.encode(
            {"iss": token_url, "sub": client.client_id, "aud": audience, "iat": now, "exp": now + self.token_ttl,
             "jti": uuid.uuid4().hex, "scope": " ".join(granted)},
            key, algorithm="ES384", headers={"kid": kid},
        )
        return {"access_token": access, "token_type": "bearer", "expires_in": self.token_ttl, "scope": " ".join(granted)}

    def _check_assertion(self, assertion: str, token_url: str) -> Client:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_client", "the client assertion is not a JWT", 401) from exc
        alg = header.get("alg")
        if alg not in ASSERTION_ALGS:
            raise OAuthError("invalid_client", "the client assertion must be signed RS384 or ES384", 401)
        client_id = claims.get("iss")
        if not isinstance(client_id, str) or claims.get("sub") != client_id:
            raise OAuthError("invalid_client", "iss and sub must both be the client id", 401)
        client = self.clients.get(client_id)
        if client is None or client.revoked:
            raise OAuthError("invalid_client", "unknown or revoked client", 401)
        verified: dict[str, Any] | None = None
        for key in self._client_keys(client, header.get("kid"), alg):
            try:
                verified = jwt.decode(
                    assertion, key, algorithms=[alg], audience=token_url,
                    options={"require": ["exp", "iss", "sub", "jti", "aud"], "verify_exp": False, "verify_iat": False},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError as exc:
                raise OAuthError("invalid_client", "the client assertion's aud must be the token endpoint URL", 401) from exc
            except jwt.PyJWTError as exc:
                raise OAuthError("invalid_client", f"the client assertion is not acceptable ({type(exc).__name__})", 401) from exc
        if verified is None:
            raise OAuthError("invalid_client", "the client assertion's signature does not match a registered key", 401)
        now = int(self.clock())
        exp = int(verified["exp"])
        if exp < now - 5:  # the hub's clock decides, with five seconds of leeway
            raise OAuthError("invalid_client", "the client assertion has expired", 401)
        if exp > now + MAX_ASSERTION_LIFETIME + 5:
            raise OAuthError("invalid_client", "the client assertion may live at most five minutes", 401)
        self._use_jti(client.client_id, str(verified["jti"]), exp, now)
        return client

    def _client_keys(self, client: Client, kid: str | None, alg: str) -> list[Any]:
        jwks = client.jwks if client.jwks is not None else self._fetch_jwks(client.jwks_url or "")
        keys = []
        want_kty = "RSA" if alg == "RS384" else "EC"
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") != want_kty or (kid and jwk.get("kid") not in (None, kid)):
                continue
            try:
                keys.append(jwt.PyJWK(jwk, algorithm=alg).key)
            except jwt.PyJWTError:
                continue
        return keys

    def _fetch_jwks(self, url: str) -> dict[str, Any]:
        cached = self._jwks_cache.get(url)
        now = self.clock()
        if cached and cached[1] > now:
            return cached[0]
        try:
            response = self.http.get(url)
            response.raise_for_status()
            jwks = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OAuthError("invalid_client", "the client's JWKS URL cannot be read", 401) from exc
        self._jwks_cache[url] = (jwks, now + 300)
        return jwks

    def _use_jti(self, client_id: str, jti: str, exp: int, now: int) -> None:
        try:
            with self.db.write() as conn:
                conn.execute(delete(jti_t).where(jti_t.c.expires < now - 60))
                conn.execute(insert(jti_t).values(client_id=client_id, jti=jti[:255], expires=exp))
        except IntegrityError as exc:
            raise OAuthError("invalid_client", "the client assertion's jti has been used before", 401) from exc

    # ------------------------------------------------------------ verification
    def verify(self, token: str, audience: str, token_url: str) -> Principal:
        """The principal an access token stands for, or OAuthError (401).

        A verified token is remembered, by its exact text and the audience and issuer it was
        checked against, until it expires: the token is signed by the hub and cannot change, so
        checking its ES384 signature again (about a millisecond of CPU) would prove nothing new.
        The cache is a bounded LRU. What can change — the client being revoked — is checked on
        every call (against the database at most every two seconds per client, see
        :meth:`_is_revoked`).
        """
        now = self.clock()
        key = (token, audience, token_url)
        cached = self._verified.get(key)
        if cached is None or cached[1] <= now:
            if cached is not None:
                self._verified.pop(key, None)
            cached = self._verify_signed(token, audience, token_url, now)
            self._verified[key] = cached
            if len(self._verified) > self.VERIFIED_MAX:
                with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                    self._verified.pop(next(iter(self._verified)))  # the least recently used
        else:
            with contextlib.suppress(KeyError):
                self._verified.move_to_end(key)
        principal = cached[0]
        if self._is_revoked(principal.client_id, now):
            raise OAuthError("invalid_token", "the client has been revoked", 401)
        return principal

    def _verify_signed(self, token: str, audience: str, token_url: str, now: float) -> tuple[Principal, float]:
        key, _ = self.signing_key()
        try:
            claims = jwt.decode(token, key.public_key(), algorithms=["ES384"], audience=audience, issuer=token_url,
                                options={"require": ["exp", "sub", "scope"], "verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_token", f"the access token is not acceptable ({type(exc).__name__})", 401) from exc
        if float(claims["exp"]) <= now:
            raise OAuthError("invalid_token", "the access token has expired", 401)
        return Principal(claims["sub"], Permissions.from_scopes(claims["scope"])), float(claims["exp"])

    def _is_revoked(self, client_id: str, now: float) -> bool:
        """Revocation is checked against the database at most every two seconds per client.

        A revocation through :meth:`ClientStore.revoke` in this process takes effect at once
        (:meth:`forget_client`); one made by another process (``fhirhub clients revoke``) within
        two seconds.
        """
        cached = self._revoked_cache.get(client_id)
        if cached and cached[1] > now:
            return cached[0]
        client = self.clients.get(client_id)
        revoked = client is None or client.revoked
        self._revoked_cache[client_id] = (revoked, now + self.REVOCATION_TTL)
        return revoked

    def forget_client(self, client_id: str) -> None:
        """Re-read this client's state from the database at its next request."""
        self._revoked_cache.pop(client_id, None)


def _covered(scope: str, registered: tuple[str, ...]) -> bool:
    """A requested scope narrower than a registered one (``system/Patient.r`` under ``system/*.cruds``)."""
    asked = Permissions.from_scopes([scope])
    allowed = Permissions.from_scopes(list(registered))
    if not asked.grants:
        return False
    return all(allowed.allows(t, letter) for t, letters in asked.grants.items() for letter in letters if t != "*") and (
        "*" not in asked.grants or all(letter in allowed.grants.get("*", frozenset()) for letter in asked.grants["*"])
    )
