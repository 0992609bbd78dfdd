"""Configuration of the OAuth2 and passkey login paths, read as the worker reads it, plus the
simulator-only knobs that point the provider endpoints at a test double.

Worker variables (`core/src/config/config.rs@29cca4f9` `load_oauth2_configs`):
``OE_GOOGLE_CLIENT_ID_<CLIENT>``, ``OE_GOOGLE_CLIENT_SECRET_<CLIENT>`` and the ``APPLE`` pair. A
client is found by the ``OE_<PROVIDER>_CLIENT_ID_`` prefix, keyed lowercase, and skipped unless
both values are non-empty.

Simulator-only variables (the worker compiles these endpoints in, so a real worker always talks to
Google and Apple): ``OE_SIM_GOOGLE_AUTHORIZE_URL``, ``OE_SIM_GOOGLE_TOKEN_URL``,
``OE_SIM_APPLE_AUTHORIZE_URL``, ``OE_SIM_APPLE_TOKEN_URL``.

Passkeys: the newest login path reads ``config_loader.get_passkey_config(client_id)`` →
``{allowed_origins, rp_id}`` (`verify_auth.rs@c7751f89`), but the environment variables behind it
are not in the source index. The simulator starts from era B's compiled-in map
(`get_rp_id_for_client` / `get_origin_for_client`, `methods/omni/mod.rs@29cca4f9`: ``wildmeta`` →
``app.wildmeta.ai`` / ``https://app.wildmeta.ai``, any other client → ``localhost`` /
``http://localhost:3000``) and lets the simulator-only ``OE_SIM_PASSKEY_RP_ID_<CLIENT>`` and
``OE_SIM_PASSKEY_ORIGINS_<CLIENT>`` (comma-separated) override it for the login check.
`omni_attachPasskey` keeps using `get_origin_for_client`, as `attach_passkey.rs@60635e7f` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

GOOGLE_AUTHORIZE_URL = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
APPLE_AUTHORIZE_URL = "https://appleid.apple.com/auth/authorize"
APPLE_TOKEN_URL = "https://appleid.apple.com/auth/token"


class OAuth2Provider(StrEnum):
    """`OAuth2Provider`; the value is the lowercase name the config and the URLs use."""

    GOOGLE = "google"
    APPLE = "apple"

    @property
    def wire_name(self) -> str:
        """The serde variant name in `OAuth2Data` (``Google`` / ``Apple``)."""
        return self.value.capitalize()


@dataclass(frozen=True, slots=True)
class OAuth2ClientConfig:
    client_id: str
    client_secret: str


@dataclass(frozen=True, slots=True)
class OAuth2ProviderEndpoints:
    """`OAuth2ProviderConfig` (`oauth2_common.rs@29cca4f9`) and the provider's token endpoint."""

    authorize_url: str
    token_url: str
    scopes: str
    use_response_mode: bool  # Apple: ``response_mode=form_post``


@dataclass(frozen=True, slots=True)
class PasskeyConfig:
    rp_id: str
    allowed_origins: tuple[str, ...]


def oauth2_clients_from_env(env: Mapping[str, str]) -> dict[str, dict[OAuth2Provider, OAuth2ClientConfig]]:
    """`load_oauth2_configs`: client (lowercase) → provider → ``{client_id, client_secret}``."""
    configs: dict[str, dict[OAuth2Provider, OAuth2ClientConfig]] = {}
    for provider in OAuth2Provider:
        prefix = f"OE_{provider.value.upper()}_CLIENT_ID_"
        clients = {key[len(prefix) :].lower() for key in env if key.startswith(prefix)}
        for client in clients:
            upper = client.upper()
            client_id = env.get(f"OE_{provider.value.upper()}_CLIENT_ID_{upper}", "")
            secret = env.get(f"OE_{provider.value.upper()}_CLIENT_SECRET_{upper}", "")
            if client_id and secret:
                configs.setdefault(client, {})[provider] = OAuth2ClientConfig(client_id, secret)
    return configs


def provider_endpoints_from_env(env: Mapping[str, str]) -> dict[OAuth2Provider, OAuth2ProviderEndpoints]:
    return {
        OAuth2Provider.GOOGLE: OAuth2ProviderEndpoints(
            env.get("OE_SIM_GOOGLE_AUTHORIZE_URL", GOOGLE_AUTHORIZE_URL),
            env.get("OE_SIM_GOOGLE_TOKEN_URL", GOOGLE_TOKEN_URL),
            "openid email",
            False,
        ),
        OAuth2Provider.APPLE: OAuth2ProviderEndpoints(
            env.get("OE_SIM_APPLE_AUTHORIZE_URL", APPLE_AUTHORIZE_URL),
            env.get("OE_SIM_APPLE_TOKEN_URL", APPLE_TOKEN_URL),
            "email",
            True,
        ),
    }


def passkey_overrides_from_env(env: Mapping[str, str]) -> dict[str, PasskeyConfig]:
    """Simulator-only overrides of the login-time passkey config, per client (lowercase)."""
    overrides: dict[str, PasskeyConfig] = {}
    clients = {
        key[len(prefix) :]
        for prefix in ("OE_SIM_PASSKEY_RP_ID_", "OE_SIM_PASSKEY_ORIGINS_")
        for key in env
        if key.startswith(prefix)
    }
    for upper in clients:
        default = compiled_passkey_config(upper.lower())
        origins = env.get(f"OE_SIM_PASSKEY_ORIGINS_{upper}")
        overrides[upper.lower()] = PasskeyConfig(
            env.get(f"OE_SIM_PASSKEY_RP_ID_{upper}", default.rp_id),
            tuple(o.strip() for o in origins.split(",") if o.strip())
            if origins is not None
            else default.allowed_origins,
        )
    return overrides


def rp_id_for_client(client_id: str) -> str:
    """`get_rp_id_for_client` (`methods/omni/mod.rs@29cca4f9`)."""
    return "app.wildmeta.ai" if client_id == "wildmeta" else "localhost"


def origin_for_client(client_id: str) -> str:
    """`get_origin_for_client` (`methods/omni/mod.rs@29cca4f9`)."""
    return "https://app.wildmeta.ai" if client_id == "wildmeta" else "http://localhost:3000"


def compiled_passkey_config(client_id: str) -> PasskeyConfig:
    return PasskeyConfig(rp_id_for_client(client_id), (origin_for_client(client_id),))
