"""Broker configuration from `BROKER_*` variables; `agentkeys-broker run` flags override them.

| variable | meaning | default |
|---|---|---|
| `BROKER_HOST`, `BROKER_PORT` | listen address | `127.0.0.1`, `8091` |
| `BROKER_DB_URL` | `sqlite:///PATH` or `postgresql://…` | `sqlite:///~/.agentkeys/broker/broker.sqlite3`|
| `BROKER_DB_SCHEMA` | PostgreSQL schema for the tables (isolates deployments or test runs) | `public` |
| `BROKER_DB_POOL_SIZE` | PostgreSQL connections per broker (replicas × this ≤ the server's max_connections) | `8` |
| `BROKER_SQLITE_SYNCHRONOUS` | `full`: a reply means the write is on disk; `normal`: may lose the last | `full` |
| `BROKER_TEE_JWT_PUBLIC_KEY` | pinned TEE JWT public key, PEM or DER (private keys are refused) | — |
| `BROKER_TEE_JWT_PUBLIC_KEY_URL` | development only: fetch the key once at start (`/_sim/jwt-public-key`) | — |
| `BROKER_ACCEPTED_CLIENT_IDS` | comma list of `aud` values accepted; the first is the broker's own | `agentkeys` |
| `BROKER_CALLBACK_ALLOW_CIDRS` | networks allowed to call the credential-less callbacks | `127.0.0.0/8,::1/128` |
| `BROKER_CALLBACK_BASE_PATH` | extra prefix the callbacks are also served under | `/agentkeys` |
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DB_PATH = Path("~/.agentkeys/broker/broker.sqlite3")
DEFAULT_PORT = 8091

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BrokerConfigError(ValueError):
    """A configuration value the broker refuses to start with."""


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

    @property
    def primary_client_id(self) -> str:
        return self.accepted_client_ids[0]


def parse_cidrs(value: str) -> tuple[IpNetwork, ...]:
    networks = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise BrokerConfigError(f"BROKER_CALLBACK_ALLOW_CIDRS: {exc}") from None
    return tuple(networks)


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
    if "BROKER_CALLBACK_BASE_PATH" in env:
        values["callback_base_path"] = env["BROKER_CALLBACK_BASE_PATH"]
    values.update({key: value for key, value in overrides.items() if value is not None})
    base = str(values.get("callback_base_path", "/agentkeys")).rstrip("/")
    if base and not base.startswith("/"):
        raise BrokerConfigError("BROKER_CALLBACK_BASE_PATH must start with '/'")
    values["callback_base_path"] = base
    config = BrokerConfig(**values)  # type: ignore[arg-type]
    if config.tee_jwt_public_key is None and config.tee_jwt_public_key_url is None:
        raise BrokerConfigError(
            "no TEE key: set BROKER_TEE_JWT_PUBLIC_KEY (PEM/DER file) or, for local development, "
            "BROKER_TEE_JWT_PUBLIC_KEY_URL (e.g. http://127.0.0.1:2100/_sim/jwt-public-key)"
        )
    return config


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
