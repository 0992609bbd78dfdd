"""The OIDC issuer (`broker/oidc.py`) and `POST /v1/mint-oidc-jwt` (`broker/mint.py`): discovery
and JWKS read by PyJWT's standard client, every claim pinned, the key file's rules, rotation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from broker_client import account_of, assert_refused, login
from conftest import BrokerFactory
from cryptography.hazmat.primitives.asymmetric import rsa
from mint_support import ISSUER, OIDC, jwks_key, post

from agentkeys_kit.broker import oidc
from agentkeys_kit.broker.config import BrokerConfigError, config_from_env
from agentkeys_kit.protocol.identity import IdentityKind

WALLET = "0x" + "Ab" * 20
HOUR = 3600


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


async def test_discovery_and_jwks_are_exactly_the_spec_fields(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker(env={"BROKER_OIDC_ISSUER": ISSUER})
    async with http.get(broker.url + ".well-known/openid-configuration") as response:
        assert response.status == 200
        discovery = await response.json()
    assert discovery == {
        "issuer": ISSUER,
        "jwks_uri": ISSUER + "/.well-known/jwks.json",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid"],
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": list(oidc.CLAIMS_SUPPORTED),
    }
    async with http.get(broker.url + ".well-known/jwks.json") as response:
        keys = (await response.json())["keys"]
    [key] = keys
    assert set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    assert key["kid"] == broker.app[oidc.OIDC_KEYS].keys.kid
    assert key["kid"].startswith("v1-") and "=" not in key["x"] + key["y"]


async def test_a_minted_jwt_verifies_against_the_jwks_with_every_claim_pinned(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await make_broker(env={"BROKER_OIDC_ISSUER": ISSUER, "BROKER_OIDC_JWT_TTL_SECONDS": "900"}, clock=clock)
    _, token = await login(http, broker, tee_key, WALLET.lower())
    reply = await post(http, broker, OIDC, token)
    assert reply.status == 200, reply
    assert set(reply.body) == {"jwt", "wallet", "expiration"}
    wallet = WALLET.lower()
    omni = account_of(IdentityKind.EVM, wallet)
    now = int(clock.now)
    assert reply.body["wallet"] == wallet and reply.body["expiration"] == now + 900
    minted = reply.body["jwt"]
    header = jwt.get_unverified_header(minted)
    assert header == {"alg": "ES256", "kid": broker.app[oidc.OIDC_KEYS].keys.kid, "typ": "JWT"}
    key = await jwks_key(broker, minted)
    claims = jwt.decode(minted, key.key, algorithms=["ES256"], audience="sts.amazonaws.com", issuer=ISSUER)
    assert claims == {
        "iss": ISSUER,
        "sub": f"agentkeys:agent:{wallet}",
        "aud": "sts.amazonaws.com",
        "iat": now,
        "exp": now + 900,
        "agentkeys_user_wallet": wallet,
        "agentkeys_actor_omni": omni,
        "https://aws.amazon.com/tags": {
            "principal_tags": {"agentkeys_user_wallet": [wallet], "agentkeys_actor_omni": [omni]},
            "transitive_tag_keys": ["agentkeys_actor_omni", "agentkeys_user_wallet"],
        },
    }
    with pytest.raises(jwt.InvalidSignatureError):  # the ES256 signature is checked, not just parsed
        tampered = minted[:-4] + ("AAAA" if not minted.endswith("AAAA") else "BBBB")
        jwt.decode(tampered, key.key, algorithms=["ES256"], audience="sts.amazonaws.com", issuer=ISSUER)


async def test_the_issuer_is_used_byte_for_byte(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    issuer = "https://Oidc.Example.test:8443/tenant/A"  # case and path kept as configured
    broker = await make_broker(env={"BROKER_OIDC_ISSUER": issuer})
    _, token = await login(http, broker, tee_key, WALLET.lower())
    reply = await post(http, broker, OIDC, token)
    assert jwt.decode(reply.body["jwt"], options={"verify_signature": False})["iss"] == issuer


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BROKER_OIDC_JWT_TTL_SECONDS", "59"),
        ("BROKER_OIDC_JWT_TTL_SECONDS", "3601"),
        ("BROKER_OIDC_JWT_TTL_SECONDS", "5m"),
        ("BROKER_OIDC_ISSUER", "https://oidc.example.test/"),
        ("BROKER_OIDC_ISSUER", "http://oidc.example.test"),
        ("BROKER_OIDC_ISSUER", " https://oidc.example.test"),
        ("BROKER_SESSION_DURATION_SECONDS", "899"),
        ("BROKER_SESSION_DURATION_SECONDS", "43201"),
        ("BROKER_DATA_ROLE_ARN", "arn:aws:iam::12:role/x"),
    ],
)
def test_configuration_out_of_range_is_refused(variable: str, value: str, tmp_path: Path) -> None:
    env = {"BROKER_TEE_JWT_PUBLIC_KEY": str(tmp_path / "k.pem"), variable: value}
    with pytest.raises(BrokerConfigError, match=variable):
        config_from_env(env)


def test_configuration_edges_are_accepted(tmp_path: Path) -> None:
    env = {
        "BROKER_TEE_JWT_PUBLIC_KEY": str(tmp_path / "k.pem"),
        "BROKER_OIDC_JWT_TTL_SECONDS": "60",
        "BROKER_SESSION_DURATION_SECONDS": "43200",
        "BROKER_AGENT_ROLE_ARN": "arn:aws:iam::123456789012:role/legacy-name",
    }
    config = config_from_env(env)
    assert (config.oidc_jwt_ttl, config.session_duration) == (60, 43200)
    assert config.data_role_arn == "arn:aws:iam::123456789012:role/legacy-name"
    assert config_from_env({**env, "BROKER_OIDC_JWT_TTL_SECONDS": "3600"}).oidc_jwt_ttl == 3600
    assert config.oidc_jwt_ttl != config_from_env({"BROKER_TEE_JWT_PUBLIC_KEY": "k"}).oidc_jwt_ttl == 300


# --------------------------------------------------------------------------- the key file


def test_the_key_file_is_created_0600_and_read_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "oidc-keypair.json"
    keys, created = oidc.load_or_create(path, 1_700_000_000)
    assert created and keys.kid == "v1-1700000000"
    assert (path.stat().st_mode & 0o777) == 0o600
    document = json.loads(path.read_text())
    assert document["purpose"] == "oidc" and document["kid"] == keys.kid
    assert document["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    again, created_again = oidc.load_or_create(path, 1_800_000_000)
    assert not created_again and again.kid == keys.kid and again.public_jwk() == keys.public_jwk()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "oidc-keypair.json"
    oidc.load_or_create(path, 1_700_000_000)
    os.chmod(path, mode)
    with pytest.raises(oidc.OidcKeyError, match="chmod 600"):
        oidc.read_key_file(path)


@pytest.mark.parametrize("purpose", ["session", None, "OIDC", ""])
def test_a_key_file_of_another_purpose_is_refused(tmp_path: Path, purpose: str | None) -> None:
    path = tmp_path / "oidc-keypair.json"
    oidc.load_or_create(path, 1_700_000_000)
    document = json.loads(path.read_text())
    if purpose is None:
        del document["purpose"]
    else:
        document["purpose"] = purpose
    path.write_text(json.dumps(document))
    with pytest.raises(oidc.OidcKeyError, match="not an OIDC signing key"):
        oidc.read_key_file(path)


def test_a_key_file_holding_another_kind_of_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "oidc-keypair.json"
    oidc.load_or_create(path, 1_700_000_000)
    document = json.loads(path.read_text())
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    document["private_key_pem"] = other.decode()
    path.write_text(json.dumps(document))
    with pytest.raises(oidc.OidcKeyError, match="P-256"):
        oidc.read_key_file(path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(oidc.OidcKeyError, match="not a regular file"):
        oidc.read_key_file(path)


async def test_a_broker_refuses_to_start_on_a_readable_key_file(make_broker: BrokerFactory, tmp_path: Path) -> None:
    path = tmp_path / "shared-oidc.json"
    oidc.load_or_create(path, 1_700_000_000)
    os.chmod(path, 0o644)
    with pytest.raises(oidc.OidcKeyError, match="mode 0644"):
        await make_broker(env={"BROKER_OIDC_KEYPAIR_PATH": str(path)})


# --------------------------------------------------------------------------- rotation


async def test_rotation_publishes_both_keys_until_the_old_tokens_expired_then_only_the_new(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await make_broker(env={"BROKER_OIDC_ISSUER": ISSUER}, clock=clock)
    keys = broker.app[oidc.OIDC_KEYS]
    _, token = await login(http, broker, tee_key, WALLET.lower())
    old_jwt = (await post(http, broker, OIDC, token)).body["jwt"]
    old_kid = keys.keys.kid

    clock.now += 5  # a kid is v1-<seconds>: the new one differs
    _, retired = oidc.rotate(keys.path, int(clock.now))
    assert (keys.path.stat().st_mode & 0o777) == 0o600
    keys.reload_if_changed()  # what the watcher does within RELOAD_SECONDS (it may have done it already)
    new_kid = keys.keys.kid
    assert new_kid != old_kid and retired.kid == old_kid
    assert "private_key_pem" not in json.dumps(json.loads(keys.path.read_text())["retired"])

    new_jwt = (await post(http, broker, OIDC, token)).body["jwt"]
    assert jwt.get_unverified_header(new_jwt)["kid"] == new_kid
    async with http.get(broker.url + ".well-known/jwks.json") as response:
        assert [key["kid"] for key in (await response.json())["keys"]] == [new_kid, old_kid]
    for minted in (old_jwt, new_jwt):  # both verify while the old key is published
        key = await jwks_key(broker, minted)
        jwt.decode(minted, key.key, algorithms=["ES256"], audience="sts.amazonaws.com", issuer=ISSUER, leeway=10**6)

    clock.now = retired.publish_until  # the old key's last token has expired
    async with http.get(broker.url + ".well-known/jwks.json") as response:
        assert [key["kid"] for key in (await response.json())["keys"]] == [new_kid]
    with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
        await jwks_key(broker, old_jwt)
    assert retired.publish_until >= retired.retired_at + oidc.MAX_JWT_TTL


async def test_a_rotated_file_that_fails_a_check_is_not_used(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    keys = broker.app[oidc.OIDC_KEYS]
    before = keys.keys.kid
    document = json.loads(keys.path.read_text())
    document["purpose"] = "session"
    keys.path.write_text(json.dumps(document))
    assert not keys.reload_if_changed()
    assert keys.keys.kid == before
    _, token = await login(http, broker, tee_key, WALLET.lower())
    assert (await post(http, broker, OIDC, token)).status == 200


async def test_minting_needs_a_proven_bearer_and_a_wallet(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    assert_refused(await post(http, broker, OIDC, None), 401, "missing_bearer")
    assert_refused(await post(http, broker, OIDC, "not-a-token"), 401, "invalid_token")
    _, email_token = await login(http, broker, tee_key, "someone@example.com", IdentityKind.EMAIL)
    assert_refused(await post(http, broker, OIDC, email_token), 403, "no_wallet")
    _, token = await login(http, broker, tee_key, WALLET.lower())
    reply = await post(http, broker, OIDC, token, {"wallet": "0x" + "99" * 20})  # a caller cannot name a wallet
    assert_refused(reply, 400, "malformed_body")


async def test_the_operator_rotates_the_key_and_a_running_broker_picks_it_up(
    make_broker: BrokerFactory, tmp_path: Path
) -> None:
    from test_broker_operator import broker_cli

    path = tmp_path / "oidc-keypair.json"
    oidc.load_or_create(path, 1_700_000_000)  # a key of another second than the rotation's
    broker = await make_broker(env={"BROKER_OIDC_KEYPAIR_PATH": str(path)})
    keys = broker.app[oidc.OIDC_KEYS]
    before = keys.keys.kid
    proc = await broker_cli("oidc", "rotate", env={"BROKER_OIDC_KEYPAIR_PATH": str(path)})
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["retired_kid"] == before and answer["kid"] != before
    assert answer["retired_published_until"] - int(time.time()) > oidc.MAX_JWT_TTL
    assert "PRIVATE" not in proc.stdout
    keys.reload_if_changed()  # what the watcher does within RELOAD_SECONDS (it may have done it already)
    assert keys.keys.kid == answer["kid"]
    missing = await broker_cli("oidc", "rotate", env={"BROKER_OIDC_KEYPAIR_PATH": str(tmp_path / "none.json")})
    assert missing.returncode == 1 and "start the broker once" in missing.stderr
