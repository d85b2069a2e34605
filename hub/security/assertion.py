"""The client side of SMART Backend Services: keys, JWKS and signed client assertions.

Used by the hub when it calls an EHR (``fhir-rest`` connectors), by the README's
example, and by the tests.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def generate_key(alg: str = "ES384") -> PrivateKey:
    if alg == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    raise ValueError("alg must be RS384 or ES384")


def public_jwks(key: PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        text = jwt.algorithms.RSAAlgorithm.to_jwk(public)
    else:
        text = jwt.algorithms.ECAlgorithm.to_jwk(public)
    jwk = json.loads(text)
    jwk.update({"kid": kid, "alg": alg, "use": "sig", "key_ops": ["verify"]})
    return {"keys": [jwk]}


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_private_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("the key must be an RSA or EC private key")
    return key


def client_assertion(client_id: str, token_url: str, key: PrivateKey, alg: str, kid: str, *,
                     lifetime: int = 240, jti: str | None = None, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": issued + lifetime, "iat": issued,
              "jti": jti or uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def token_request(client_id: str, token_url: str, key: PrivateKey, alg: str, kid: str, scope: str) -> dict[str, str]:
    """The form body of a client-credentials token request."""
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion(client_id, token_url, key, alg, kid),
    }
