"""The token endpoint's checks, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import jwt
import pytest

from hub.security import assertion as smart
from hub.security.tokens import ClientStore, OAuthError, TokenService
from hub.store.db import Database
from hub.store.schema import upgrade

TOKEN_URL = "https://hub.test/auth/token"
AUD = "https://hub.test/fhir"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(db_url: str) -> Iterator[tuple[TokenService, ClientStore, Clock]]:
    db = Database(db_url)
    upgrade(db)
    clock = Clock()
    store = ClientStore(db)
    yield TokenService(db, store, token_ttl=300, clock=clock), store, clock
    db.dispose()


def register(store: ClientStore, alg: str, scopes: str = "system/Patient.rs system/Appointment.cruds"):
    key = smart.generate_key(alg)
    client = store.add(f"test {alg}", scopes.split(), jwks=smart.public_jwks(key, "k1", alg))
    return client, key


def form(client_id: str, key, alg: str, *, scope: str = "system/Patient.rs", token_url: str = TOKEN_URL, **kw) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": smart.client_assertion(client_id, token_url, key, alg, "k1", **kw),
    }


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_token_issued_and_verified(service, alg: str) -> None:
    tokens, store, clock = service
    client, key = register(store, alg)
    answer = tokens.token(form(client.client_id, key, alg, scope="system/Patient.rs system/Observation.rs"), TOKEN_URL, AUD)
    assert answer["token_type"] == "bearer" and answer["expires_in"] == 300
    assert answer["scope"] == "system/Patient.rs"  # Observation is not registered for this client
    principal = tokens.verify(answer["access_token"], AUD, TOKEN_URL)
    assert principal.client_id == client.client_id
    assert principal.permissions.allows("Patient", "r") and not principal.permissions.allows("Patient", "c")
    clock.now += 301
    tokens._verified.clear()
    with pytest.raises(OAuthError):
        tokens.verify(answer["access_token"], AUD, TOKEN_URL)


def test_rejects_wrong_key(service) -> None:
    tokens, store, _ = service
    client, _ = register(store, "ES384")
    other = smart.generate_key("ES384")
    with pytest.raises(OAuthError, match="signature"):
        tokens.token(form(client.client_id, other, "ES384"), TOKEN_URL, AUD)


def _unsigned(client_id: str) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": "x"}
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


def test_rejects_alg_none(service) -> None:
    tokens, store, _ = service
    client, _ = register(store, "ES384")
    f = form(client.client_id, smart.generate_key("ES384"), "ES384")
    f["client_assertion"] = _unsigned(client.client_id)
    with pytest.raises(OAuthError, match="RS384 or ES384"):
        tokens.token(f, TOKEN_URL, AUD)


def test_rejects_hs256_signed_with_the_public_key(service) -> None:
    tokens, store, _ = service
    client, key = register(store, "RS384")
    public_pem = key.public_key().public_bytes(
        smart.serialization.Encoding.PEM, smart.serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"iss": client.client_id, "sub": client.client_id, "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": "hs"}
    import hashlib
    import hmac

    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    sig = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()).rstrip(b"=")
    f = form(client.client_id, key, "RS384")
    f["client_assertion"] = (header + b"." + body + b"." + sig).decode()
    with pytest.raises(OAuthError, match="RS384 or ES384"):
        tokens.token(f, TOKEN_URL, AUD)


def test_rejects_expired_assertion(service) -> None:
    tokens, store, _ = service
    client, key = register(store, "ES384")
    with pytest.raises(OAuthError, match="expired"):
        tokens.token(form(client.client_id, key, "ES384", now=time.time() - 600), TOKEN_URL, AUD)


def test_rejects_assertion_living_too_long(service) -> None:
    tokens, store, _ = service
    client, key = register(store, "ES384")
    with pytest.raises(OAuthError, match="five minutes"):
        tokens.token(form(client.client_id, key, "ES384", lifetime=3600), TOKEN_URL, AUD)


def test_rejects_replayed_jti(service) -> None:
    tokens, store, _ = service
    client, key = register(store, "ES384")
    tokens.token(form(client.client_id, key, "ES384", jti="once"), TOKEN_URL, AUD)
    with pytest.raises(OAuthError, match="jti"):
        tokens.token(form(client.client_id, key, "ES384", jti="once"), TOKEN_URL, AUD)


def test_rejects_wrong_audience(service) -> None:
    tokens, store, _ = service
    client, key = register(store, "ES384")
    with pytest.raises(OAuthError, match="aud"):
        tokens.token(form(client.client_id, key, "ES384", token_url="https://elsewhere.test/token"), TOKEN_URL, AUD)


def test_rejects_revoked_client_and_its_tokens(service) -> None:
    tokens, store, clock = service
    client, key = register(store, "ES384")
    answer = tokens.token(form(client.client_id, key, "ES384"), TOKEN_URL, AUD)
    assert store.revoke(client.client_id)
    with pytest.raises(OAuthError, match="revoked"):
        tokens.token(form(client.client_id, key, "ES384"), TOKEN_URL, AUD)
    clock.now += 3  # revocation is re-read at most every two seconds
    with pytest.raises(OAuthError, match="revoked"):
        tokens.verify(answer["access_token"], AUD, TOKEN_URL)


def test_rejects_unknown_client_and_unregistered_scope(service) -> None:
    tokens, store, _ = service
    client, key = register(store, "ES384", scopes="system/Patient.r")
    with pytest.raises(OAuthError, match="unknown"):
        tokens.token(form("no-such-client", key, "ES384"), TOKEN_URL, AUD)
    with pytest.raises(OAuthError) as info:
        tokens.token(form(client.client_id, key, "ES384", scope="system/Claim.cruds"), TOKEN_URL, AUD)
    assert info.value.error == "invalid_scope"


def test_rejects_tampered_access_token(service) -> None:
    tokens, store, _ = service
    client, key = register(store, "ES384")
    access = tokens.token(form(client.client_id, key, "ES384"), TOKEN_URL, AUD)["access_token"]
    claims = jwt.decode(access, options={"verify_signature": False})
    claims["scope"] = "system/*.cruds"
    forged = jwt.encode(claims, smart.generate_key("ES384"), algorithm="ES384")
    with pytest.raises(OAuthError):
        tokens.verify(forged, AUD, TOKEN_URL)


def test_client_registration_checks(service) -> None:
    _, store, _ = service
    key = smart.generate_key("ES384")
    with pytest.raises(ValueError, match="scope"):
        store.add("bad", ["patient/Patient.rs"], jwks=smart.public_jwks(key, "k", "ES384"))
    with pytest.raises(ValueError, match="exactly one"):
        store.add("bad", ["system/Patient.rs"])
    listed = [c.name for c in store.list()]
    assert "bad" not in listed


def test_verified_tokens_are_cached_until_they_expire(service, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, store, clock = service
    client, key = register(store, "ES384")
    access = tokens.token(form(client.client_id, key, "ES384"), TOKEN_URL, AUD)["access_token"]
    checks = []
    real = tokens._verify_signed
    monkeypatch.setattr(tokens, "_verify_signed", lambda *a: checks.append(a[0]) or real(*a))
    for _ in range(5):
        assert tokens.verify(access, AUD, TOKEN_URL).client_id == client.client_id
    assert len(checks) == 1, "the signature is checked once, then the verified token is remembered"
    # remembered for exactly the audience and issuer it was checked against
    with pytest.raises(OAuthError):
        tokens.verify(access, "https://elsewhere.test/fhir", TOKEN_URL)
    with pytest.raises(OAuthError):
        tokens.verify(access, AUD, "https://elsewhere.test/auth/token")
    # and only until it expires
    clock.now += 301
    with pytest.raises(OAuthError, match="expired"):
        tokens.verify(access, AUD, TOKEN_URL)


def test_token_cache_is_a_bounded_lru(service) -> None:
    tokens, store, _ = service
    tokens.VERIFIED_MAX = 2
    client, key = register(store, "ES384")
    a, b, c = (tokens.token(form(client.client_id, key, "ES384"), TOKEN_URL, AUD)["access_token"] for _ in range(3))
    tokens.verify(a, AUD, TOKEN_URL)
    tokens.verify(b, AUD, TOKEN_URL)
    tokens.verify(a, AUD, TOKEN_URL)  # a is now the most recently used
    tokens.verify(c, AUD, TOKEN_URL)
    assert [k[0] for k in tokens._verified] == [a, c]


def test_revocation_reaches_cached_tokens(service) -> None:
    tokens, store, clock = service
    client, key = register(store, "ES384")
    other, other_key = register(store, "ES384")
    access = tokens.token(form(client.client_id, key, "ES384"), TOKEN_URL, AUD)["access_token"]
    kept = tokens.token(form(other.client_id, other_key, "ES384"), TOKEN_URL, AUD)["access_token"]
    tokens.verify(access, AUD, TOKEN_URL)
    # revoked by another process (fhirhub clients revoke): the database changes behind this TokenService
    from sqlalchemy import update

    from hub.security.tables import client_t

    with store.db.write() as conn:
        conn.execute(update(client_t).where(client_t.c.client_id == client.client_id).values(revoked=True))
    clock.now += 2.5  # the client's state is re-read at most every two seconds
    with pytest.raises(OAuthError, match="revoked"):
        tokens.verify(access, AUD, TOKEN_URL)
    # revoked in this process: at once, without waiting for the re-read
    assert tokens.verify(kept, AUD, TOKEN_URL).client_id == other.client_id
    assert store.revoke(other.client_id)
    with pytest.raises(OAuthError, match="revoked"):
        tokens.verify(kept, AUD, TOKEN_URL)
