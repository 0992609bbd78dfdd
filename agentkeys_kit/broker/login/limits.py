"""What the e-mail and Google login endpoints share: rate limits kept in the database, and the
wrapper that audits each refusal (within `broker/audit.py`'s budget) and answers in the envelope.

A rate limit is a fixed window counted in `rate_limit_buckets` (migration 8), so every replica
on one database counts against the same budget. The client address is the TCP peer (an IPv6
peer counts by its /64, as the refusal audit does): the TCP peer, or behind a reverse proxy of
`BROKER_TRUSTED_PROXY_CIDRS` the client its `X-Forwarded-For` names (`http.client_address`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from agentkeys_kit.broker.audit import source_of
from agentkeys_kit.broker.callbacks import audit_refusal, refuse_unstorable
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.http import client_address
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import login_state

LoginHandler = Callable[[web.Request, BrokerState], Awaitable[web.Response]]
Handler = Callable[[web.Request], Awaitable[web.Response]]


def rate_limited(limit_name: str, retry_after: int) -> BrokerError:
    error = BrokerError(
        429,
        42900,
        "rate_limited",
        f"too many requests for this {limit_name}; retry in {retry_after} s",
        limit=limit_name,
        retry_after_seconds=retry_after,
    )
    return error


def bucket_name(kind: str, value: str) -> str:
    """A bucket's key: the limit's name and a hash of what it limits (no address in clear)."""
    return f"{kind}:{hashlib.sha256(value.encode('utf-8')).hexdigest()[:32]}"


def client_source(request: web.Request) -> str:
    return source_of(client_address(request))


async def charge(state: BrokerState, limit_name: str, bucket: str, limit: int, window: int) -> None:
    """Count one hit; 429 ``rate_limited`` (with ``Retry-After``) beyond `limit` per window."""
    now = state.now()
    hits, window_end = await state.db.run(login_state.hit_bucket, bucket, window, now)
    if hits > limit:
        raise rate_limited(limit_name, max(1, window_end - now))


def audited(event: str, handler: Handler) -> Handler:
    """Wrap an endpoint: a refusal is audited (within the refusal budget), then answered as its
    envelope, a 429 with ``Retry-After``."""

    async def handle(request: web.Request) -> web.Response:
        try:
            return await refuse_unstorable(handler(request))
        except BrokerError as error:
            await audit_refusal(request.app[STATE], event, error, request)
            response = error.response()
            if error.status == 429 and "retry_after_seconds" in error.details:
                response.headers["Retry-After"] = str(error.details["retry_after_seconds"])
            return response

    handle.__name__ = handler.__name__
    return handle


def login_endpoint(event: str) -> Callable[[LoginHandler], Handler]:
    """`audited`, for a login handler that is given the broker's state."""

    def decorate(handler: LoginHandler) -> Handler:
        async def with_state(request: web.Request) -> web.Response:
            return await handler(request, request.app[STATE])

        with_state.__name__ = handler.__name__
        return audited(event, with_state)

    return decorate
