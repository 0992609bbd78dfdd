"""Configuration of the OAuth2, passkey and user-operation paths (`omni_sim/login_config.py`)."""

from __future__ import annotations

import json

import aiohttp
import pytest
from conftest import SimFactory

from agentkeys_kit.omni_sim.cli import login_summary
from agentkeys_kit.omni_sim.config import DEFAULT_ENTRY_POINT_ADDRESS, ConfigError, config_from_env
from agentkeys_kit.omni_sim.login_config import (
    APPLE_TOKEN_URL,
    GOOGLE_AUTHORIZE_URL,
    GOOGLE_TOKEN_URL,
    OAuth2ClientConfig,
    OAuth2Provider,
    PasskeyConfig,
    compiled_passkey_config,
    oauth2_clients_from_env,
    passkey_overrides_from_env,
    provider_endpoints_from_env,
)


def test_oauth2_clients_are_read_as_load_oauth2_configs_reads_them() -> None:
    """`load_oauth2_configs` (`core/src/config/config.rs@29cca4f9`): clients found by the
    ``OE_<PROVIDER>_CLIENT_ID_`` prefix, keyed lowercase, kept only with both values non-empty."""
    env = {
        "OE_GOOGLE_CLIENT_ID_WILDMETA": "g-id",
        "OE_GOOGLE_CLIENT_SECRET_WILDMETA": "g-secret",
        "OE_APPLE_CLIENT_ID_WILDMETA": "a-id",
        "OE_APPLE_CLIENT_SECRET_WILDMETA": "",  # empty secret: skipped
        "OE_GOOGLE_CLIENT_ID_AGENTKEYS": "k-id",  # no secret: skipped
        "OE_GOOGLE_CLIENT_SECRET_ORPHAN": "s",  # no id: never found
        "OE_APPLE_CLIENT_ID_AgentKeys": "mixed",  # found as "agentkeys", then read in upper case
        "OE_APPLE_CLIENT_ID_AGENTKEYS": "ak",
        "OE_APPLE_CLIENT_SECRET_AGENTKEYS": "as",
        "OE_APPLE_CLIENT_ID_Other": "o",  # found as "other"; OE_APPLE_CLIENT_ID_OTHER unset: skipped
        "OE_APPLE_CLIENT_SECRET_OTHER": "s",
    }
    assert oauth2_clients_from_env(env) == {
        "wildmeta": {OAuth2Provider.GOOGLE: OAuth2ClientConfig("g-id", "g-secret")},
        "agentkeys": {OAuth2Provider.APPLE: OAuth2ClientConfig("ak", "as")},
    }


def test_provider_endpoints_default_to_the_real_providers_and_are_overridable() -> None:
    real = provider_endpoints_from_env({})
    assert real[OAuth2Provider.GOOGLE].authorize_url == GOOGLE_AUTHORIZE_URL
    assert real[OAuth2Provider.GOOGLE].token_url == GOOGLE_TOKEN_URL
    assert real[OAuth2Provider.APPLE].token_url == APPLE_TOKEN_URL
    assert real[OAuth2Provider.APPLE].use_response_mode and not real[OAuth2Provider.GOOGLE].use_response_mode
    sim = provider_endpoints_from_env({"OE_SIM_GOOGLE_TOKEN_URL": "http://127.0.0.1:1/token"})
    assert sim[OAuth2Provider.GOOGLE].token_url == "http://127.0.0.1:1/token"


def test_passkey_config_starts_from_the_compiled_map() -> None:
    """`get_rp_id_for_client` / `get_origin_for_client` (`methods/omni/mod.rs@29cca4f9`)."""
    assert compiled_passkey_config("wildmeta") == PasskeyConfig("app.wildmeta.ai", ("https://app.wildmeta.ai",))
    assert compiled_passkey_config("agentkeys") == PasskeyConfig("localhost", ("http://localhost:3000",))
    overrides = passkey_overrides_from_env(
        {
            "OE_SIM_PASSKEY_RP_ID_AGENTKEYS": "agentkeys.example",
            "OE_SIM_PASSKEY_ORIGINS_AGENTKEYS": "https://agentkeys.example, https://b.example,",
            "OE_SIM_PASSKEY_ORIGINS_WILDMETA": "https://x.example",
        }
    )
    assert overrides == {
        "agentkeys": PasskeyConfig("agentkeys.example", ("https://agentkeys.example", "https://b.example")),
        "wildmeta": PasskeyConfig("app.wildmeta.ai", ("https://x.example",)),
    }


def test_entry_point_address() -> None:
    assert config_from_env({}).entry_point_address.hex() == DEFAULT_ENTRY_POINT_ADDRESS[2:].lower()
    other = "0x" + "ab" * 20
    assert config_from_env({"OE_ENTRY_POINT_ADDRESS": other}).entry_point_address == bytes.fromhex("ab" * 20)


@pytest.mark.parametrize("value", ["0x1234", "not an address", "0x" + "zz" * 20])
def test_bad_entry_point_address_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="OE_ENTRY_POINT_ADDRESS"):
        config_from_env({"OE_ENTRY_POINT_ADDRESS": value})


@pytest.mark.parametrize("var", ["OE_WILDMETA_BACKEND_ECDSA_PUBKEY", "OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY"])
def test_bad_backend_pubkey_is_a_config_error(var: str) -> None:
    with pytest.raises(ConfigError, match=var):
        config_from_env({var: "0x1234"})


def test_start_banner_and_info_show_the_login_configuration_without_secrets() -> None:
    env = {
        "OE_GOOGLE_CLIENT_ID_WILDMETA": "g-id",
        "OE_GOOGLE_CLIENT_SECRET_WILDMETA": "very-secret",
        "OE_SIM_GOOGLE_TOKEN_URL": "http://127.0.0.1:1/token",
        "OE_SIM_PASSKEY_RP_ID_AGENTKEYS": "agentkeys.example",
    }
    summary = login_summary(config_from_env(env))
    assert "wildmeta:google" in summary and "google=http://127.0.0.1:1/token" in summary
    assert "agentkeys: rp_id=agentkeys.example origins=http://localhost:3000" in summary
    assert "EntryPoint=0x5ff137d4b0fdcd49dca30c7cf57e578a026d2789" in summary
    assert "very-secret" not in summary and "g-id" not in summary


async def test_sim_info_lists_the_login_configuration(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(
        env={
            "OE_GOOGLE_CLIENT_ID_WILDMETA": "g",
            "OE_GOOGLE_CLIENT_SECRET_WILDMETA": "s",
            "OE_SIM_PASSKEY_RP_ID_X": "x",
        }
    )
    async with http.get(sim.url + "_sim/info") as response:
        info = await response.json()
    assert info["oauth2_clients"] == {"wildmeta": ["google"]}
    assert info["passkey_overrides"] == {"x": {"rp_id": "x", "allowed_origins": ["http://localhost:3000"]}}
    assert info["entry_point"] == "0x5ff137d4b0fdcd49dca30c7cf57e578a026d2789"
    assert "s" not in json.dumps(info["oauth2_clients"])
