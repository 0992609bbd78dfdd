"""The callback receiver: the harness plays the backend the worker calls back.

The worker under test is configured with the receiver's URLs (``/pumpx/``, ``/agentkeys/``; the
wildmeta API's absolute path lands at the root). The receiver also answers every operation at its
root (``/v3/account/…``): where a base URL lacks its trailing slash, or is the root itself, the
worker's `Url::join` lands there. Such a call counts as the API `root_api` names (the case says
which API it pointed at the root), else as API ``root``. While a step runs, the receiver holds that
step's callback expectations: each incoming call is matched to the first open expectation for
its API and operation, answered with the scripted reply (an envelope, a failure status, a raw
body, a delay, a dropped connection, or *forwarded to the broker*, which links the three legs),
and recorded. A call no expectation asked for is recorded as unexpected and fails the case.

The other parties the worker calls — the SendGrid stand-in (API ``sendgrid``, operation
``mail_send``) and the fake Google's token endpoint (API ``google``, operation ``token``) — ask the
receiver first (`intercept`): while a step holds an expectation for that API and operation, the
call is recorded and answered as scripted (a failure status, a raw body, a delay, a dropped
connection); otherwise the party answers it as usual and nothing is recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from agentkeys_kit.omni_sim.server import ServedApp

OPERATIONS = ("post_heima_login", "add_wallet", "get_account_user_id", "user_connect", "verify_google_code")

DEFAULT_REPLIES: dict[str, Any] = {
    "post_heima_login": {"code": 10000, "message": "OK", "data": {"user_id": None}},
    "add_wallet": {"code": 10000, "message": "OK", "data": {}},
    "get_account_user_id": {"code": 10000, "message": "OK", "data": {"userId": "mock_user_123"}},
    "user_connect": {"code": 10000, "message": "OK", "data": {"userId": "mock_user_123", "googleAuthCheck": True}},
    "verify_google_code": {"code": 10000, "message": "OK", "data": {}},
    "check_hyper_agent_address": {"code": 200, "message": "Success", "data": {"isBound": True}},
}

BROKER_PATHS = {
    "post_heima_login": "v3/account/post_heima_login",
    "add_wallet": "v3/account/add_wallet",
    "get_account_user_id": "v3/account/get_account_user_id",
    "user_connect": "v3/account/user_connect",
    "verify_google_code": "v3/account/verify_google_code",
    "check_hyper_agent_address": "v1/account/check_hyper_agent_address",
}


Interceptor = Callable[[str, str, web.Request], Awaitable[web.StreamResponse | None]]


def intercepting(owner: Any, api: str, op: str, path: str) -> Any:
    """aiohttp middleware for a party: `owner.interceptor` (the receiver's `intercept`, when set)
    may answer a call to `path` instead of the party."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        interceptor: Interceptor | None = getattr(owner, "interceptor", None)
        if interceptor is not None and request.path == path:
            scripted = await interceptor(api, op, request)
            if scripted is not None:
                return scripted
        response: web.StreamResponse = await handler(request)
        return response

    return middleware


class Headers(dict[str, str]):
    """Headers as received, looked up case-insensitively (hyper sends ``x-language``, aiohttp
    ``X-Language``: HTTP header names are case-insensitive, expectations should be too)."""

    def __init__(self, items: dict[str, str]) -> None:
        super().__init__(items)
        self._folded = {key.lower(): key for key in items}

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._folded

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(self._folded.get(key.lower(), key))

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (self.get would recurse)


@dataclass(slots=True)
class ObservedCallback:
    """One call the worker made, and what the harness answered."""

    api: str
    op: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_text: str
    at: float
    raw_query: str = ""  # the query string as sent, percent-encoding included
    expectation: int | None = None  # index of the expectation that took it
    reply_status: int | None = None
    reply_body: Any = None
    forwarded_to: str | None = None
    dropped: bool = False

    @property
    def body(self) -> Any:
        if not self.body_text:
            return None
        try:
            return json.loads(self.body_text)
        except ValueError:
            return self.body_text

    def request_view(self) -> dict[str, Any]:
        """What expectations match against (``request.*``)."""
        return {
            "api": self.api,
            "op": self.op,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "raw_query": self.raw_query,
            "headers": Headers(self.headers),
            "body": self.body,
            "body_text": self.body_text,
        }

    def response_view(self) -> dict[str, Any]:
        return {"status": self.reply_status, "body": self.reply_body}

    def to_json(self) -> dict[str, Any]:
        return {
            **self.request_view(),
            "reply": self.response_view(),
            "forwarded_to": self.forwarded_to,
            "dropped": self.dropped,
            "expectation": self.expectation,
        }


@dataclass(slots=True)
class CallbackScript:
    """An open expectation: which calls it takes and how to answer them."""

    api: str
    op: str
    times: int
    reply: dict[str, Any]
    taken: list[ObservedCallback] = field(default_factory=list)

    def accepts(self, api: str, op: str) -> bool:
        return self.op == op and self.api in ("any", api) and len(self.taken) < max(self.times, 1)


class CallbackReceiver:
    """Binds `host`:`port` (0: a free port); the worker reaches it at `advertise` (default `host`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, advertise: str | None = None) -> None:
        self.host = host
        self.port = port
        self.advertise = advertise or host
        self.broker_url: str | None = None
        #: the API whose calls land at the receiver's root in the running case (`base_urls:`)
        self.root_api: str | None = None
        self.scripts: list[CallbackScript] = []
        self.observed: list[ObservedCallback] = []
        self._served = ServedApp(host, port)
        self._session: aiohttp.ClientSession | None = None
        self._arrivals = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.advertise}:{self.port}/"

    def api_url(self, api: str) -> str:
        return f"{self.url}{api}/"

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        for api in ("pumpx", "agentkeys"):
            for op in OPERATIONS:
                app.router.add_route("*", f"/{api}/v3/account/{op}", self._handler(api, op))
        for op in OPERATIONS:
            app.router.add_route("*", f"/v3/account/{op}", self._handler(None, op))
        app.router.add_route(
            "*", "/v1/account/check_hyper_agent_address", self._handler(None, "check_hyper_agent_address")
        )
        # The agentkeys patch joins the path relative to OE_AGENTKEYS_API_BASE_URL, keeping /agentkeys/.
        app.router.add_route(
            "*",
            "/agentkeys/v1/account/check_hyper_agent_address",
            self._handler("agentkeys", "check_hyper_agent_address"),
        )
        app.router.add_route("*", "/{tail:.*}", self._handler("unknown", "unknown"))
        self.port = await self._served.start(app)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._served.close()

    def open_window(self, scripts: list[CallbackScript]) -> None:
        self.scripts = scripts

    def close_window(self) -> list[CallbackScript]:
        scripts, self.scripts = self.scripts, []
        return scripts

    async def wait_for(self, count: int, deadline: float) -> None:
        """Wait until `count` calls have been observed or `deadline` (monotonic) passes."""
        while len(self.observed) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrivals.clear()
            try:
                await asyncio.wait_for(self._arrivals.wait(), remaining)
            except TimeoutError:
                return

    async def intercept(self, api: str, op: str, request: web.Request) -> web.StreamResponse | None:
        """A call to another party: answered as scripted when an open expectation takes it."""
        if not any(script.accepts(api, op) for script in self.scripts):
            return None
        response: web.StreamResponse = await self._handler(api, op)(request)
        return response

    def _at_root(self, op: str) -> str:
        if op == "check_hyper_agent_address":  # the wildmeta API's absolute path, unless agentkeys is at the root
            return "agentkeys" if self.root_api == "agentkeys" else "wildmeta"
        return self.root_api or "root"

    def _handler(self, fixed_api: str | None, op: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            api = fixed_api if fixed_api is not None else self._at_root(op)
            observed = ObservedCallback(
                api=api,
                op=op,
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body_text=(await request.read()).decode("utf-8", errors="replace"),
                at=time.time(),
                raw_query=request.raw_path.partition("?")[2],
            )
            self.observed.append(observed)
            self._arrivals.set()
            script_index = next((i for i, s in enumerate(self.scripts) if s.accepts(api, op)), None)
            if script_index is None:
                observed.reply_status = 404
                observed.reply_body = {
                    "code": 40400,
                    "message": "the conformance harness expected no such call",
                    "data": {},
                }
                return web.json_response(observed.reply_body, status=404)
            script = self.scripts[script_index]
            script.taken.append(observed)
            observed.expectation = script_index
            return await self._reply(request, observed, script.reply)

        return handle

    async def _reply(
        self, request: web.Request, observed: ObservedCallback, reply: dict[str, Any]
    ) -> web.StreamResponse:
        if reply.get("delay"):
            await asyncio.sleep(float(reply["delay"]))
        if reply.get("drop"):
            observed.dropped = True
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        if reply.get("forward") == "broker":
            return await self._forward(observed)
        status = int(reply.get("status", 200))
        observed.reply_status = status
        if "raw" in reply:
            observed.reply_body = str(reply["raw"])
            return web.Response(status=status, text=str(reply["raw"]), content_type="application/json")
        body = reply["json"] if "json" in reply else DEFAULT_REPLIES.get(observed.op, {})
        observed.reply_body = body
        return web.json_response(body, status=status)

    async def _forward(self, observed: ObservedCallback) -> web.StreamResponse:
        if self.broker_url is None or self._session is None:
            observed.reply_status = 502
            observed.reply_body = {"code": 50200, "message": "no broker to forward to", "data": {}}
            return web.json_response(observed.reply_body, status=502)
        url = self.broker_url + BROKER_PATHS[observed.op]
        headers = {
            k: v for k, v in observed.headers.items() if k.lower() in ("authorization", "content-type", "x-language")
        }
        observed.forwarded_to = url
        async with self._session.request(
            observed.method, url, params=observed.query, headers=headers, data=observed.body_text.encode()
        ) as response:
            raw = await response.read()
        observed.reply_status = response.status
        try:
            observed.reply_body = json.loads(raw)
        except ValueError:
            observed.reply_body = raw.decode("utf-8", errors="replace")
        return web.Response(status=response.status, body=raw, content_type=response.content_type)
