"""Ed25519 nkeys: create, load, and validate public keys by kind.

nkeys 0.2.1 has no key-pair generator and cannot verify with a public key alone, so the two
small pieces it lacks live here.
"""

from __future__ import annotations

import base64
import binascii
import os

import nacl.exceptions
import nacl.signing
import nkeys

PREFIXES = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}
_LETTER_TO_KIND = {"O": "operator", "A": "account", "U": "user"}


class NkeyError(ValueError):
    """A key is not what it claims to be (bad encoding, checksum, or kind)."""


def create(kind: str) -> nkeys.KeyPair:
    """A fresh key pair of the given kind ("operator", "account" or "user")."""
    seed = nkeys.encode_seed(os.urandom(32), PREFIXES[kind])
    return nkeys.from_seed(bytearray(seed))


def from_seed(seed: str | bytes, kind: str) -> nkeys.KeyPair:
    """Load a seed and check it belongs to a key of `kind`."""
    raw = seed.encode() if isinstance(seed, str) else bytes(seed)
    raw = raw.strip()
    try:
        kp = nkeys.from_seed(bytearray(raw))
        public = kp.public_key.decode()
    except (nkeys.NkeysError, binascii.Error, ValueError, IndexError, TypeError) as exc:
        raise NkeyError(f"not a valid nkey seed ({exc.__class__.__name__})") from exc
    if public_kind(public) != kind:
        raise NkeyError(f"seed is for a {public_kind(public)} key, expected {kind}")
    return kp


def public_kind(public_key: str) -> str | None:
    """The kind of a well-formed public nkey, or None when it is not one (seeds included)."""
    if not isinstance(public_key, str) or len(public_key) != 56:
        return None
    kind = _LETTER_TO_KIND.get(public_key[:1])
    if kind is None:
        return None
    try:
        raw = base64.b32decode(public_key)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 35 or raw[0] != PREFIXES[kind]:
        return None
    if nkeys.crc16(bytearray(raw[:-2])) != int.from_bytes(raw[-2:], "little"):
        return None
    return kind


def check_public(public_key: object, kind: str) -> str:
    """Return the key when it is a valid public nkey of `kind`; otherwise raise with the reason."""
    if not isinstance(public_key, str):
        raise NkeyError(f"public key must be a string, got {type(public_key).__name__}")
    if public_key.startswith("S") and len(public_key) == 58:
        raise NkeyError("that is a private seed, not a public key: never send seeds")
    if len(public_key) != 56:
        raise NkeyError(f"public key must be 56 characters, got {len(public_key)}")
    found = public_kind(public_key)
    if found is None:
        raise NkeyError("not a valid public nkey (bad encoding or checksum)")
    if found != kind:
        article = "an" if found[0] in "aeiou" else "a"
        raise NkeyError(f"expected a {kind} public key, got {article} {found} key")
    return public_key


def verify(public_key: str, data: bytes, signature: bytes) -> bool:
    """Check an Ed25519 signature against an encoded public nkey."""
    if public_kind(public_key) is None:
        return False
    raw = base64.b32decode(public_key)[1:-2]
    try:
        nacl.signing.VerifyKey(raw).verify(data, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True
