"""The broker's aiohttp application: callbacks, login, sessions, whoami, grants, health, readiness
and metrics.

Every route stands on the request layer (`broker.http`: strict bodies and queries, the envelope
for every error) and is counted and logged by `broker.observability`; serve it with
`broker.server.BrokerServer`, which adds the connection limits.

Keys and the database are opened once in the application's lifecycle (never per request):
the TEE key from `BROKER_TEE_JWT_PUBLIC_KEY`, or fetched once from
`BROKER_TEE_JWT_PUBLIC_KEY_URL` in development, and the session key from
`BROKER_SESSION_KEYPAIR_PATH` (created on first start). A housekeeping task purges expired login
state every `PURGE_EVERY_SECONDS` (`storage/login.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker import http
from agentkeys_kit.broker.audit import RefusalAudit
from agentkeys_kit.broker.bearer import add_bearer_routes
from agentkeys_kit.broker.callbacks import add_callback_routes
from agentkeys_kit.broker.config import BrokerConfig
from agentkeys_kit.broker.grants import add_grant_routes
from agentkeys_kit.broker.login import add_login_routes
from agentkeys_kit.broker.login.heima import log_login_start
from agentkeys_kit.broker.observability import METRICS, BrokerMetrics, log_start, metrics_response, version
from agentkeys_kit.broker.sessions import (
    SessionIssuer,
    add_session_routes,
    load_or_create_session_key,
    session_issuer_name,
)
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import Database, StorageError, open_database
from agentkeys_kit.broker.storage import login as login_store
from agentkeys_kit.broker.storage.base import one_line
from agentkeys_kit.broker.tee_keys import fetch_public_key, load_public_key_file
from agentkeys_kit.broker.tokens import TeeTokenVerifier

log = logging.getLogger(__name__)

PURGE_EVERY_SECONDS = 60.0


async def load_tee_key(config: BrokerConfig) -> rsa.RSAPublicKey:
    if config.tee_jwt_public_key is not None:
        return load_public_key_file(config.tee_jwt_public_key)
    assert config.tee_jwt_public_key_url is not None
    log.warning("fetching the TEE key from %s: for local development only", config.tee_jwt_public_key_url)
    return await fetch_public_key(config.tee_jwt_public_key_url)


def create_app(
    config: BrokerConfig,
    *,
    tee_key: rsa.RSAPublicKey | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    app = web.Application(client_max_size=http.MAX_BODY)
    http.install(app, body_timeout=config.body_timeout)
    metrics = BrokerMetrics(lambda: app[STATE].db if STATE in app else None)
    app[METRICS] = metrics

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        key = tee_key or await load_tee_key(config)
        db = open_database(
            config.db_url,
            schema=config.db_schema,
            sqlite_synchronous=config.sqlite_synchronous,
            pool_size=config.db_pool_size,
        )
        await db.open()
        refusals = RefusalAudit(db)
        refusals.start()
        try:
            session_key = load_or_create_session_key(config.session_key_path, int(clock()))
            sessions = SessionIssuer(
                session_key, session_issuer_name(config.public_url), config.session_ttl, config.login_clock_skew
            )
            verifier = TeeTokenVerifier(key, config.accepted_client_ids, clock)
            app[STATE] = BrokerState(
                config=config, db=db, verifier=verifier, refusals=refusals, sessions=sessions, clock=clock
            )
            log_start(config, key, await db.schema_version())
            log_login_start(config, session_key)
            metrics.info.labels(version(), db.dialect).set(1)
            purging = asyncio.create_task(purge_forever(db, clock))
            try:
                yield
            finally:
                purging.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await purging
        finally:
            await refusals.close()
            await db.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus_metrics)
    add_callback_routes(app, config.callback_base_path)
    add_grant_routes(app)
    add_bearer_routes(app)
    add_session_routes(app)
    add_login_routes(app, config)
    return app


async def purge_forever(db: Database, clock: Callable[[], float], every: float = PURGE_EVERY_SECONDS) -> None:
    """Delete expired login nonces, sessions and recorded TEE tokens, now and every `every` s."""
    while True:
        try:
            counts = await db.run(login_store.purge_expired, int(clock()))
            if any(counts.values()):
                log.info("purged expired login state: %s", counts)
        except StorageError as exc:
            log.warning("purging expired login state failed: %s", one_line(exc))
        await asyncio.sleep(every)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    database = await state.db.ping()
    body = {"database": database, "tee_key": True, "db": state.db.dialect}
    if database:
        try:
            body["schema_version"] = await state.db.schema_version()
        except StorageError:
            body["database"] = database = False
    return web.json_response(body, status=200 if database else 503)


async def prometheus_metrics(request: web.Request) -> web.Response:
    """Prometheus text format, to `BROKER_METRICS_ALLOW_CIDRS` only."""
    http.require_peer_in(request, request.app[STATE].config.metrics_allow_cidrs)
    return metrics_response(request.app[METRICS], request.headers.get("Accept", ""))
