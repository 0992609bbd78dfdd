"""Broker configuration from `BROKER_*` variables; `agentkeys-broker run` flags override them.

| variable | meaning | default |
|---|---|---|
| `BROKER_HOST`, `BROKER_PORT` | listen address | `127.0.0.1`, `8091` |
| `BROKER_DB_URL` | `sqlite:///PATH` or `postgresql://…` | `sqlite:///~/.agentkeys/broker/broker.sqlite3`|
| `BROKER_DB_SCHEMA` | PostgreSQL schema for the tables (isolates deployments or test runs) | `public` |
| `BROKER_DB_POOL_SIZE` | PostgreSQL connections per broker (replicas × this ≤ the server's max_connections) | `8` |
| `BROKER_SQLITE_SYNCHRONOUS` | `full`: a reply means the write is on disk; `normal`: may lose the last | `full` |
| `BROKER_TEE_JWT_PUBLIC_KEY` | pinned TEE JWT public key, PEM or DER (no private key) | required unless `local` |
| `BROKER_TEE_JWT_PUBLIC_KEY_URL` | development only: fetch the key once at start (`/_sim/jwt-public-key`) | — |
| `BROKER_ACCEPTED_CLIENT_IDS` | comma list of `aud` values accepted; the first is the broker's own | `agentkeys` |
| `BROKER_CALLBACK_ALLOW_CIDRS` | networks allowed to call the credential-less callbacks | `127.0.0.0/8,::1/128` |
| `BROKER_TRUSTED_PROXY_CIDRS` | proxies whose `X-Forwarded-For` names the client (rate limits, audit, log) | none |
| `BROKER_CALLBACK_BASE_PATH` | extra prefix the callbacks are also served under | `/agentkeys` |
| `BROKER_MAX_CONNECTIONS` | open connections at most (lowered to fit the open-file limit) | `1000` |
| `BROKER_HEADER_TIMEOUT_SECONDS` | a request's line and headers must arrive within this | `10` |
| `BROKER_BODY_TIMEOUT_SECONDS` | a request's body must arrive within this once it is read | `10` |
| `BROKER_KEEPALIVE_TIMEOUT_SECONDS` | an idle keep-alive connection is closed after this | `75` |
| `BROKER_LOG_LEVEL` | `DEBUG`, `INFO` (one access-log line per request), `WARNING`, `ERROR` | `INFO` |
| `BROKER_LOG_FORMAT` | `json` (one JSON object per line) or `text` | `json` |
| `BROKER_METRICS_ALLOW_CIDRS` | networks allowed to read `GET /metrics` | `127.0.0.0/8,::1/128` |
| `BROKER_OIDC_ISSUER` | OIDC issuer, byte-exact as at AWS (https; http on loopback) | `https://oidc.agentkeys.dev` |
| `BROKER_OIDC_KEYPAIR_PATH` | ES256 OIDC key, made 0600 | beside the SQLite file, else in `~/.agentkeys/broker` |
| `BROKER_OIDC_JWT_TTL_SECONDS` | lifetime of a minted OIDC JWT, 60 to 3600 | `300` |
| `BROKER_DATA_ROLE_ARN` | role `mint-aws-creds` assumes (legacy `BROKER_AGENT_ROLE_ARN`); unset: none | — |
| `BROKER_SESSION_DURATION_SECONDS` | lifetime of minted AWS credentials, 900 to 43200 | `3600` |
| `BROKER_STS_ENDPOINT_URL` | the STS endpoint (moto's server in tests) | AWS's regional endpoint |
| `BROKER_AWS_REGION` | the STS region | `us-east-1` |
| `BROKER_SKIP_STARTUP_CHECK` | `1`: no `sts:GetCallerIdentity` at start (as `run --skip-startup-check`) | off |
| `BROKER_MINT_MAX_SKEW_SECONDS` | agent's signed `issued_at` vs the broker's clock, 5 to 600 | `120` |
| `BROKER_LOGIN_BACKEND` | `heima` (the worker authenticates) or `local` (the broker does) | `heima` |
| `BROKER_HEIMA_WORKER_URL` | the worker's JSON-RPC URL the CLI logs in at (`heima`), in `/v1/auth/config` | — |
| `BROKER_PUBLIC_URL` | the broker's URL as users reach it: SIWE domain/URI, session `iss` | from the request |
| `BROKER_SESSION_KEYPAIR_PATH` | the ES256 session key (created 0600 on first start) | see `session_key_default` |
| `BROKER_SESSION_JWT_TTL_SECONDS` | session lifetime, 60 to 86400 | `18000` (5 h) |
| `BROKER_WALLET_START_RATE_LIMIT_PER_IP_MINUTELY` | wallet login starts per client address a minute | `120` |
| `BROKER_LOGIN_CLOCK_SKEW_SECONDS` | clock difference tolerated between replicas for a login message, 0 to 300 | `60` |

E-mail login (`broker/login/email.py`; offered when a mailer is configured) and Google login
(`broker/login/google.py`; offered when `BROKER_GOOGLE_CLIENT_ID` is set), described in the README:
`BROKER_MAILER` (`smtp`, `console`, `none`), `BROKER_SMTP_URL`, `BROKER_MAIL_FROM`,
`BROKER_MAIL_SUBJECT`, `BROKER_MAIL_CONSOLE_DIR`, `BROKER_EMAIL_CODE_KEY_PATH`,
`BROKER_EMAIL_RATE_LIMIT_PER_EMAIL_HOURLY` (5), `BROKER_EMAIL_RATE_LIMIT_PER_IP_MINUTELY` (30);
`BROKER_GOOGLE_CLIENT_ID`, `BROKER_GOOGLE_CLIENT_SECRET`, `BROKER_GOOGLE_ISSUER`
(`https://accounts.google.com`), `BROKER_GOOGLE_REDIRECT_URI`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_DB_PATH = Path("~/.agentkeys/broker/broker.sqlite3")
DEFAULT_OIDC_KEYPAIR_PATH = Path("~/.agentkeys/broker/oidc-keypair.json")
DEFAULT_OIDC_ISSUER = "https://oidc.agentkeys.dev"
DEFAULT_PORT = 8091
DEFAULT_SESSION_KEYPAIR_PATH = Path("~/.agentkeys/broker/session-keypair.json")
LOGIN_BACKENDS = ("heima", "local")
SESSION_TTL_DEFAULT, SESSION_TTL_MIN, SESSION_TTL_MAX = 18000, 60, 86400
CLOCK_SKEW_DEFAULT, CLOCK_SKEW_MAX = 60, 300
WALLET_STARTS_DEFAULT, WALLET_STARTS_MAX = 120, 1_000_000

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")


def _loopback() -> tuple[IpNetwork, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class BrokerConfigError(ValueError):
    """A configuration value the broker refuses to start with."""


DEFAULT_EMAIL_CODE_KEY_PATH = Path("~/.agentkeys/broker/email_code.key")
DEFAULT_GOOGLE_ISSUER = "https://accounts.google.com"
MAILERS = ("smtp", "console", "none")


@dataclass(frozen=True, slots=True)
class EmailLoginSettings:
    """How e-mail codes are sent and limited (`broker/login/email.py`)."""

    mailer: str  # "smtp" or "console"
    smtp_url: str | None = field(default=None, repr=False)  # may hold a password
    mail_from: str = "noreply@bots.litentry.org"
    subject: str = "AgentKeys verification code"
    console_dir: Path | None = None
    code_key_path: Path = DEFAULT_EMAIL_CODE_KEY_PATH
    per_email_hourly: int = 5
    per_ip_minutely: int = 30

    def smtp_description(self) -> str:
        """The SMTP URL without its user and password (what the start log says)."""
        if self.smtp_url is None:
            return ""
        url = urlsplit(self.smtp_url)
        port = f":{url.port}" if url.port else ""
        return f"{url.scheme}://{url.hostname}{port}"


@dataclass(frozen=True, slots=True)
class GoogleLoginSettings:
    """The OAuth client the broker is at the OpenID provider (`broker/login/google.py`)."""

    client_id: str
    client_secret: str = field(repr=False)
    issuer: str = DEFAULT_GOOGLE_ISSUER
    redirect_uri: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db_url: str = f"sqlite:///{DEFAULT_DB_PATH}"
    db_schema: str | None = None
    sqlite_synchronous: str = "full"
    db_pool_size: int = 8
    tee_jwt_public_key: Path | None = None
    tee_jwt_public_key_url: str | None = None
    accepted_client_ids: tuple[str, ...] = ("agentkeys",)
    callback_allow_cidrs: tuple[IpNetwork, ...] = field(
        default_factory=lambda: (
            ipaddress.ip_network("127.0.0.0/8"),
            ipaddress.ip_network("::1/128"),
        )
    )
    callback_base_path: str = "/agentkeys"
    #: reverse proxies (load balancers) whose `X-Forwarded-For` is believed; empty: none is
    trusted_proxy_cidrs: tuple[IpNetwork, ...] = ()
    max_connections: int = 1000
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    log_level: str = "INFO"
    log_format: str = "json"
    metrics_allow_cidrs: tuple[IpNetwork, ...] = field(default_factory=_loopback)
    email_login: EmailLoginSettings | None = None
    google_login: GoogleLoginSettings | None = None
    oidc_issuer: str = DEFAULT_OIDC_ISSUER
    oidc_keypair_path: Path = DEFAULT_OIDC_KEYPAIR_PATH
    oidc_jwt_ttl: int = 300
    data_role_arn: str | None = None
    session_duration: int = 3600
    sts_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    mint_max_skew: int = 120
    #: `agentkeys-broker run --skip-startup-check`: no `sts:GetCallerIdentity` at start
    skip_startup_check: bool = False
    login_backend: str = "heima"
    heima_worker_url: str | None = None
    public_url: str | None = None
    session_keypair_path: Path | None = None  # None: `session_key_default`
    session_ttl: int = SESSION_TTL_DEFAULT
    login_clock_skew: int = CLOCK_SKEW_DEFAULT
    #: wallet login starts per client address per minute (each writes a nonce row)
    wallet_starts_per_minute: int = WALLET_STARTS_DEFAULT

    @property
    def primary_client_id(self) -> str:
        return self.accepted_client_ids[0]

    @property
    def session_key_path(self) -> Path:
        return self.session_keypair_path or session_key_default(self.db_url)


def session_key_default(db_url: str) -> Path:
    """`BROKER_SESSION_KEYPAIR_PATH` unset: ``session-keypair.json`` beside a SQLite database
    (``~/.agentkeys/broker/`` with the default database), else
    ``~/.agentkeys/broker/session-keypair.json``."""
    if db_url.startswith("sqlite:"):
        return sqlite_path(db_url).with_name("session-keypair.json")
    return DEFAULT_SESSION_KEYPAIR_PATH.expanduser()


def parse_cidrs(value: str, variable: str = "BROKER_CALLBACK_ALLOW_CIDRS") -> tuple[IpNetwork, ...]:
    networks = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise BrokerConfigError(f"{variable}: {exc}") from None
    return tuple(networks)


def _positive(env: Mapping[str, str], variable: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(env[variable])
    except ValueError:
        raise BrokerConfigError(f"{variable} must be a positive {kind.__name__}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise BrokerConfigError(f"{variable} must be a positive {kind.__name__}")
    return value


def _request_handling(env: Mapping[str, str]) -> dict[str, object]:
    """Limits, logs and metrics (`broker.server`, `broker.observability`)."""
    values: dict[str, object] = {}
    if "BROKER_MAX_CONNECTIONS" in env:
        values["max_connections"] = _positive(env, "BROKER_MAX_CONNECTIONS", int)
    for variable, key in (
        ("BROKER_HEADER_TIMEOUT_SECONDS", "header_timeout"),
        ("BROKER_BODY_TIMEOUT_SECONDS", "body_timeout"),
        ("BROKER_KEEPALIVE_TIMEOUT_SECONDS", "keepalive_timeout"),
    ):
        if variable in env:
            values[key] = _positive(env, variable, float)
    if env.get("BROKER_LOG_LEVEL"):
        level = env["BROKER_LOG_LEVEL"].upper()
        if level not in LOG_LEVELS:
            raise BrokerConfigError(f"BROKER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        values["log_level"] = level
    if env.get("BROKER_LOG_FORMAT"):
        if env["BROKER_LOG_FORMAT"] not in LOG_FORMATS:
            raise BrokerConfigError(f"BROKER_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
        values["log_format"] = env["BROKER_LOG_FORMAT"]
    if "BROKER_METRICS_ALLOW_CIDRS" in env:
        values["metrics_allow_cidrs"] = parse_cidrs(env["BROKER_METRICS_ALLOW_CIDRS"], "BROKER_METRICS_ALLOW_CIDRS")
    return values


def _bounded_int(env: Mapping[str, str], variable: str, low: int, high: int) -> int:
    text = env[variable].strip()
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise BrokerConfigError(f"{variable} must be an integer from {low} to {high}")
    return int(text)


def _http_url(value: str, variable: str) -> str:
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise BrokerConfigError(f"{variable} must be an http(s) URL")
    return value


def _login(env: Mapping[str, str]) -> dict[str, object]:
    """Login and sessions (`broker/login/`, `broker/sessions.py`)."""
    values: dict[str, object] = {}
    if env.get("BROKER_LOGIN_BACKEND"):
        backend = env["BROKER_LOGIN_BACKEND"].strip().lower()
        if backend not in LOGIN_BACKENDS:
            raise BrokerConfigError(f"BROKER_LOGIN_BACKEND must be one of {', '.join(LOGIN_BACKENDS)}")
        values["login_backend"] = backend
    if env.get("BROKER_HEIMA_WORKER_URL"):
        values["heima_worker_url"] = _http_url(env["BROKER_HEIMA_WORKER_URL"], "BROKER_HEIMA_WORKER_URL")
    if env.get("BROKER_PUBLIC_URL"):
        values["public_url"] = _http_url(env["BROKER_PUBLIC_URL"], "BROKER_PUBLIC_URL").rstrip("/")
    if env.get("BROKER_SESSION_KEYPAIR_PATH"):
        values["session_keypair_path"] = Path(env["BROKER_SESSION_KEYPAIR_PATH"]).expanduser()
    if "BROKER_SESSION_JWT_TTL_SECONDS" in env:
        values["session_ttl"] = _bounded_int(env, "BROKER_SESSION_JWT_TTL_SECONDS", SESSION_TTL_MIN, SESSION_TTL_MAX)
    if "BROKER_LOGIN_CLOCK_SKEW_SECONDS" in env:
        values["login_clock_skew"] = _bounded_int(env, "BROKER_LOGIN_CLOCK_SKEW_SECONDS", 0, CLOCK_SKEW_MAX)
    if "BROKER_WALLET_START_RATE_LIMIT_PER_IP_MINUTELY" in env:
        values["wallet_starts_per_minute"] = _bounded_int(
            env, "BROKER_WALLET_START_RATE_LIMIT_PER_IP_MINUTELY", 1, WALLET_STARTS_MAX
        )
    return values


def config_from_env(env: Mapping[str, str] | None = None, **overrides: object) -> BrokerConfig:
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    if "BROKER_HOST" in env:
        values["host"] = env["BROKER_HOST"]
    if "BROKER_PORT" in env:
        try:
            values["port"] = int(env["BROKER_PORT"])
        except ValueError:
            raise BrokerConfigError("BROKER_PORT must be an integer") from None
    values["db_url"], values["db_schema"] = database_from_env(env)
    if "BROKER_DB_POOL_SIZE" in env:
        pool_size = env["BROKER_DB_POOL_SIZE"].strip()
        if not pool_size.isdigit() or not 1 <= int(pool_size) <= 1000:
            raise BrokerConfigError("BROKER_DB_POOL_SIZE must be an integer from 1 to 1000")
        values["db_pool_size"] = int(pool_size)
    if "BROKER_SQLITE_SYNCHRONOUS" in env:
        values["sqlite_synchronous"] = env["BROKER_SQLITE_SYNCHRONOUS"].strip().lower()
        if values["sqlite_synchronous"] not in ("full", "normal"):
            raise BrokerConfigError("BROKER_SQLITE_SYNCHRONOUS must be full or normal")
    if env.get("BROKER_TEE_JWT_PUBLIC_KEY"):
        values["tee_jwt_public_key"] = Path(env["BROKER_TEE_JWT_PUBLIC_KEY"]).expanduser()
    if env.get("BROKER_TEE_JWT_PUBLIC_KEY_URL"):
        url = urlsplit(env["BROKER_TEE_JWT_PUBLIC_KEY_URL"])
        loopback = url.hostname in ("127.0.0.1", "::1", "localhost")
        if url.scheme != "https" and not (url.scheme == "http" and loopback):
            raise BrokerConfigError(
                "BROKER_TEE_JWT_PUBLIC_KEY_URL must be https, or http on loopback (a development simulator): "
                "a key fetched in clear could be anyone's"
            )
        values["tee_jwt_public_key_url"] = env["BROKER_TEE_JWT_PUBLIC_KEY_URL"]
    if "BROKER_ACCEPTED_CLIENT_IDS" in env:
        ids = tuple(part.strip() for part in env["BROKER_ACCEPTED_CLIENT_IDS"].split(",") if part.strip())
        if not ids:
            raise BrokerConfigError("BROKER_ACCEPTED_CLIENT_IDS must name at least one client id")
        values["accepted_client_ids"] = ids
    if "BROKER_CALLBACK_ALLOW_CIDRS" in env:
        values["callback_allow_cidrs"] = parse_cidrs(env["BROKER_CALLBACK_ALLOW_CIDRS"])
    if "BROKER_TRUSTED_PROXY_CIDRS" in env:
        values["trusted_proxy_cidrs"] = parse_cidrs(env["BROKER_TRUSTED_PROXY_CIDRS"], "BROKER_TRUSTED_PROXY_CIDRS")
    if "BROKER_CALLBACK_BASE_PATH" in env:
        values["callback_base_path"] = env["BROKER_CALLBACK_BASE_PATH"]
    values.update(_request_handling(env))
    values.update(_credential_surface(env))
    values.update(_login(env))
    values["email_login"] = email_login_from_env(env)
    values["google_login"] = google_login_from_env(env)
    values.update({key: value for key, value in overrides.items() if value is not None})
    base = str(values.get("callback_base_path", "/agentkeys")).rstrip("/")
    if base and not base.startswith("/"):
        raise BrokerConfigError("BROKER_CALLBACK_BASE_PATH must start with '/'")
    values["callback_base_path"] = base
    config = BrokerConfig(**values)  # type: ignore[arg-type]
    if config.tee_jwt_public_key is None and config.tee_jwt_public_key_url is None and config.login_backend != "local":
        raise BrokerConfigError(
            "no TEE key: set BROKER_TEE_JWT_PUBLIC_KEY (PEM/DER file) or, for local development, "
            "BROKER_TEE_JWT_PUBLIC_KEY_URL (e.g. http://127.0.0.1:2100/_sim/jwt-public-key)"
        )
    return config


def _loopback_host(host: str | None) -> bool:
    return host in ("127.0.0.1", "::1", "localhost")


def email_login_from_env(env: Mapping[str, str]) -> EmailLoginSettings | None:
    """The e-mail login's settings, or None when no mailer is configured (no e-mail login)."""
    smtp_url = env.get("BROKER_SMTP_URL") or None
    mailer = (env.get("BROKER_MAILER") or ("smtp" if smtp_url else "none")).strip().lower()
    if mailer not in MAILERS:
        raise BrokerConfigError(f"BROKER_MAILER must be one of {', '.join(MAILERS)}")
    if mailer == "none":
        return None
    values: dict[str, Any] = {"mailer": mailer}
    if mailer == "smtp":
        if smtp_url is None:
            raise BrokerConfigError("BROKER_MAILER=smtp needs BROKER_SMTP_URL (smtps://HOST[:PORT] or smtp://…)")
        try:
            url = urlsplit(smtp_url)
            url.port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise BrokerConfigError("BROKER_SMTP_URL is not a valid URL (is the port a number?)") from None
        if url.scheme not in ("smtp", "smtps") or not url.hostname:
            raise BrokerConfigError("BROKER_SMTP_URL must be smtps://[USER:PASSWORD@]HOST[:PORT] or smtp://…")
        values["smtp_url"] = smtp_url
    else:
        if not env.get("BROKER_MAIL_CONSOLE_DIR"):
            raise BrokerConfigError("BROKER_MAILER=console needs BROKER_MAIL_CONSOLE_DIR (where the codes are written)")
        values["console_dir"] = Path(env["BROKER_MAIL_CONSOLE_DIR"]).expanduser()
    for variable, key in (("BROKER_MAIL_FROM", "mail_from"), ("BROKER_MAIL_SUBJECT", "subject")):
        if env.get(variable):
            if any(char in env[variable] for char in "\r\n"):
                raise BrokerConfigError(f"{variable} must be one line")
            values[key] = env[variable].strip()
    values["code_key_path"] = email_code_key_path(env)
    for variable, key in (
        ("BROKER_EMAIL_RATE_LIMIT_PER_EMAIL_HOURLY", "per_email_hourly"),
        ("BROKER_EMAIL_RATE_LIMIT_PER_IP_MINUTELY", "per_ip_minutely"),
    ):
        if variable in env:
            values[key] = _positive(env, variable, int)
    return EmailLoginSettings(**values)


def google_login_from_env(env: Mapping[str, str]) -> GoogleLoginSettings | None:
    """The Google login's settings, or None when `BROKER_GOOGLE_CLIENT_ID` is not set."""
    client_id = (env.get("BROKER_GOOGLE_CLIENT_ID") or "").strip()
    if not client_id:
        return None
    secret = env.get("BROKER_GOOGLE_CLIENT_SECRET") or ""
    if not secret:
        raise BrokerConfigError("BROKER_GOOGLE_CLIENT_ID needs BROKER_GOOGLE_CLIENT_SECRET")
    issuer = (env.get("BROKER_GOOGLE_ISSUER") or DEFAULT_GOOGLE_ISSUER).strip().rstrip("/")
    try:
        url = urlsplit(issuer)
    except ValueError:
        raise BrokerConfigError("BROKER_GOOGLE_ISSUER is not a valid URL") from None
    if url.scheme != "https" and not (url.scheme == "http" and _loopback_host(url.hostname)):
        raise BrokerConfigError(
            "BROKER_GOOGLE_ISSUER must be https, or http on loopback (a test provider): "
            "keys fetched in clear could be anyone's"
        )
    redirect_uri = (env.get("BROKER_GOOGLE_REDIRECT_URI") or "").strip() or None
    if redirect_uri is not None:
        redirect = urlsplit(redirect_uri)
        if redirect.scheme not in ("http", "https") or not redirect.hostname or redirect.fragment:
            raise BrokerConfigError("BROKER_GOOGLE_REDIRECT_URI must be an absolute http(s) URL without a fragment")
    return GoogleLoginSettings(client_id=client_id, client_secret=secret, issuer=issuer, redirect_uri=redirect_uri)


def _bounded(env: Mapping[str, str], variable: str, low: int, high: int) -> int:
    text = env[variable].strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise BrokerConfigError(f"{variable} must be an integer from {low} to {high}")
    return int(text)


_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}")


def check_issuer(issuer: str) -> str:
    """The issuer is used byte for byte (AWS compares it so): nothing is trimmed or added."""
    url = urlsplit(issuer)
    loopback = url.hostname in ("127.0.0.1", "::1", "localhost")
    if url.scheme != "https" and not (url.scheme == "http" and loopback):
        raise BrokerConfigError("BROKER_OIDC_ISSUER must be an https URL (http only on loopback, for development)")
    if not url.hostname or url.query or url.fragment or issuer.endswith("/") or issuer != issuer.strip():
        raise BrokerConfigError(
            "BROKER_OIDC_ISSUER must be a URL without query, fragment, surrounding spaces or trailing '/' "
            "(the JWKS is served at <issuer>/.well-known/jwks.json)"
        )
    return issuer


def email_code_key_path(env: Mapping[str, str]) -> Path:
    """`BROKER_EMAIL_CODE_KEY_PATH`, else ``email_code.key`` beside the SQLite database (for the
    default database ``~/.agentkeys/broker/email_code.key``), else there. Replicas on PostgreSQL
    must share one key file: name it."""
    return _key_file(env, "BROKER_EMAIL_CODE_KEY_PATH", DEFAULT_EMAIL_CODE_KEY_PATH)


def oidc_keypair_path(env: Mapping[str, str]) -> Path:
    """`BROKER_OIDC_KEYPAIR_PATH`, else ``oidc-keypair.json`` beside the SQLite database (for the
    default database that is the spec's ``~/.agentkeys/broker/oidc-keypair.json``), else there."""
    return _key_file(env, "BROKER_OIDC_KEYPAIR_PATH", DEFAULT_OIDC_KEYPAIR_PATH)


def _key_file(env: Mapping[str, str], variable: str, default: Path) -> Path:
    """A key file's path: `variable`, else the default's file name beside the SQLite database
    (`BROKER_DB_URL`, or the default database), else `default` itself."""
    if env.get(variable):
        return Path(env[variable]).expanduser()
    db_url = env.get("BROKER_DB_URL") or f"sqlite:///{DEFAULT_DB_PATH}"
    if db_url.startswith("sqlite:"):
        with contextlib.suppress(BrokerConfigError):
            return sqlite_path(db_url).parent / default.name
    return default.expanduser()


def _credential_surface(env: Mapping[str, str]) -> dict[str, object]:
    """The OIDC issuer and the mint endpoints (`broker.oidc`, `broker.mint`)."""
    values: dict[str, object] = {}
    if "BROKER_OIDC_ISSUER" in env:
        values["oidc_issuer"] = check_issuer(env["BROKER_OIDC_ISSUER"])
    values["oidc_keypair_path"] = oidc_keypair_path(env)
    if "BROKER_OIDC_JWT_TTL_SECONDS" in env:
        values["oidc_jwt_ttl"] = _bounded(env, "BROKER_OIDC_JWT_TTL_SECONDS", 60, 3600)
    role = env.get("BROKER_DATA_ROLE_ARN") or env.get("BROKER_AGENT_ROLE_ARN")
    if role:
        if not _ROLE_ARN.fullmatch(role):
            raise BrokerConfigError("BROKER_DATA_ROLE_ARN must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        values["data_role_arn"] = role
    if "BROKER_SESSION_DURATION_SECONDS" in env:
        values["session_duration"] = _bounded(env, "BROKER_SESSION_DURATION_SECONDS", 900, 43200)
    if env.get("BROKER_STS_ENDPOINT_URL"):
        url = urlsplit(env["BROKER_STS_ENDPOINT_URL"])
        if url.scheme not in ("https", "http") or not url.hostname:
            raise BrokerConfigError("BROKER_STS_ENDPOINT_URL must be an http(s) URL")
        values["sts_endpoint_url"] = env["BROKER_STS_ENDPOINT_URL"]
    if env.get("BROKER_AWS_REGION"):
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-[0-9]+", env["BROKER_AWS_REGION"]):
            raise BrokerConfigError("BROKER_AWS_REGION must be an AWS region name (e.g. us-east-1)")
        values["aws_region"] = env["BROKER_AWS_REGION"]
    if env.get("BROKER_SKIP_STARTUP_CHECK", "").strip().lower() in ("1", "true", "yes"):
        values["skip_startup_check"] = True
    if "BROKER_MINT_MAX_SKEW_SECONDS" in env:
        values["mint_max_skew"] = _bounded(env, "BROKER_MINT_MAX_SKEW_SECONDS", 5, 600)
    return values


def database_from_env(env: Mapping[str, str]) -> tuple[str, str | None]:
    """`BROKER_DB_URL` and `BROKER_DB_SCHEMA`, checked: what the broker and the operator's
    commands open. A wrong value is named in one line that never repeats the URL (its password)."""
    db_url = env.get("BROKER_DB_URL") or f"sqlite:///{DEFAULT_DB_PATH}"
    check_db_url(db_url)
    schema = env.get("BROKER_DB_SCHEMA") or None
    if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise BrokerConfigError("BROKER_DB_SCHEMA must be a lowercase SQL identifier ([a-z_][a-z0-9_]*)")
    return db_url, schema


_DB_URL_FORMS = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


def check_db_url(db_url: str) -> None:
    if db_url.startswith("sqlite:"):
        sqlite_path(db_url)
        return
    if not db_url.startswith(("postgresql://", "postgres://")):
        raise BrokerConfigError(f"BROKER_DB_URL must be {_DB_URL_FORMS}")
    try:
        url = urlsplit(db_url)
        url.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise BrokerConfigError(f"BROKER_DB_URL is not a valid URL (is the port a number?): {_DB_URL_FORMS}") from None


def sqlite_path(db_url: str) -> Path:
    """``sqlite:///PATH`` → PATH (``~`` expanded); ``sqlite:///:memory:`` is refused (one process)."""
    prefix = "sqlite:///"
    if not db_url.startswith(prefix):
        raise BrokerConfigError(f"BROKER_DB_URL must be {_DB_URL_FORMS}")
    path = db_url[len(prefix) :]
    if not path or path == ":memory:":
        raise BrokerConfigError("BROKER_DB_URL must name a SQLite file")
    return Path(path).expanduser()
