"""What an operator sees: start and stop lines, one access-log line per request, `GET /metrics`.

Logs go to standard error, one line per event, in the format `BROKER_LOG_FORMAT` names (``json``:
one JSON object per line with ``ts``, ``level``, ``logger``, ``msg`` and the event's fields;
``text``: the same as ``key=value`` pairs) at `BROKER_LOG_LEVEL`. Every line passes `redact`, so a
bearer or a JWT that reaches a message by mistake is replaced before it is written.

The access log (logger ``agentkeys_kit.broker.access``, level INFO) has one line per request,
malformed ones included: method, path, route, status, duration, peer, the refusal code and its
reason, and the OmniAccount once a token proved it. Never a header, a query or a body.

Metrics (Prometheus text format, `prometheus_client`, one registry per application):

| metric | labels | what |
|---|---|---|
| `agentkeys_broker_requests_total` | route, method, status | requests answered |
| `agentkeys_broker_request_duration_seconds` | route | latency histogram, parse to last byte |
| `agentkeys_broker_refusals_total` | rule | refusals by `data.error` |
| `agentkeys_broker_database_errors_total` | — | requests that failed on the database (503) |
| `agentkeys_broker_connections_open` | — | open client connections |
| `agentkeys_broker_connections_closed_total` | reason | closed by us: `over_limit`, `evicted`, `header_timeout` |
| `agentkeys_broker_db_pool_size`, `…_db_pool_in_use`, `…_db_pool_max` | — | database connections |
| `agentkeys_broker_info` | version, database | build information |
| `process_*` | — | RSS, CPU, open files (`prometheus_client`'s process collector) |
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agentkeys_kit.broker.config import BrokerConfig
from agentkeys_kit.broker.errors import REFUSAL, Refusal
from agentkeys_kit.broker.storage import Database

ACCESS_LOG = logging.getLogger("agentkeys_kit.broker.access")
#: The OmniAccount a verified token named (set through `http.note_omni_account`).
OMNI_ACCOUNT = web.RequestKey("broker_omni_account", str)
#: the client's address as `http.client_address` found it (behind a trusted proxy, not the peer's)
CLIENT_ADDRESS = web.RequestKey("broker_client_address", str)
log = logging.getLogger("agentkeys_kit.broker")

_BEARER = re.compile(r"(?i)\b(bearer)(\s+|\\u0020|%20)[^\s\"',;\\]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*)?")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PATH_CHARS = 200
#: Routes whose path carries a secret (a poll handle): the access log writes the route's pattern.
SECRET_PATH_ROUTES = frozenset({"/v1/auth/google/status/{request_id}"})


def version() -> str:
    try:
        return importlib.metadata.version("agentkeys-heima-kit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- log lines


def redact(text: str) -> str:
    """Replace anything shaped like a bearer credential or a JWT (last line of defence)."""
    return _JWT.sub("[redacted-jwt]", _BEARER.sub(r"\1 [redacted]", text))


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: msg key=value …`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            line += " " + " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def configure_logging(level: str, log_format: str) -> None:
    """Send every logger (aiohttp's and asyncio's included) through one redacting formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the broker writes its own


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the event's fields, shown after the message."""
    return {"fields": {key: value for key, value in values.items() if value is not None}}


# --------------------------------------------------------------------------- start and stop lines


def database_description(db_url: str, schema: str | None) -> dict[str, str]:
    """The database kind and location without a password (a PostgreSQL URL keeps user, host,
    port and database; its query, which may hold ``password=``, is dropped)."""
    if not db_url.startswith(("postgresql://", "postgres://")):
        return {"database": "sqlite", "path": db_url.removeprefix("sqlite:///")}
    try:
        url = urlsplit(db_url)
        host = url.hostname or ""
        port = f":{url.port}" if url.port else ""
    except ValueError:
        return {"database": "postgresql", "url": "(unparseable)", "schema": schema or "public"}
    user = f"{url.username}@" if url.username else ""
    where = f"{url.scheme}://{user}{host}{port}{url.path}"
    return {"database": "postgresql", "url": where, "schema": schema or "public"}


def key_fingerprint(key: rsa.RSAPublicKey) -> str:
    """SHA-256 of the PKCS#1 DER public key: the ``jwt_key_sha256`` the simulator's `/_sim/info` shows."""
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)).hexdigest()


def log_start(config: BrokerConfig, tee_key: rsa.RSAPublicKey | None, schema_version: int) -> None:
    """One line each: version, database, schema version, TEE key, clients, networks."""
    log.info("agentkeys-broker %s starting", version(), extra=fields(version=version()))
    db = database_description(config.db_url, config.db_schema)
    where = db.get("url") or db.get("path")
    schema = f" schema {db['schema']}" if "schema" in db else ""
    log.info("database %s %s%s", db["database"], where, schema, extra=fields(**db))
    log.info("database schema version %d", schema_version, extra=fields(schema_version=schema_version))
    if tee_key is None:
        log.info("no TEE key: TEE access tokens and the worker's callbacks are refused (a local backend on its own)")
    else:
        source = str(config.tee_jwt_public_key or config.tee_jwt_public_key_url)
        fingerprint = key_fingerprint(tee_key)
        log.info(
            "TEE key RSA-%d sha256 %s from %s",
            tee_key.key_size,
            fingerprint,
            source,
            extra=fields(tee_key_sha256=fingerprint, tee_key_source=source),
        )
    clients = list(config.accepted_client_ids)
    log.info("accepted client ids: %s", ", ".join(clients), extra=fields(accepted_client_ids=clients))
    callbacks = [str(network) for network in config.callback_allow_cidrs]
    log.info(
        "credential-less callbacks served to %s", ", ".join(callbacks) or "nobody", extra=fields(networks=callbacks)
    )
    proxies = [str(network) for network in config.trusted_proxy_cidrs]
    for network in config.trusted_proxy_cidrs:
        if network.prefixlen == 0:
            log.warning(
                "BROKER_TRUSTED_PROXY_CIDRS holds %s: every client is a trusted proxy and can name the address it is "
                "counted as (rate limits, audit); name only the load balancers",
                network,
                extra=fields(network=str(network)),
            )
    log.info(
        "X-Forwarded-For believed from %s",
        ", ".join(proxies) or "nobody (clients are TCP peers)",
        extra=fields(networks=proxies),
    )
    metrics = [str(network) for network in config.metrics_allow_cidrs]
    log.info("GET /metrics served to %s", ", ".join(metrics) or "nobody", extra=fields(networks=metrics))


# --------------------------------------------------------------------------- metrics


class BrokerMetrics:
    """The broker's Prometheus metrics, in a registry of its own (several apps share a test process)."""

    def __init__(self, database: Callable[[], Database | None]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "agentkeys_broker_requests", "HTTP requests answered", ["route", "method", "status"], registry=registry
        )
        self.latency = Histogram(
            "agentkeys_broker_request_duration_seconds",
            "time from the parsed request to the last byte of the answer",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.refusals = Counter(
            "agentkeys_broker_refusals", "refusals by rule (data.error)", ["rule"], registry=registry
        )
        self.database_errors = Counter(
            "agentkeys_broker_database_errors", "requests that failed on the database", registry=registry
        )
        self.connections_open = Gauge("agentkeys_broker_connections_open", "open client connections", registry=registry)
        self.connections_closed = Counter(
            "agentkeys_broker_connections_closed",
            "connections the broker closed to protect itself",
            ["reason"],
            registry=registry,
        )
        self.info = Gauge("agentkeys_broker_info", "build information", ["version", "database"], registry=registry)
        ProcessCollector(registry=registry)
        registry.register(_PoolCollector(database))

    def observe(self, route: str, method: str, status: int, seconds: float, refusal: Refusal | None) -> None:
        self.requests.labels(route, method if method in _METHODS else "other", str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if refusal is not None:
            self.refusals.labels(refusal.error).inc()
            if refusal.error == "storage_unavailable":
                self.database_errors.inc()


class _PoolCollector(Collector):
    """Database connections, read when scraped. PostgreSQL: asyncpg's pool (public `get_size`,
    `get_idle_size`, `get_max_size`); SQLite: one connection on the event loop."""

    def __init__(self, database: Callable[[], Database | None]) -> None:
        self._database = database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        db = self._database()
        if db is None:
            return
        pool = getattr(db, "_pool", None)  # the storage layer exposes no pool API; read asyncpg's own
        if pool is not None:
            size, idle, most = pool.get_size(), pool.get_idle_size(), pool.get_max_size()
        else:
            size, idle, most = 1, 1, 1
        yield GaugeMetricFamily("agentkeys_broker_db_pool_size", "database connections open", value=size)
        yield GaugeMetricFamily("agentkeys_broker_db_pool_in_use", "database connections in use", value=size - idle)
        yield GaugeMetricFamily("agentkeys_broker_db_pool_max", "database connections at most", value=most)


METRICS = web.AppKey("broker_metrics", BrokerMetrics)


def metrics_response(metrics: BrokerMetrics, accept: str) -> web.Response:
    """The exposition the scraper asked for (`Accept`): Prometheus text 0.0.4 unless it asks for
    OpenMetrics or a newer text version (prometheus_client's own negotiation)."""
    encoder, content_type = choose_encoder(accept)
    return web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})


# --------------------------------------------------------------------------- access log


class AccessLog(AbstractAccessLogger):
    """One line and one metrics update per answered request, aiohttp's own refusals included
    (`broker.server` installs it on every connection)."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        super().__init__(ACCESS_LOG, "")
        self.metrics = metrics

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        refusal = response.get(REFUSAL)
        # A request the HTTP parser refused has no trustworthy method or path: say so, echo nothing.
        unparsed = refusal is not None and refusal.error == "malformed_request" and route_of(request) == "unrouted"
        route = "malformed" if unparsed else route_of(request)
        method = "-" if unparsed else request.method
        self.metrics.observe(route, method, response.status, time, refusal)
        if not ACCESS_LOG.isEnabledFor(logging.INFO):
            return
        path = "-" if unparsed else route if route in SECRET_PATH_ROUTES else request.path[:_PATH_CHARS]
        account = request.get(OMNI_ACCOUNT) if isinstance(request, web.Request) else None
        client = request.get(CLIENT_ADDRESS) if isinstance(request, web.Request) else None
        ACCESS_LOG.info(
            "%s %s %d",
            method,
            path,
            response.status,
            extra=fields(
                method=method,
                path=path,
                route=route,
                status=response.status,
                duration_ms=round(time * 1000, 3),
                remote=client or request.remote,
                refusal=refusal.error if refusal else None,
                reason=refusal.reason if refusal else None,
                omni_account=account,
            ),
        )


def route_of(request: BaseRequest) -> str:
    """The route's pattern (a bounded label, never the caller's bytes), ``unmatched`` or ``unrouted``."""
    try:
        info = request.match_info  # type: ignore[attr-defined]
    except (AssertionError, AttributeError):
        return "unrouted"
    if info is None:
        return "unrouted"
    resource = getattr(getattr(info, "route", None), "resource", None)
    return str(resource.canonical) if resource is not None else "unmatched"
