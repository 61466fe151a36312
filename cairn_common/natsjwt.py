"""NATS JWT v2 encoding (operator, account, user claims) signed with nkeys.

PyJWT does the JWS framing; the `ed25519-nkey` algorithm registered here signs with an nkeys
key pair. nats-server refuses `alg: EdDSA`, hence the custom name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import jwt
import nkeys
from jwt.algorithms import Algorithm

from cairn_common import nkey

ALGORITHM = "ed25519-nkey"


class JwtError(ValueError):
    """A token is malformed, wrongly signed, or not the kind of claim expected."""


class _NkeyAlgorithm(Algorithm):
    """Signs with an nkeys KeyPair; verifies with the issuer's encoded public key."""

    def prepare_key(self, key: Any) -> Any:
        return key

    def sign(self, msg: bytes, key: nkeys.KeyPair) -> bytes:
        return key.sign(msg)

    def verify(self, msg: bytes, key: str, sig: bytes) -> bool:
        return nkey.verify(key, msg, sig)

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError("nkeys have no JWK form")

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError("nkeys have no JWK form")


_jws = jwt.PyJWS(algorithms=[])
_jws.register_algorithm(ALGORITHM, _NkeyAlgorithm())


def encode(claims: dict[str, Any], signer: nkeys.KeyPair) -> str:
    """Sign claims; fills `iss` from the signer, `iat` if absent, and a content-hash `jti`."""
    body = dict(claims)
    body["iss"] = signer.public_key.decode()
    body.setdefault("iat", int(time.time()))
    body.pop("jti", None)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    payload = json.dumps(body, separators=(",", ":")).encode()
    return _jws.encode(payload, signer, algorithm=ALGORITHM, headers={"typ": "JWT"})


def decode(token: str, verify: bool = True) -> dict[str, Any]:
    """Claims of a NATS JWT; with `verify`, the signature must match the `iss` key."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise JwtError("not a JWT (expected three dot-separated parts)")
    try:
        unverified = json.loads(_jws.decode_complete(token, options={"verify_signature": False})
                                ["payload"])
    except (jwt.PyJWTError, ValueError) as exc:
        raise JwtError(f"malformed JWT: {exc}") from exc
    if not isinstance(unverified, dict) or "iss" not in unverified:
        raise JwtError("JWT claims have no issuer")
    if verify:
        try:
            _jws.decode_complete(token, key=unverified["iss"], algorithms=[ALGORITHM])
        except jwt.PyJWTError as exc:
            raise JwtError(f"JWT signature does not verify against its issuer: {exc}") from exc
    return unverified


def operator_claims(
    operator_public: str, name: str, system_account: str, signing_keys: list[str] | None = None
) -> dict[str, Any]:
    return {
        "sub": operator_public,
        "name": name,
        "nats": {
            "type": "operator",
            "version": 2,
            "system_account": system_account,
            "signing_keys": signing_keys or [],
        },
    }


UNLIMITED_ACCOUNT_LIMITS: dict[str, Any] = {
    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
    "wildcards": True, "conn": -1, "leaf": -1,
}


def account_claims(
    account_public: str,
    name: str,
    *,
    limits: dict[str, Any] | None = None,
    signing_keys: list[str] | None = None,
    revocations: dict[str, int] | None = None,
    iat: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Account claims; `limits` merges over unlimited core limits (JetStream off unless given)."""
    nats: dict[str, Any] = {
        "type": "account",
        "version": 2,
        "limits": {**UNLIMITED_ACCOUNT_LIMITS, **(limits or {})},
        "default_permissions": {"pub": {}, "sub": {}},
    }
    if signing_keys:
        nats["signing_keys"] = signing_keys
    if revocations:
        nats["revocations"] = revocations
    if extra:
        nats.update(extra)
    claims: dict[str, Any] = {"sub": account_public, "name": name, "nats": nats}
    if iat is not None:
        claims["iat"] = iat
    return claims


def user_claims(
    user_public: str,
    name: str,
    *,
    issuer_account: str | None = None,
    pub_allow: list[str] | None = None,
    pub_deny: list[str] | None = None,
    sub_allow: list[str] | None = None,
    sub_deny: list[str] | None = None,
    allow_responses: bool = False,
    expires: int | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """User claims with literal subjects; subs/data/payload are -1 (omitted would mean 0)."""
    nats: dict[str, Any] = {
        "type": "user",
        "version": 2,
        "pub": _perm(pub_allow, pub_deny),
        "sub": _perm(sub_allow, sub_deny),
        "subs": -1,
        "data": -1,
        "payload": -1,
    }
    if allow_responses:
        nats["resp"] = {"max": 1, "ttl": 0}
    if issuer_account:
        nats["issuer_account"] = issuer_account
    if tags:
        nats["tags"] = list(tags)
    claims: dict[str, Any] = {"sub": user_public, "name": name, "nats": nats}
    if expires is not None:
        claims["exp"] = expires
    return claims


def _perm(allow: list[str] | None, deny: list[str] | None) -> dict[str, list[str]]:
    perm: dict[str, list[str]] = {}
    if allow:
        perm["allow"] = list(allow)
    if deny:
        perm["deny"] = list(deny)
    return perm
