"""The aiohttp application: JSON-RPC over HTTP POST and WebSocket on one port (jsonrpsee's
default), plus simulator-only endpoints under `/_sim/` that the worker does not have.

HTTP framing follows jsonrpsee (`server/src/transport/http.rs`; 0.24's defaults, not re-read at the
newest worker's 0.26): POST with a JSON content
type (``application/json`` or ``application/json-rpc``, optionally ``; charset=utf-8``) on any
path; another content type is 415, another method 405 (both plain text); a body above
`max_request_body_size` (10 MiB) is 413 with the JSON-RPC error -32007; JSON-RPC errors are
HTTP 200. A WebSocket takes its ``Authorization`` header from the upgrade request, for every call
on that connection (jsonrpsee PR #1389). An ``Authorization`` value with a byte outside visible
ASCII (and tab) is treated as absent, as `HeaderValue::to_str().ok()` in the worker's HTTP
middleware does (`middlewares/http_middleware.rs@d403b4df`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.omni_sim.clock import SimClock
from agentkeys_kit.omni_sim.config import SimConfig
from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.keystore import public_key_pem
from agentkeys_kit.omni_sim.methods import methods_for
from agentkeys_kit.omni_sim.rpc import RpcDispatcher, encode, failure
from agentkeys_kit.protocol.errors import ErrorEra
from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.identity import email_omni_account

log = logging.getLogger(__name__)

SIM_CONTEXT = web.AppKey("sim_context", SimContext)
DISPATCHER = web.AppKey("dispatcher", RpcDispatcher)
CONFIG = web.AppKey("config", SimConfig)

JSON_CONTENT_TYPES = frozenset(
    {
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=utf-8",
        "application/json-rpc",
        "application/json-rpc;charset=utf-8",
        "application/json-rpc; charset=utf-8",
    }
)
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
_METHOD_NOT_ALLOWED = "Used HTTP Method is not allowed. POST is required\n"
_UNSUPPORTED_CONTENT_TYPE = "Supplied content type is not allowed. Content-Type: application/json is required\n"


def create_app(
    config: SimConfig,
    *,
    clock: SimClock | None = None,
    jwt_key: rsa.RSAPrivateKey | None = None,
) -> web.Application:
    app = web.Application(client_max_size=config.max_request_body_size + 1)
    app[CONFIG] = config

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        # reqwest (default features plus json) sends neither a User-Agent nor an Accept-Encoding.
        skip = ("User-Agent", "Accept-Encoding")
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=skip) as session:
            ctx = SimContext.create(config, session, clock=clock, jwt_key=jwt_key)
            app[SIM_CONTEXT] = ctx
            app[DISPATCHER] = RpcDispatcher(
                ctx,
                methods_for(config.error_era),
                batch_bypasses_auth=config.error_era is not ErrorEra.LEGACY,
            )
            yield

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/_sim/info", sim_info)
    app.router.add_get("/_sim/jwt-public-key", sim_public_key_pem)
    app.router.add_get("/_sim/jwt-public-key.pem", sim_public_key_pem)
    app.router.add_get("/_sim/jwt-public-key.jwk", sim_public_key_jwk)
    app.router.add_get("/_sim/outbox", sim_outbox)
    app.router.add_delete("/_sim/outbox", sim_outbox_clear)
    app.router.add_get("/_sim/callbacks", sim_callbacks)
    app.router.add_delete("/_sim/callbacks", sim_callbacks_clear)
    app.router.add_get("/_sim/clock", sim_clock)
    app.router.add_post("/_sim/clock", sim_clock_move)
    app.router.add_get("/_sim/omni-account", sim_omni_account)
    app.router.add_get("/_sim/user-operations", sim_user_operations)
    app.router.add_delete("/_sim/user-operations", sim_user_operations_clear)
    app.router.add_get("/_sim/signer-wallet", sim_signer_wallet)
    app.router.add_route("*", "/_sim/{tail:.*}", sim_not_found)
    app.router.add_route("*", "/{tail:.*}", rpc_endpoint)
    return app


# --------------------------------------------------------------------------- JSON-RPC endpoint


async def rpc_endpoint(request: web.Request) -> web.StreamResponse:
    if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
        return await rpc_websocket(request)
    if request.method != "POST":
        return web.Response(status=405, text=_METHOD_NOT_ALLOWED)
    if request.headers.get("Content-Type", "").lower() not in JSON_CONTENT_TYPES:
        return web.Response(status=415, text=_UNSUPPORTED_CONTENT_TYPE)
    dispatcher = request.app[DISPATCHER]
    limit = request.app[CONFIG].max_request_body_size
    body = await _read_limited(request, limit)
    if body is None:
        error = request.app[SIM_CONTEXT].errors.oversized_request(limit)
        return web.Response(status=413, body=encode(failure(None, error)), headers=_JSON_HEADERS)
    reply = await dispatcher.handle_body(body, authorization_header(request))
    return web.Response(status=reply.http_status, body=reply.body or b"", headers=_JSON_HEADERS)


def authorization_header(request: web.Request) -> str | None:
    """`headers().get(AUTHORIZATION).and_then(|hv| hv.to_str().ok())`: only visible ASCII (32–126)
    and tab make a readable value; anything else and the header counts as absent."""
    value = request.headers.get("Authorization")
    if value is None or not all(" " <= char <= "~" or char == "\t" for char in value):
        return None
    return value


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def rpc_websocket(request: web.Request) -> web.WebSocketResponse:
    dispatcher = request.app[DISPATCHER]
    limit = request.app[CONFIG].max_request_body_size
    ws = web.WebSocketResponse(max_msg_size=limit + 1)
    await ws.prepare(request)
    authorization = authorization_header(request)
    pending: set[asyncio.Task[None]] = set()

    async def answer(body: bytes) -> None:
        if len(body) > limit:
            error = request.app[SIM_CONTEXT].errors.oversized_request(limit)
            reply: bytes | None = encode(failure(None, error))
        else:
            reply = (await dispatcher.handle_body(body, authorization)).body
        if reply is not None and not ws.closed:
            await ws.send_str(reply.decode("utf-8"))

    async for message in ws:
        if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            data = message.data if isinstance(message.data, bytes) else message.data.encode("utf-8")
            task = asyncio.create_task(answer(data))
            pending.add(task)
            task.add_done_callback(pending.discard)
        elif message.type is aiohttp.WSMsgType.ERROR:
            log.debug("websocket closed with %s", ws.exception())
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return ws


# --------------------------------------------------------------------------- /_sim/ endpoints


def _sim_error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


async def sim_not_found(request: web.Request) -> web.Response:
    return _sim_error(404, "not_found", f"no simulator endpoint {request.method} {request.path}")


async def sim_info(request: web.Request) -> web.Response:
    ctx = request.app[SIM_CONTEXT]
    config = ctx.config
    return web.json_response(
        {
            "simulator": "omni_sim",
            "profile": ctx.profile.name.value,
            "error_era": ctx.errors.era.value,
            "audiences": list(ctx.profile.audiences),
            "methods": request.app[DISPATCHER].method_names,
            "backends": {name.value: api.base_url for name, api in ctx.backends.items()},
            "mailers": {key: mailer.type.value for key, mailer in config.mailers.items()},
            "jwt_key_sha256": _key_fingerprint(ctx.jwt_public_key),
            "oauth2_clients": {
                client: sorted(provider.value for provider in providers)
                for client, providers in sorted(config.oauth2_clients.items())
            },
            "oauth2_token_urls": {provider.value: ep.token_url for provider, ep in config.oauth2_providers.items()},
            "passkey_overrides": {
                client: {"rp_id": pk.rp_id, "allowed_origins": list(pk.allowed_origins)}
                for client, pk in sorted(config.passkey_overrides.items())
            },
            "entry_point": "0x" + config.entry_point_address.hex(),
            "clock": {
                "now": ctx.clock.now(),
                "offset": ctx.clock.offset,
                "frozen": ctx.clock.frozen,
            },
        }
    )


def _key_fingerprint(key: rsa.RSAPublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha256(der).hexdigest()


async def sim_public_key_pem(request: web.Request) -> web.Response:
    ctx = request.app[SIM_CONTEXT]
    return web.Response(text=public_key_pem(ctx.jwt_key), content_type="application/x-pem-file")


async def sim_public_key_jwk(request: web.Request) -> web.Response:
    ctx = request.app[SIM_CONTEXT]
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(ctx.jwt_public_key))
    jwk.update({"alg": "RS256", "use": "sig", "kid": _key_fingerprint(ctx.jwt_public_key)[:16]})
    return web.json_response(jwk)


async def sim_outbox(request: web.Request) -> web.Response:
    mails = request.app[SIM_CONTEXT].outbox.list(request.query.get("to"))
    return web.json_response({"messages": [mail.to_json() for mail in mails]})


async def sim_outbox_clear(request: web.Request) -> web.Response:
    request.app[SIM_CONTEXT].outbox.clear()
    return web.json_response({"cleared": True})


async def sim_callbacks(request: web.Request) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return _sim_error(400, "bad_request", "since must be an integer")
    entries = request.app[SIM_CONTEXT].journal.since(since)
    return web.json_response({"callbacks": [entry.to_json() for entry in entries]})


async def sim_callbacks_clear(request: web.Request) -> web.Response:
    request.app[SIM_CONTEXT].journal.clear()
    return web.json_response({"cleared": True})


async def sim_clock(request: web.Request) -> web.Response:
    clock = request.app[SIM_CONTEXT].clock
    return web.json_response({"now": clock.now(), "offset": clock.offset, "frozen": clock.frozen})


async def sim_clock_move(request: web.Request) -> web.Response:
    clock = request.app[SIM_CONTEXT].clock
    try:
        body = await request.json()
    except ValueError:
        return _sim_error(400, "bad_request", "body must be JSON")
    if not isinstance(body, dict) or not body.keys() <= {"advance", "freeze", "set"} or not body:
        return _sim_error(400, "bad_request", 'expected {"advance": seconds}, {"freeze": unix|null} or {"set": unix}')
    if "set" in body:  # before `advance`, so {"set": t, "advance": s} stands at t + s
        at = body["set"]
        if isinstance(at, bool) or not isinstance(at, int) or at < 0:
            return _sim_error(400, "bad_request", "set must be a unix time")
        clock.set(at)
    if "advance" in body:
        seconds = body["advance"]
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
            return _sim_error(400, "bad_request", "advance must be a non-negative integer")
        clock.advance(seconds)
    if "freeze" in body:
        at = body["freeze"]
        if at is not None and (isinstance(at, bool) or not isinstance(at, int) or at < 0):
            return _sim_error(400, "bad_request", "freeze must be a unix time or null")
        clock.freeze(at)
    return await sim_clock(request)


async def sim_omni_account(request: web.Request) -> web.Response:
    """The e-mail OmniAccount the newest worker no longer serves (`omni_getOmniAccount`)."""
    client_id, email = request.query.get("client_id"), request.query.get("user_email")
    if client_id is None or email is None:
        return _sim_error(400, "bad_request", "query parameters client_id and user_email are required")
    return web.json_response({"omni_account": hex_encode(email_omni_account(client_id, email))})


async def sim_user_operations(request: web.Request) -> web.Response:
    """What the simulated bundler received, signed, with its transaction hash."""
    batches = request.app[SIM_CONTEXT].user_op_bundler.batches
    return web.json_response({"batches": [batch.to_json() for batch in batches]})


async def sim_user_operations_clear(request: web.Request) -> web.Response:
    request.app[SIM_CONTEXT].user_op_bundler.batches.clear()
    return web.json_response({"cleared": True})


async def sim_signer_wallet(request: web.Request) -> web.Response:
    """The simulated signer's EVM wallet for ``omni_account`` (0x + 64 hex) and ``wallet_index``."""
    try:
        account = bytes.fromhex(request.query["omni_account"].removeprefix("0x"))
        index = int(request.query.get("wallet_index", "0"))
    except (KeyError, ValueError):
        return _sim_error(400, "bad_request", "omni_account (0x + 64 hex) and an integer wallet_index are required")
    if len(account) != 32 or not 0 <= index < 2**32:
        return _sim_error(400, "bad_request", "omni_account must be 32 bytes and wallet_index a u32")
    address = request.app[SIM_CONTEXT].user_op_bundler.wallet_address(account, index)
    return web.json_response({"omni_account": hex_encode(account), "wallet_index": index, "address": address})
