"""Simulator configuration: the worker's own `OE_*` variables, the patch's new ones, and the
simulator's flags. Flags override variables (DESIGN.md).

Worker variables read (`core/src/config/config.rs@29cca4f9`): `OE_PUMPX_API_BASE_URL`,
`OE_PUMPX_WORKER_URL` (its port is the RPC port when ``--port`` is not given),
`OE_WILDMETA_API_URL`, `OE_WILDMETA_BACKEND_ECDSA_PUBKEY`, `OE_RPC_SERVER_MAX_CONNECTIONS`,
`OE_MAILER_TYPE_<CLIENT>`, `OE_MAILER_FROM_EMAIL_<CLIENT>`, `OE_MAILER_FROM_NAME_<CLIENT>`.
`OE_ENTRY_POINT_ADDRESS`, `OE_{GOOGLE,APPLE}_CLIENT_{ID,SECRET}_<CLIENT>` (`login_config`).
Patch variables: `OE_AGENTKEYS_API_BASE_URL`, `OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY`.
Simulator-only variables (no worker counterpart): `OE_MAILER_SMTP_URL_<CLIENT>` (for mailer type
``smtp``), `OE_SIM_PROFILE`, `OE_SIM_ERROR_ERA`, `OE_SIM_CALLBACK_TIMEOUT_SECONDS`, and the
OAuth2 endpoint and passkey overrides of `login_config` (`OE_SIM_GOOGLE_TOKEN_URL`, …).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from agentkeys_kit.omni_sim.login_config import (
    OAuth2ClientConfig,
    OAuth2Provider,
    OAuth2ProviderEndpoints,
    PasskeyConfig,
    oauth2_clients_from_env,
    passkey_overrides_from_env,
    provider_endpoints_from_env,
)
from agentkeys_kit.omni_sim.profiles import ProfileName
from agentkeys_kit.protocol.errors import ErrorEra
from agentkeys_kit.protocol.hexcodec import HexError, decode_hex
from agentkeys_kit.protocol.user_operation import DEFAULT_ENTRY_POINT_ADDRESS, AddressError, parse_evm_address

E = TypeVar("E", bound=StrEnum)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2100  # docker/dev convention (`ws://omni-executor:2100`)
DEFAULT_PUMPX_API_BASE_URL = "https://test-dex-api.heima.network"
DEFAULT_WILDMETA_API_URL = "https://test-dex-api.heima.network"
DEFAULT_AGENTKEYS_API_BASE_URL = "http://127.0.0.1:8091/"  # the broker's default port
DEFAULT_BACKEND_PUBKEY = "02" + "00" * 32
DEFAULT_MAX_REQUEST_BODY = 10 * 1024 * 1024  # jsonrpsee `max_request_body_size` default
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_CALLBACK_TIMEOUT = 30.0  # the worker's reqwest client has none; a test must not hang


class ConfigError(ValueError):
    """A configuration value the simulator refuses to start with."""


class MailerType(StrEnum):
    CONSOLE = "console"
    SMTP = "smtp"
    SENDGRID = "sendgrid"


@dataclass(frozen=True, slots=True)
class MailerConfig:
    client: str  # uppercase key, as in `OE_MAILER_TYPE_<CLIENT>`
    type: MailerType
    from_email: str = "noreply@heima.network"
    from_name: str = "Heima"
    smtp_url: str | None = None


@dataclass(frozen=True, slots=True)
class SimConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    profile: ProfileName = ProfileName.UPSTREAM
    error_era: ErrorEra = ErrorEra.CURRENT
    local_dir: Path = Path("local")
    pumpx_api_base_url: str = DEFAULT_PUMPX_API_BASE_URL
    wildmeta_api_url: str = DEFAULT_WILDMETA_API_URL
    agentkeys_api_base_url: str = DEFAULT_AGENTKEYS_API_BASE_URL
    wildmeta_backend_ecdsa_pubkey: bytes = bytes.fromhex(DEFAULT_BACKEND_PUBKEY)
    agentkeys_backend_ecdsa_pubkey: bytes = bytes.fromhex(DEFAULT_BACKEND_PUBKEY)
    mailers: Mapping[str, MailerConfig] = field(default_factory=dict)
    max_request_body_size: int = DEFAULT_MAX_REQUEST_BODY
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT
    # --- OAuth2, passkeys and user operations (see `login_config`) ---
    oauth2_clients: Mapping[str, Mapping[OAuth2Provider, OAuth2ClientConfig]] = field(default_factory=dict)
    oauth2_providers: Mapping[OAuth2Provider, OAuth2ProviderEndpoints] = field(
        default_factory=lambda: provider_endpoints_from_env({})
    )
    passkey_overrides: Mapping[str, PasskeyConfig] = field(default_factory=dict)
    entry_point_address: bytes = bytes.fromhex(DEFAULT_ENTRY_POINT_ADDRESS[2:])

    def mailer_for(self, client_id: str) -> MailerConfig | None:
        """`ConfigLoader::get_mailer_config`: per client, by its uppercased id."""
        return self.mailers.get(client_id.upper())


def _pubkey(name: str, value: str) -> bytes:
    try:
        raw = decode_hex(value)
    except HexError as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    if len(raw) != 33:
        raise ConfigError(f"{name} must be a 33-byte compressed secp256k1 key (66 hex chars)")
    return raw


def mailers_from_env(env: Mapping[str, str]) -> dict[str, MailerConfig]:
    """Per-client mailers; with no `OE_MAILER_TYPE_*` at all only a ``console`` client exists."""
    prefix = "OE_MAILER_TYPE_"
    mailers: dict[str, MailerConfig] = {}
    for key, value in env.items():
        if not key.startswith(prefix) or not key[len(prefix) :]:
            continue
        client = key[len(prefix) :]
        try:
            kind = MailerType(value.strip().lower())
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected console, smtp or sendgrid") from None
        if kind is MailerType.SENDGRID:
            raise ConfigError(f"{key}=sendgrid: the simulator cannot reach SendGrid; use console or smtp")
        smtp_url = env.get(f"OE_MAILER_SMTP_URL_{client}")
        if kind is MailerType.SMTP and not smtp_url:
            raise ConfigError(f"{key}=smtp needs OE_MAILER_SMTP_URL_{client}=smtp://host:port")
        mailers[client] = MailerConfig(
            client=client,
            type=kind,
            from_email=env.get(f"OE_MAILER_FROM_EMAIL_{client}", "noreply@heima.network"),
            from_name=env.get(f"OE_MAILER_FROM_NAME_{client}", "Heima"),
            smtp_url=smtp_url,
        )
    if not mailers:
        mailers["CONSOLE"] = MailerConfig(client="CONSOLE", type=MailerType.CONSOLE)
    return mailers


def config_from_env(env: Mapping[str, str] | None = None, **overrides: object) -> SimConfig:
    """Build a `SimConfig` from `env` (default `os.environ`); keyword overrides (flags) win."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    if "OE_PUMPX_WORKER_URL" in env:
        parsed = urlsplit(env["OE_PUMPX_WORKER_URL"])
        default_port = {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parsed.scheme)
        port = parsed.port or default_port
        if port is None:
            raise ConfigError("OE_PUMPX_WORKER_URL has no port and no known scheme")
        values["port"] = port
    simple = {
        "OE_PUMPX_API_BASE_URL": "pumpx_api_base_url",
        "OE_WILDMETA_API_URL": "wildmeta_api_url",
        "OE_AGENTKEYS_API_BASE_URL": "agentkeys_api_base_url",
    }
    for var, attr in simple.items():
        if var in env:
            values[attr] = env[var]
    for var, attr in (
        ("OE_WILDMETA_BACKEND_ECDSA_PUBKEY", "wildmeta_backend_ecdsa_pubkey"),
        ("OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY", "agentkeys_backend_ecdsa_pubkey"),
    ):
        if var in env:
            values[attr] = _pubkey(var, env[var])
    if "OE_RPC_SERVER_MAX_CONNECTIONS" in env:
        values["max_connections"] = _positive_int("OE_RPC_SERVER_MAX_CONNECTIONS", env["OE_RPC_SERVER_MAX_CONNECTIONS"])
    if "OE_SIM_PROFILE" in env:
        values["profile"] = _enum(ProfileName, "OE_SIM_PROFILE", env["OE_SIM_PROFILE"])
    if "OE_SIM_ERROR_ERA" in env:
        values["error_era"] = _enum(ErrorEra, "OE_SIM_ERROR_ERA", env["OE_SIM_ERROR_ERA"])
    if "OE_SIM_CALLBACK_TIMEOUT_SECONDS" in env:
        try:
            values["callback_timeout"] = float(env["OE_SIM_CALLBACK_TIMEOUT_SECONDS"])
        except ValueError:
            raise ConfigError("OE_SIM_CALLBACK_TIMEOUT_SECONDS must be a number") from None
    values["mailers"] = mailers_from_env(env)
    values["oauth2_clients"] = oauth2_clients_from_env(env)
    values["oauth2_providers"] = provider_endpoints_from_env(env)
    values["passkey_overrides"] = passkey_overrides_from_env(env)
    if "OE_ENTRY_POINT_ADDRESS" in env:
        try:
            values["entry_point_address"] = parse_evm_address(env["OE_ENTRY_POINT_ADDRESS"])
        except AddressError as exc:
            raise ConfigError(f"OE_ENTRY_POINT_ADDRESS: {exc.display}") from None
    values.update({key: value for key, value in overrides.items() if value is not None})
    if "profile" in values:
        values["profile"] = _enum(ProfileName, "--profile", str(values["profile"]))
    if "error_era" in values:
        values["error_era"] = _enum(ErrorEra, "--error-era", str(values["error_era"]))
    if "local_dir" in values:
        values["local_dir"] = Path(str(values["local_dir"]))
    return SimConfig(**values)  # type: ignore[arg-type]


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer") from None
    if number <= 0:
        raise ConfigError(f"{name} must be positive")
    return number


def _enum(enum: type[E], name: str, value: str) -> E:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ConfigError(f"{name}={value!r}: expected one of {allowed}") from None
