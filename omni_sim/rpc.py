"""JSON-RPC 2.0 dispatch with jsonrpsee 0.24's framing rules, and the worker's protected-method
middleware (`middlewares/rpc_middleware.rs`).

Why not jsonrpcserver: its `Request` loses the raw `params` (absent params and string params both
become ``[]``), a JSON object without ``method`` turns into a -32000 "Server error" (KeyError in
`create_request`) where jsonrpsee answers -32600 with the request's id, its error objects carry
``data`` jsonrpsee never sends (method-not-found names the method), its response key order is
``jsonrpc, error, id`` rather than jsonrpsee's ``jsonrpc, id, error``, and it binds
`inspect.signature` on every call. Reproducing jsonrpsee needs the raw request, so dispatch is
kept here, thin.

jsonrpsee rules reproduced (server 0.24, `transport/http.rs` and `server.rs`): the first
non-whitespace byte decides single (``{``) or batch (``[``), anything else is -32700 with a null
id; a single value that is not a request but carries a valid ``id`` gets -32600 with that id,
otherwise -32700 with a null id; notifications get no answer; an empty batch is -32600; ids are
null, u64 or strings; ``jsonrpc`` must be exactly ``"2.0"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from omni_sim.context import SimContext
from protocol.errors import RpcError
from protocol.tee_jwt import (
    AUTH_TOKEN_ACCESS_TYPE,
    AUTH_TOKEN_ID_TYPE,
    TokenRejected,
    verify_auth_token,
)

log = logging.getLogger(__name__)

#: `PROTECTED_METHODS` (era B, `rpc-server/src/methods/mod.rs`).
PROTECTED_METHODS: Final = frozenset(
    {
        "omni_testProtectedMethod",
        "omni_addWallet",
        "omni_notifyLimitOrderResult",
        "omni_signLimitOrder",
        "omni_submitSwapOrder",
        "omni_submitUserOp",
        "omni_transferWithdraw",
        "omni_exportWallet",
    }
)
#: `ACCESS_TOKEN_PROTECTED_METHODS`; every other protected method wants the id token.
ACCESS_TOKEN_METHODS: Final = frozenset({"omni_notifyLimitOrderResult", "omni_signLimitOrder"})

_U64_MAX: Final = 2**64 - 1


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: `params` member missing from the request (jsonrpsee parses it as ``null``).
ABSENT: Final[Any] = _Absent()


@dataclass(frozen=True, slots=True)
class RpcExtensions:
    """What the middleware inserts for a verified token: ``sub`` and ``aud``."""

    sender: str
    client_id: str


Handler = Callable[[SimContext, Any, RpcExtensions | None], Awaitable[Any]]


def token_type_for_method(method: str) -> str:
    return AUTH_TOKEN_ACCESS_TYPE if method in ACCESS_TOKEN_METHODS else AUTH_TOKEN_ID_TYPE


def bearer_token(header: str) -> str:
    """`trim_start_matches("Bearer ").trim()`: every leading ``Bearer `` goes, then whitespace."""
    while header.startswith("Bearer "):
        header = header[7:]
    return header.strip()


def _valid_id(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def success(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def failure(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}


class RpcDispatcher:
    def __init__(self, ctx: SimContext, methods: Mapping[str, Handler]) -> None:
        self._ctx = ctx
        self._methods = dict(methods)

    @property
    def method_names(self) -> list[str]:
        return sorted(self._methods)

    async def handle_body(self, body: bytes, authorization: str | None) -> bytes | None:
        """Answer one HTTP body or WebSocket message; ``None`` means no response is due."""
        payload = self._parse(body)
        if payload is None:
            return encode(failure(None, self._ctx.errors.parse_error()))
        if isinstance(payload, list):
            if not payload:
                return encode(failure(None, self._ctx.errors.invalid_request()))
            answers = await asyncio.gather(
                *(self.handle_value(item, authorization) for item in payload)
            )
            batch = [answer for answer in answers if answer is not None]
            return encode(batch) if batch else None
        answer = await self.handle_value(payload, authorization)
        return None if answer is None else encode(answer)

    def _parse(self, body: bytes) -> Any:
        stripped = body.lstrip(b" \t\r\n")
        if not stripped or stripped[:1] not in (b"{", b"["):
            return None
        try:
            text = body.decode("utf-8")
            value = json.loads(text, parse_constant=_reject_constant)
            if "\\u" in text and ("\\ud" in text.lower()):
                encode(value)  # serde_json refuses lone surrogates; Python would accept them
        except (ValueError, UnicodeError, RecursionError):
            return None
        return value

    async def handle_value(self, request: Any, authorization: str | None) -> dict[str, Any] | None:
        if not isinstance(request, dict):
            return failure(None, self._ctx.errors.parse_error())
        method = request.get("method")
        has_id = "id" in request and _valid_id(request["id"])
        well_formed = request.get("jsonrpc") == "2.0" and isinstance(method, str)
        if well_formed and "id" not in request:
            return None  # a notification: jsonrpsee does not answer it
        if not (well_formed and has_id):
            if has_id:
                return failure(request["id"], self._ctx.errors.invalid_request())
            return failure(None, self._ctx.errors.parse_error())
        assert isinstance(method, str)
        request_id = request["id"]
        try:
            result = await self.call(method, request.get("params", ABSENT), authorization)
        except RpcError as error:
            return failure(request_id, error)
        return success(request_id, result)

    async def call(self, method: str, params: Any, authorization: str | None) -> Any:
        """The RPC middleware, then the method; raises `RpcError` with the worker's object."""
        extensions = None
        if method in PROTECTED_METHODS:
            extensions = self._authenticate(method, authorization)
        handler = self._methods.get(method)
        if handler is None:
            raise self._ctx.errors.method_not_found()
        try:
            return await handler(self._ctx, params, extensions)
        except RpcError:
            raise
        except Exception:
            log.exception("method %s failed unexpectedly", method)
            raise RpcError(-32603, "Internal error") from None

    def _authenticate(self, method: str, authorization: str | None) -> RpcExtensions:
        if authorization is None:
            raise self._ctx.errors.missing_authorization()
        ctx = self._ctx
        try:
            claims = verify_auth_token(
                bearer_token(authorization),
                ctx.jwt_public_key,
                expected_type=token_type_for_method(method),
                audiences=ctx.profile.audiences,
                now=ctx.clock.now(),
            )
        except TokenRejected as exc:
            log.debug("protected method %s: token refused (%s)", method, exc)
            raise ctx.errors.authentication_failed() from None
        return RpcExtensions(sender=claims.sub, client_id=claims.aud)
