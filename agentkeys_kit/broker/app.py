"""The broker's aiohttp application: callbacks, grants, health and readiness.

Keys and the database are opened once in the application's lifecycle (never per request):
the TEE key from `BROKER_TEE_JWT_PUBLIC_KEY`, or fetched once from
`BROKER_TEE_JWT_PUBLIC_KEY_URL` in development.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.audit import RefusalAudit
from agentkeys_kit.broker.callbacks import add_callback_routes
from agentkeys_kit.broker.config import BrokerConfig
from agentkeys_kit.broker.grants import add_grant_routes
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import StorageError, open_database
from agentkeys_kit.broker.tee_keys import fetch_public_key, load_public_key_file
from agentkeys_kit.broker.tokens import TeeTokenVerifier

log = logging.getLogger(__name__)


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
    app = web.Application(client_max_size=1024 * 1024, middlewares=[error_envelope])

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
            verifier = TeeTokenVerifier(key, config.accepted_client_ids, clock)
            app[STATE] = BrokerState(config=config, db=db, verifier=verifier, refusals=refusals, clock=clock)
            yield
        finally:
            await refusals.close()
            await db.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_callback_routes(app, config.callback_base_path)
    add_grant_routes(app)
    return app


@web.middleware
async def error_envelope(request: web.Request, handler: Callable[[web.Request], object]) -> web.StreamResponse:
    """Unknown paths and wrong methods answer in the envelope too; nothing escapes as a 500 page."""
    try:
        response = await handler(request)  # type: ignore[misc]
        assert isinstance(response, web.StreamResponse)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.status * 100
        return errors.BrokerError(exc.status, code, exc.reason.lower().replace(" ", "_"), exc.reason).response()
    except Exception:
        log.exception("unexpected failure on %s %s", request.method, request.path)
        return errors.BrokerError(500, 50000, "internal_error", "internal error").response()


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
