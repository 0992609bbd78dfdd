"""JSON-RPC 2.0 dispatch with jsonrpsee's framing rules, and the worker's protected-method
middleware (`middlewares/rpc_middleware.rs@677675c8`).

Batches follow the jsonrpsee of each era. The newest worker uses jsonrpsee 0.26
(`Cargo.toml@701b0755`), whose `RpcService::batch` runs the entries one after another through its
*own* `call`, and whose `AuthRpcService::batch` only forwards the batch: the protected-method check
never runs inside a batch, so a batched `omni_addWallet` finds no `RpcExtensions` and answers
-32002 "Invalid rpc extension" whatever the Authorization header says. Era A (jsonrpsee 0.24, the
`legacy` era) authenticated every call, batched or not; the simulator keeps its former concurrent
batch handling there.

Why not jsonrpcserver: its `Request` loses the raw `params` (absent params and string params both
become ``[]``), a JSON object without ``method`` turns into a -32000 "Server error" (KeyError in
`create_request`) where jsonrpsee answers -32600 with the request's id, its error objects carry
``data`` jsonrpsee never sends (method-not-found names the method), its response key order is
``jsonrpc, error, id`` rather than jsonrpsee's ``jsonrpc, id, error``, and it binds
`inspect.signature` on every call. Reproducing jsonrpsee needs the raw request, so dispatch is
kept here, thin.

jsonrpsee rules reproduced (server 0.24/0.26, `transport/http.rs` and `server.rs`): the first
non-whitespace byte decides single (``{``) or batch (``[``), anything else is -32700 with a null
id; a single value that is not a request but carries a valid ``id`` gets -32600 with that id,
otherwise -32700 with a null id; notifications get no answer; an empty batch is -32600; ids are
null, u64 or strings; ``jsonrpc`` must be exactly ``"2.0"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.protocol.errors import RpcError
from agentkeys_kit.protocol.tee_jwt import (
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


class DuplicateKeyDict(dict[str, Any]):
    """A JSON object that repeated some keys (Python keeps the last; serde refuses a repeated
    field of a struct, and ignores repeats of fields it does not know)."""

    duplicates: frozenset[str] = frozenset()


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    counts = Counter(key for key, _ in pairs)
    marked = DuplicateKeyDict(obj)
    marked.duplicates = frozenset(key for key, count in counts.items() if count > 1)
    return marked


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_object_pairs, parse_constant=_reject_constant)


def has_surrogates(text: str) -> bool:
    """A lone surrogate: a ``\\uD800``-style escape, or an invalid UTF-8 byte kept by
    ``surrogateescape``. serde_json refuses both wherever it builds a `str`."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _contains_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return has_surrogates(value)
    if isinstance(value, list):
        return any(_contains_surrogates(item) for item in value)
    if isinstance(value, dict):
        return any(has_surrogates(key) or _contains_surrogates(item) for key, item in value.items())
    return False


def _valid_id(value: Any) -> bool:
    """jsonrpsee `Id`: null, a u64, or a string."""
    if value is None:
        return True
    if isinstance(value, str):
        return not has_surrogates(value)
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def success(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def failure(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}


@dataclass(frozen=True, slots=True)
class RpcReply:
    """What to send back: `body` (``None``: nothing is due) and the HTTP status to use."""

    body: bytes | None
    http_status: int = 200


@dataclass(frozen=True, slots=True)
class _Body:
    value: Any
    raw_utf8_errors: bool  # the body had bytes that are not UTF-8 (kept as surrogates)


class RpcDispatcher:
    def __init__(self, ctx: SimContext, methods: Mapping[str, Handler], *, batch_bypasses_auth: bool = True) -> None:
        self._ctx = ctx
        self._methods = dict(methods)
        #: jsonrpsee 0.26: batch entries skip the middleware and run sequentially.
        self._batch_bypasses_auth = batch_bypasses_auth

    @property
    def method_names(self) -> list[str]:
        return sorted(self._methods)

    async def handle_body(self, body: bytes, authorization: str | None) -> RpcReply:
        """Answer one HTTP body or WebSocket message the way jsonrpsee frames it."""
        parse_error = encode(failure(None, self._ctx.errors.parse_error()))
        first = body.lstrip(b" \t\r\n")[:1]
        if first not in (b"{", b"["):
            return RpcReply(parse_error, 400)  # jsonrpsee `read_body`: malformed, HTTP 400
        parsed = self._parse(body)
        if parsed is None:
            return RpcReply(parse_error)
        if isinstance(parsed.value, list):
            if not parsed.value:
                return RpcReply(encode(failure(None, self._ctx.errors.invalid_request())))
            answers = await self._run_batch(parsed.value, authorization, parsed.raw_utf8_errors)
            batch = [answer for answer in answers if answer is not None]
            return RpcReply(encode(batch) if batch else None)
        if not isinstance(parsed.value, dict):
            return RpcReply(parse_error)
        answer = await self.handle_value(parsed.value, authorization, parsed.raw_utf8_errors)
        return RpcReply(None if answer is None else encode(answer))

    async def _run_batch(
        self, items: list[Any], authorization: str | None, raw_utf8_errors: bool
    ) -> list[dict[str, Any] | None]:
        if not self._batch_bypasses_auth:
            return list(
                await asyncio.gather(
                    *(self.handle_value(item, authorization, raw_utf8_errors, batch=True) for item in items)
                )
            )
        # jsonrpsee 0.26 `RpcService::batch`: `for … { service.call(req).await }`, no middleware.
        return [await self.handle_value(item, None, raw_utf8_errors, batch=True, skip_auth=True) for item in items]

    @staticmethod
    def _parse(body: bytes) -> _Body | None:
        try:
            text = body.decode("utf-8")
            raw_errors = False
        except UnicodeDecodeError:
            text = body.decode("utf-8", errors="surrogateescape")
            raw_errors = True
        try:
            return _Body(_DECODER.decode(text), raw_errors)
        except (ValueError, RecursionError):
            return None

    def _is_call(self, request: Any, raw_utf8_errors: bool, *, with_id: bool) -> bool:
        """jsonrpsee's `Request` (with an id) or `Notification` (id ignored) deserializes."""
        if not isinstance(request, dict):
            return False
        duplicates = request.duplicates if isinstance(request, DuplicateKeyDict) else frozenset()
        fields = {"jsonrpc", "method", "params", "id"} if with_id else {"jsonrpc", "method", "params"}
        if duplicates & fields:
            return False
        method = request.get("method")
        if request.get("jsonrpc") != "2.0" or not isinstance(method, str) or has_surrogates(method):
            return False
        if raw_utf8_errors and _contains_surrogates(request.get("params")):
            return False  # params are kept raw, but raw text must still be UTF-8
        return not with_id or ("id" in request and _valid_id(request["id"]))

    async def handle_value(
        self,
        request: Any,
        authorization: str | None,
        raw_utf8_errors: bool = False,
        *,
        batch: bool = False,
        skip_auth: bool = False,
    ) -> dict[str, Any] | None:
        if not self._is_call(request, raw_utf8_errors, with_id=True):
            if self._is_call(request, raw_utf8_errors, with_id=False):
                return None  # a notification: jsonrpsee does not answer it
            duplicates = request.duplicates if isinstance(request, DuplicateKeyDict) else frozenset()
            if isinstance(request, dict) and "id" in request and "id" not in duplicates and _valid_id(request["id"]):
                return failure(request["id"], self._ctx.errors.invalid_request())
            if batch:  # a batch element that is not even `{ "id": … }` is an invalid request
                return failure(None, self._ctx.errors.invalid_request())
            return failure(None, self._ctx.errors.parse_error())
        request_id = request["id"]
        try:
            result = await self.call(
                request["method"], request.get("params", ABSENT), authorization, skip_auth=skip_auth
            )
        except RpcError as error:
            return failure(request_id, error)
        return success(request_id, result)

    async def call(self, method: str, params: Any, authorization: str | None, *, skip_auth: bool = False) -> Any:
        """The RPC middleware, then the method; raises `RpcError` with the worker's object."""
        extensions = None
        if method in PROTECTED_METHODS and not skip_auth:
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
                worker_exp_rules=True,
            )
        except TokenRejected as exc:
            log.debug("protected method %s: token refused (%s)", method, exc)
            raise ctx.errors.authentication_failed() from None
        return RpcExtensions(sender=claims.sub, client_id=claims.aud)
