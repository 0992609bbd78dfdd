"""Outbound callbacks: the worker's `PumpxApi` client, pointed at the pumpx API or (patch
profile) the agentkeys API, with a journal of every exchange for `/_sim/callbacks`.

Fidelity notes (spec §8):

* reqwest default header ``X-Language: en``, overridden per call by `language` exactly as given
  (`language.unwrap_or("en")`: an empty string is sent as an empty header); bearer via
  `bearer_auth`; `add_wallet` has no body: ``Content-Length: 0`` and no ``Content-Type``
  (`clients/pumpx/.../add_wallet.rs`);
* `get_account_user_id` sends its query as serde_urlencoded writes it (``@`` → ``%40``, space → ``+``),
  and the journal keeps that URL, query included;
* `check_hyper_agent_address` is the wildmeta client (`wildmeta-api/src/lib.rs@323d6f4a`): no
  default headers (no ``X-Language``, no Authorization), JSON body, `error_for_status`, and an
  absolute path that replaces the base URL's path; the agentkeys patch sends it to the agentkeys
  API relative to its base URL;
* `post_heima_login`, `add_wallet` and `user_connect` call `error_for_status`; `get_account_user_id`
  only decodes JSON, so a 500 with a decodable envelope is accepted;
* the worker's client has no timeout; the simulator applies `callback_timeout` so a test cannot
  hang, and reports it as a transport error;
* the error reason is the Rust Debug of the client error in the worker; the simulator renders a
  reqwest-like ``reqwest::Error { kind: …, url: … }`` string whose *kind* is faithful and whose
  detail is not byte-exact.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl

from agentkeys_kit.protocol.callbacks import (
    ADD_WALLET_DATA,
    ADD_WALLET_PATH,
    CHECK_HYPER_AGENT_ADDRESS_DATA,
    CHECK_HYPER_AGENT_ADDRESS_PATH,
    DEFAULT_LANGUAGE,
    GET_ACCOUNT_USER_ID_DATA,
    GET_ACCOUNT_USER_ID_PATH,
    POST_HEIMA_LOGIN_DATA,
    POST_HEIMA_LOGIN_PATH,
    USER_CONNECT_DATA,
    USER_CONNECT_PATH,
    ApiResponse,
    check_hyper_agent_address_body,
    decode_api_response,
    form_urlencode,
    join_url,
)
from agentkeys_kit.protocol.serde_rules import Field, SerdeError


class CallbackFailed(Exception):
    """Transport error, non-2xx status (where checked) or undecodable reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class JournalEntry:
    seq: int
    backend: str
    operation: str
    method: str
    url: str
    request_headers: dict[str, str]
    request_body: Any
    started_at: float
    status: int | None = None
    response_body: Any = None
    error: str | None = None
    duration_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "backend": self.backend,
            "operation": self.operation,
            "method": self.method,
            "url": self.url,
            "request_headers": self.request_headers,
            "request_body": self.request_body,
            "started_at": self.started_at,
            "status": self.status,
            "response_body": self.response_body,
            "error": self.error,
            "duration_ms": round(self.duration_ms, 3),
        }


@dataclass(slots=True)
class CallbackJournal:
    limit: int = 10_000
    entries: list[JournalEntry] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def open(self, **kwargs: Any) -> JournalEntry:
        entry = JournalEntry(seq=next(self._seq), started_at=time.time(), **kwargs)
        self.entries.append(entry)
        if len(self.entries) > self.limit:
            del self.entries[: len(self.entries) - self.limit]
        return entry

    def since(self, seq: int = 0) -> list[JournalEntry]:
        return [entry for entry in self.entries if entry.seq > seq]

    def clear(self) -> None:
        self.entries.clear()


def reserialize(response: ApiResponse, data_fields: tuple[Field, ...]) -> dict[str, Any]:
    """What the worker puts in `backend_response`: serde re-serialises the decoded struct, so
    unknown `data` keys vanish and absent `Option`s become ``null``."""
    data = {spec.name: response.data.get(spec.name) for spec in data_fields}
    return {"code": response.code, "message": response.message, "data": data}


class BackendApi:
    """One backend (`pumpx` or `agentkeys`) the worker calls back."""

    def __init__(
        self,
        name: str,
        base_url: str,
        session: aiohttp.ClientSession,
        journal: CallbackJournal,
        timeout: float,
        *,
        check_hyper_agent_address_path: str = CHECK_HYPER_AGENT_ADDRESS_PATH,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.check_hyper_agent_address_path = check_hyper_agent_address_path
        self._session = session
        self._journal = journal
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def post_heima_login(self, access_token: str, body: dict[str, Any]) -> ApiResponse:
        return await self._call(
            "post_heima_login",
            "POST",
            POST_HEIMA_LOGIN_PATH,
            POST_HEIMA_LOGIN_DATA,
            token=access_token,
            json_body=body,
        )

    async def add_wallet(self, access_token: str) -> ApiResponse:
        return await self._call("add_wallet", "POST", ADD_WALLET_PATH, ADD_WALLET_DATA, token=access_token)

    async def get_account_user_id(self, email: str) -> ApiResponse:
        return await self._call(
            "get_account_user_id",
            "GET",
            GET_ACCOUNT_USER_ID_PATH,
            GET_ACCOUNT_USER_ID_DATA,
            query=form_urlencode([("email", email)]),
            check_status=False,
        )

    async def check_hyper_agent_address(self, main_address: str, agent_address: str, login_type: int) -> ApiResponse:
        """`verify_hyperliquid_link_impl` (`verify_hyperliquid_link.rs@20a922b2`)."""
        return await self._call(
            "check_hyper_agent_address",
            "POST",
            self.check_hyper_agent_address_path,
            CHECK_HYPER_AGENT_ADDRESS_DATA,
            json_body=check_hyper_agent_address_body(main_address, agent_address, login_type),
            x_language=False,
        )

    async def user_connect(self, access_token: str, body: dict[str, Any], language: str | None) -> ApiResponse:
        return await self._call(
            "user_connect",
            "POST",
            USER_CONNECT_PATH,
            USER_CONNECT_DATA,
            token=access_token,
            json_body=body,
            language=language,
        )

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        data_fields: tuple[Field, ...],
        *,
        token: str | None = None,
        json_body: Any = None,
        query: str | None = None,
        language: str | None = None,
        check_status: bool = True,
        x_language: bool = True,
    ) -> ApiResponse:
        url = join_url(self.base_url, path)
        if query is not None:
            url = f"{url}?{query}"  # already encoded as reqwest encodes it
        headers = {"Accept": "*/*"}  # reqwest's default header
        if x_language:
            headers["X-Language"] = DEFAULT_LANGUAGE if language is None else language
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        payload: bytes | None = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            payload = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        elif method == "POST":
            headers["Content-Length"] = "0"  # `.header("Content-Length", 0)`, no body, no Content-Type
        entry = self._journal.open(
            backend=self.name,
            operation=operation,
            method=method,
            url=url,
            request_headers=dict(headers),
            request_body=json_body,
        )
        started = time.perf_counter()
        try:
            return await self._exchange(entry, method, url, headers, payload, data_fields, check_status)
        finally:
            entry.duration_ms = (time.perf_counter() - started) * 1000

    async def _exchange(
        self,
        entry: JournalEntry,
        method: str,
        url: str,
        headers: dict[str, str],
        payload: bytes | None,
        data_fields: tuple[Field, ...],
        check_status: bool,
    ) -> ApiResponse:
        try:
            async with self._session.request(
                method,
                yarl.URL(url, encoded=True),
                headers=headers,
                data=payload,
                timeout=self._timeout,
                allow_redirects=True,
                # aiohttp would add `Content-Type: application/octet-stream` to a bodiless POST
                skip_auto_headers=("Content-Type",) if payload is None else (),
            ) as response:
                entry.status = response.status
                raw = await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            entry.error = _reqwest_debug("Request", url, repr(exc))
            raise CallbackFailed(entry.error) from exc
        entry.response_body = _maybe_json(raw)
        if check_status and not 200 <= response.status < 300:
            entry.error = f"reqwest::Error {{ kind: Status({response.status}), url: {json.dumps(url)} }}"
            raise CallbackFailed(entry.error)
        try:
            body = json.loads(raw)
            return decode_api_response(body, data_fields, f"{entry.operation} data")
        except (ValueError, SerdeError) as exc:
            entry.error = f'reqwest::Error {{ kind: Decode, source: Error("{exc}") }}'
            raise CallbackFailed(entry.error) from exc


def _reqwest_debug(kind: str, url: str, source: str) -> str:
    return f"reqwest::Error {{ kind: {kind}, url: {json.dumps(url)}, source: {source} }}"


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")
