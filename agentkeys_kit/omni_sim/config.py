"""Simulator configuration: the worker's own `OE_*` variables, the patch's new ones, and the
simulator's flags. Flags override variables (DESIGN.md).

Worker variables read (`core/src/config/config.rs@29cca4f9`): `OE_PUMPX_API_BASE_URL`,
`OE_PUMPX_WORKER_URL` (its port is the RPC port when ``--port`` is not given),
`OE_WILDMETA_API_URL`, `OE_WILDMETA_BACKEND_ECDSA_PUBKEY`, `OE_RPC_SERVER_MAX_CONNECTIONS`, and per
mail client `OE_MAILER_TYPE_<CLIENT>`, `OE_MAILER_API_HOST_<CLIENT>`, `OE_MAILER_API_KEY_<CLIENT>`,
`OE_MAILER_FROM_EMAIL_<CLIENT>`, `OE_MAILER_FROM_NAME_<CLIENT>` (`load_mailer_configs`);
`OE_ENTRY_POINT_ADDRESS`, `OE_{GOOGLE,APPLE}_CLIENT_{ID,SECRET}_<CLIENT>` (`login_config`).
Patch variables: `OE_AGENTKEYS_API_BASE_URL`, `OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY`.
Simulator-only variables (no worker counterpart): `OE_MAILER_SMTP_URL_<CLIENT>` (for the
simulator-only mailer type ``smtp``), `OE_SIM_PROFILE`, `OE_SIM_ERROR_ERA`,
`OE_SIM_CALLBACK_TIMEOUT_SECONDS`, and the OAuth2 endpoint and passkey overrides of
`login_config` (`OE_SIM_GOOGLE_TOKEN_URL`, …).

Simulator-only default: the RPC port is 2100 when neither ``--port`` nor `OE_PUMPX_WORKER_URL` is
given. The worker has no such default of its own: it listens on the port of `OE_PUMPX_WORKER_URL`,
whose default ``wss://dev-dex-worker.heima.network`` gives 443 (`DEFAULT_PUMPX_WORKER_URL`,
`bin/src/main.rs@17b8c4dc` `port_or_known_default`), a privileged port a simulator should not take.
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
DEFAULT_PORT = 2100  # simulator only (docker/dev convention `ws://omni-executor:2100`); the worker's is 443
WORKER_DEFAULT_PORT = 443  # the port of the worker's DEFAULT_PUMPX_WORKER_URL (wss://dev-dex-worker.heima.network)
DEFAULT_PUMPX_API_BASE_URL = "https://test-dex-api.heima.network"
DEFAULT_WILDMETA_API_URL = "https://test-dex-api.heima.network"
DEFAULT_AGENTKEYS_API_BASE_URL = "http://127.0.0.1:8091/"  # the broker's default port
DEFAULT_BACKEND_PUBKEY = "02" + "00" * 32
DEFAULT_MAX_REQUEST_BODY = 10 * 1024 * 1024  # jsonrpsee `max_request_body_size` default
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_CALLBACK_TIMEOUT = 30.0  # the worker's reqwest client has none; a test must not hang


class ConfigError(ValueError):
    """A configuration value the simulator refuses to start with."""


# `core/src/config/config.rs@29cca4f9`: `DEFAULT_MAILER_*` and the console fallback of
# `load_mailer_configs` (used when no `OE_MAILER_TYPE_*` variable is set at all).
DEFAULT_MAILER_FROM_EMAIL = "no-reply@example.com"
DEFAULT_MAILER_FROM_NAME = "Heima Verify"
CONSOLE_FALLBACK_CLIENT = "console"
CONSOLE_FALLBACK_FROM_EMAIL = "test@example.com"
CONSOLE_FALLBACK_FROM_NAME = "Default Console Mailer"
#: where the SendGrid mailer posts without `OE_MAILER_API_HOST_<CLIENT>` (sendgrid 0.24 `V3_API_URL`)
SENDGRID_API_URL = "https://api.sendgrid.com/v3/mail/send"


class MailerType(StrEnum):
    CONSOLE = "console"
    SENDGRID = "sendgrid"
    SMTP = "smtp"  # simulator only: the worker has no SMTP mailer (it would read "smtp" as unknown)


#: the mailer types the worker knows (`MailerType::from_str`); any other value is unknown to it
WORKER_MAILER_TYPES = (MailerType.CONSOLE, MailerType.SENDGRID)


@dataclass(frozen=True, slots=True)
class MailerConfig:
    client: str  # lowercase, as the worker keys `mailer_configs` (`client.to_lowercase()`)
    type: MailerType
    from_email: str = DEFAULT_MAILER_FROM_EMAIL
    from_name: str = DEFAULT_MAILER_FROM_NAME
    #: `OE_MAILER_API_HOST_<CLIENT>`: the full URL the SendGrid mailer posts to (`Sender::set_host`)
    api_host: str | None = None
    #: `OE_MAILER_API_KEY_<CLIENT>`: sent as ``Authorization: Bearer``; a secret, never shown
    api_key: str = field(default="", repr=False)
    smtp_url: str | None = None  # simulator only, for type smtp
    #: an `OE_MAILER_TYPE_<CLIENT>` value the worker does not know, which made it SendGrid
    unknown_type: str | None = None

    @property
    def sendgrid_url(self) -> str:
        return self.api_host or SENDGRID_API_URL

    def describe(self) -> str:
        """One line for the start banner (no secret)."""
        where = {
            MailerType.SENDGRID: f" → POST {self.sendgrid_url}",
            MailerType.SMTP: f" → {self.smtp_url} (simulator only)",
            MailerType.CONSOLE: " → /_sim/outbox",
        }[self.type]
        fallback = (
            f" (unknown type {self.unknown_type!r} falls back to sendgrid, as in the worker)"
            if self.unknown_type is not None
            else ""
        )
        return f"{self.client}: {self.type.value}{where}{fallback}"


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
        """`ConfigLoader::get_mailer_config`: per client, by its lowercased id."""
        return self.mailers.get(client_id.lower())


def _pubkey(name: str, value: str) -> bytes:
    try:
        raw = decode_hex(value)
    except HexError as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    if len(raw) != 33:
        raise ConfigError(f"{name} must be a 33-byte compressed secp256k1 key (66 hex chars)")
    return raw


def mailers_from_env(env: Mapping[str, str]) -> dict[str, MailerConfig]:
    """`ConfigLoader::load_mailer_configs` (`core/src/config/config.rs@29cca4f9`).

    Every `OE_MAILER_TYPE_<suffix>` names a client (the suffix lowercased); its settings are then
    read from the variables with the *uppercased* name, so ``OE_MAILER_TYPE_wildmeta=console``
    yields a client ``wildmeta`` whose type, read from ``OE_MAILER_TYPE_WILDMETA``, is the default,
    sendgrid, exactly as in the worker. An unknown type falls back to sendgrid (the worker's
    `unwrap_or(config.mailer_type)`); the simulator also knows ``smtp`` (simulator only). With no
    `OE_MAILER_TYPE_*` at all, only a ``console`` client exists.
    """
    prefix = "OE_MAILER_TYPE_"
    clients = sorted({key[len(prefix) :].lower() for key in env if key.startswith(prefix)})
    if not clients:
        fallback = MailerConfig(
            CONSOLE_FALLBACK_CLIENT,
            MailerType.CONSOLE,
            from_email=CONSOLE_FALLBACK_FROM_EMAIL,
            from_name=CONSOLE_FALLBACK_FROM_NAME,
        )
        return {CONSOLE_FALLBACK_CLIENT: fallback}
    return {client: _mailer_for_client(env, client) for client in clients}


def _mailer_for_client(env: Mapping[str, str], client: str) -> MailerConfig:
    upper = client.upper()
    kind, unknown = MailerType.SENDGRID, None
    raw_type = env.get(f"OE_MAILER_TYPE_{upper}")
    if raw_type is not None:
        try:
            kind = MailerType(raw_type.lower())  # `MailerType::from_str` lowercases, never trims
        except ValueError:
            unknown = raw_type
    api_host = env.get(f"OE_MAILER_API_HOST_{upper}") or None  # an empty value means none
    if api_host is not None and urlsplit(api_host).scheme not in ("http", "https"):
        # Stricter than the worker, which starts and fails at the first mail: say it at start.
        raise ConfigError(f"OE_MAILER_API_HOST_{upper}={api_host!r}: expected the full http(s) URL to post mail to")
    smtp_url = env.get(f"OE_MAILER_SMTP_URL_{upper}")
    if kind is MailerType.SMTP and not smtp_url:
        raise ConfigError(
            f"OE_MAILER_TYPE_{upper}=smtp (simulator only) needs OE_MAILER_SMTP_URL_{upper}=smtp://host:port"
        )
    return MailerConfig(
        client=client,
        type=kind,
        from_email=env.get(f"OE_MAILER_FROM_EMAIL_{upper}", DEFAULT_MAILER_FROM_EMAIL),
        from_name=env.get(f"OE_MAILER_FROM_NAME_{upper}", DEFAULT_MAILER_FROM_NAME),
        api_host=api_host,
        api_key=env.get(f"OE_MAILER_API_KEY_{upper}", ""),
        smtp_url=smtp_url,
        unknown_type=unknown,
    )


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
