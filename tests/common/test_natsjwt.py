"""JWT encoding, nkey validation and the creds format, on literal inputs."""

from __future__ import annotations

import stat

import pytest

from cairn_common import creds, natsjwt, nkey


def test_roundtrip_and_header():
    account = nkey.create("account")
    user = nkey.create("user")
    token = natsjwt.encode(
        natsjwt.user_claims(
            user.public_key.decode(), "u", pub_allow=["a.>"], expires=2_000_000_000
        ),
        account,
    )
    import base64
    import json

    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"typ": "JWT", "alg": "ed25519-nkey"}
    claims = natsjwt.decode(token)
    assert claims["iss"] == account.public_key.decode()
    assert claims["sub"] == user.public_key.decode()
    assert claims["nats"]["pub"] == {"allow": ["a.>"]}
    assert claims["nats"]["subs"] == -1 and claims["exp"] == 2_000_000_000
    assert claims["jti"] and claims["iat"]


def test_tampered_token_fails_verification():
    account = nkey.create("account")
    token = natsjwt.encode(natsjwt.account_claims(account.public_key.decode(), "a"), account)
    other = natsjwt.encode(
        natsjwt.account_claims(account.public_key.decode(), "evil"), nkey.create("account")
    )
    forged = ".".join([*other.split(".")[:2], token.split(".")[2]])
    with pytest.raises(natsjwt.JwtError, match="does not verify"):
        natsjwt.decode(forged)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 30_000, "...."])
def test_garbage_tokens_raise_jwt_error(garbage):
    with pytest.raises(natsjwt.JwtError):
        natsjwt.decode(garbage)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "must be a string"),
        (12, "must be a string"),
        ("", "56 characters"),
        ("x" * 30_000, "56 characters"),
        ("U" + "A" * 55, "bad encoding or checksum"),
    ],
)
def test_check_public_rejects(value, message):
    with pytest.raises(nkey.NkeyError, match=message):
        nkey.check_public(value, "user")


def test_check_public_rejects_seed_and_other_kinds():
    user = nkey.create("user")
    with pytest.raises(nkey.NkeyError, match="private seed"):
        nkey.check_public(user.seed.decode(), "user")
    with pytest.raises(nkey.NkeyError, match="got an account key"):
        nkey.check_public(nkey.create("account").public_key.decode(), "user")
    with pytest.raises(nkey.NkeyError, match="got an operator key"):
        nkey.check_public(nkey.create("operator").public_key.decode(), "user")
    assert nkey.check_public(user.public_key.decode(), "user") == user.public_key.decode()


def test_creds_roundtrip_is_private(tmp_path):
    path = tmp_path / "sub" / "x.creds"
    creds.write(path, "aaa.bbb.ccc", "SUAEXAMPLE")
    assert creds.read(path) == ("aaa.bbb.ccc", "SUAEXAMPLE")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("text", ["", "garbage", "-----BEGIN NATS USER JWT-----\nabc\n"])
def test_creds_parse_rejects_incomplete(text):
    with pytest.raises(creds.CredsError, match="USER JWT block"):
        creds.parse(text)
