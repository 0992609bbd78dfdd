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

from agentkeys_kit.broker import agent_mint, background, http
from agentkeys_kit.broker.audit import RefusalAudit
from agentkeys_kit.broker.audit_chain import CHAIN, ChainWriter
from agentkeys_kit.broker.bearer import add_bearer_routes, require_principal
from agentkeys_kit.broker.callbacks import add_callback_routes
from agentkeys_kit.broker.config import BrokerConfig
from agentkeys_kit.broker.grants import add_grant_routes
from agentkeys_kit.broker.login import add_login_routes
from agentkeys_kit.broker.login.heima import log_login_start
from agentkeys_kit.broker.mint import MINT as MINT_SERVICE_KEY
from agentkeys_kit.broker.mint import MintService, Resolver, add_mint_routes
from agentkeys_kit.broker.observability import METRICS, BrokerMetrics, fields, log_start, metrics_response, version
from agentkeys_kit.broker.oidc import OidcKeys, add_oidc_routes
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
from agentkeys_kit.broker.sts import Sts, StsFailure
from agentkeys_kit.broker.tee_keys import fetch_public_key, load_public_key_file
from agentkeys_kit.broker.tokens import TeeTokenVerifier

log = logging.getLogger(__name__)

PURGE_EVERY_SECONDS = 60.0


async def load_tee_key(config: BrokerConfig) -> rsa.RSAPublicKey | None:
    """The pinned key; None for a ``local`` broker given none (it then refuses every TEE token)."""
    if config.tee_jwt_public_key is not None:
        return load_public_key_file(config.tee_jwt_public_key)
    if config.tee_jwt_public_key_url is None:
        return None
    log.warning("fetching the TEE key from %s: for local development only", config.tee_jwt_public_key_url)
    return await fetch_public_key(config.tee_jwt_public_key_url)


class StartupCheckFailed(RuntimeError):
    """`sts:GetCallerIdentity` failed at start (`agentkeys-broker run --skip-startup-check`)."""


def create_app(
    config: BrokerConfig,
    *,
    tee_key: rsa.RSAPublicKey | None = None,
    clock: Callable[[], float] = time.time,
    resolve_caller: Resolver | None = None,
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
                await background.stop(purging)
        finally:
            await refusals.close()
            await db.close()

    oidc_keys = OidcKeys(config.oidc_keypair_path, clock)

    async def credential_surface(app: web.Application) -> AsyncIterator[None]:
        """The OIDC keys, the audit chain's writer, STS: after the database, closed before it."""
        created = await asyncio.to_thread(oidc_keys.load)
        log_oidc(config, oidc_keys, created)
        oidc_keys.watch()
        state = app[STATE]
        writer = ChainWriter(state.db)
        app[CHAIN] = writer
        sts = await open_sts(config)
        purge = asyncio.create_task(forget_request_ids(state.db, clock), name="broker-mint-requests")
        resolver = resolve_caller or require_principal
        app[MINT_SERVICE_KEY] = MintService(config, writer, oidc_keys, resolver, sts, clock)
        try:
            yield
        finally:
            await background.stop(purge)
            await writer.close()
            if sts is not None:
                await sts.close()
            await oidc_keys.close()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(credential_surface)
    add_oidc_routes(app, oidc_keys, config.oidc_issuer, clock)
    add_mint_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus_metrics)
    add_callback_routes(app, config.callback_base_path)
    add_grant_routes(app)
    add_bearer_routes(app)
    add_session_routes(app)
    add_login_routes(app, config)
    return app


async def open_sts(config: BrokerConfig) -> Sts | None:
    if config.data_role_arn is None:
        log.info("mint-aws-creds: off (no BROKER_DATA_ROLE_ARN)")
        return None
    sts = Sts(region=config.aws_region, endpoint_url=config.sts_endpoint_url)
    await sts.open()
    where = config.sts_endpoint_url or f"AWS STS {config.aws_region}"
    log.info(
        "mint-aws-creds: role %s, %d s credentials, STS at %s",
        config.data_role_arn,
        config.session_duration,
        where,
        extra=fields(role=config.data_role_arn, session_duration=config.session_duration, sts=where),
    )
    if config.skip_startup_check:
        log.warning("start-up check skipped (--skip-startup-check): STS was not asked")
        return sts
    try:
        arn = await sts.caller_identity()
    except StsFailure as failure:
        await sts.close()
        raise StartupCheckFailed(
            f"sts:GetCallerIdentity failed ({failure.kind}: {failure.detail}); fix the AWS credentials or "
            "BROKER_STS_ENDPOINT_URL, or start with --skip-startup-check"
        ) from None
    log.info("STS start-up check: the broker runs as %s", arn, extra=fields(caller_arn=arn))
    return sts


def log_oidc(config: BrokerConfig, keys: OidcKeys, created: bool) -> None:
    kid = keys.keys.kid
    log.info(
        "OIDC issuer %s, signing key %s %s %s, JWT lifetime %d s",
        config.oidc_issuer,
        kid,
        "created at" if created else "read from",
        config.oidc_keypair_path,
        config.oidc_jwt_ttl,
        extra=fields(issuer=config.oidc_issuer, kid=kid, key_path=str(config.oidc_keypair_path)),
    )


async def forget_request_ids(db: Database, clock: Callable[[], float], every: float = 60.0) -> None:
    """Agents' request ids past their skew window are of no use: dropped once a minute."""
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(StorageError):  # the storage log reports outages; the next round retries
            await db.run(agent_mint.forget_old_requests, int(clock()))


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
    body = {"database": database, "tee_key": state.verifier.has_key, "db": state.db.dialect}
    if database:
        try:
            body["schema_version"] = await state.db.schema_version()
        except StorageError:
            body["database"] = database = False
    return web.json_response(body, status=200 if database else 503)


async def prometheus_metrics(request: web.Request) -> web.Response:
    """Prometheus text format, to `BROKER_METRICS_ALLOW_CIDRS` only."""
    http.require_peer_in(request, request.app[STATE].config.metrics_allow_cidrs, "/metrics is")
    return metrics_response(request.app[METRICS], request.headers.get("Accept", ""))
