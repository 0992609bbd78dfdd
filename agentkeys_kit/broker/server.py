"""Serving the broker: aiohttp's server with its limits set, plus what aiohttp does not offer.

From aiohttp (handler arguments of `web.Server`): request line and header sizes (`max_line_size`,
`max_field_size`, `max_headers`), idle keep-alive timeout, bounded lingering on an unread body,
no transparent decompression (`auto_decompress=False`: a body is read as sent, see `http.read_body`),
a 16 KiB read buffer.

Written here, because aiohttp has no setting for them (its `RequestHandler` only has a keep-alive
timer, which a client defeats by sending a header byte now and then):

* **a connection cap** (`BROKER_MAX_CONNECTIONS`, lowered to fit the open-file limit, which is
  raised to its hard limit at start): a new connection beyond the cap first displaces the oldest
  connection that is waiting on its client (idle, still sending headers, or sending a body), so
  slow or idle clients cannot lock others out; if every connection is running a handler, the
  new one gets a 503 ``too_many_connections`` envelope and is closed;
* **a header deadline** (`BROKER_HEADER_TIMEOUT_SECONDS`, each connection's at a random 80–100 %
  of it) from the connection's start or the first byte of each further request: a slowloris
  client gets a 408 envelope and is closed;
* **the envelope for aiohttp's own refusals**: `RequestHandler.handle_error` answers a malformed
  request in plain text and logs it with a traceback and the offending line (a bearer included);
  here it is the JSON envelope naming only the parser's rule, and one access-log line;
* **one line for "accept() out of resources"**, at most every 10 s, instead of asyncio's traceback
  per attempt;
* **memory given back after a flood**: a held body costs about 90 KB until its deadline; once
  the connections fall to half their peak, cyclic garbage is collected and glibc's free heap
  returned (`give_back_freed_memory`), so the RSS does not stay at the flood's peak.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import logging
import random
import resource
import signal
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.config import BrokerConfig
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.http import MAX_BODY
from agentkeys_kit.broker.observability import METRICS, AccessLog, BrokerMetrics, fields

log = logging.getLogger("agentkeys_kit.broker.server")

#: File descriptors kept for the database, log files and listening sockets beyond connections.
FD_RESERVE = 64
#: The listen backlog at most. asyncio accepts up to the backlog's worth of sockets per loop turn,
#: and a socket the cap refuses or displaces is closed about three turns later (transport, then
#: `connection_made`, then `connection_lost`): the cap leaves three backlogs of descriptors free,
#: else accept() fails with EMFILE and asyncio stops accepting for a second.
ACCEPT_BACKLOG = 128
ACCEPT_TURNS = 3
#: A wanted open-file limit when the hard limit is unlimited (the kernel's usual `nr_open`).
FD_WANTED = 1 << 20
LOG_EVERY_SECONDS = 10.0
SHUTDOWN_SECONDS = 10.0


def _handler_args(config: BrokerConfig) -> dict[str, Any]:
    """aiohttp's own limits, as `web.Server` takes them."""
    return {
        "keepalive_timeout": config.keepalive_timeout,
        "max_line_size": 8190,
        "max_field_size": 8190,
        "max_headers": 32,  # a callback carries about 8; each may be 8 KiB, so 256 KiB at most
        "lingering_time": min(config.body_timeout, 5.0),
        "read_bufsize": 16 * 1024,
        "auto_decompress": False,
    }


# --------------------------------------------------------------------------- open-file limit


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit where the system allows; (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, wanted
    return soft, soft


def listen_backlog(open_files: int) -> int:
    """`ACCEPT_BACKLOG`, smaller under a low open-file limit (a sixteenth of it, 16 at least)."""
    if open_files == resource.RLIM_INFINITY:
        return ACCEPT_BACKLOG
    return max(16, min(ACCEPT_BACKLOG, open_files // 16))


def connection_limit(configured: int, open_files: int) -> int:
    """The cap that fits the open-file limit with `FD_RESERVE` and `ACCEPT_TURNS` backlogs to
    spare (at least 1)."""
    if open_files == resource.RLIM_INFINITY:
        return configured
    spare = FD_RESERVE + ACCEPT_TURNS * listen_backlog(open_files)
    return max(1, min(configured, open_files - spare))


# --------------------------------------------------------------------------- rate-limited warnings


class RateLimitedLog:
    """A warning at most every `LOG_EVERY_SECONDS`, with the count of what it held back."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._last = float("-inf")
        self._held = 0

    def emit(self, **details: Any) -> None:
        now = time.monotonic()
        if now - self._last < LOG_EVERY_SECONDS:
            self._held += 1
            return
        log.warning(
            "%s (%d more since the last line)", self._message, self._held, extra=fields(**details, held=self._held)
        )
        self._last, self._held = now, 0


_ACCEPT_FAILED = RateLimitedLog("accept() failed: out of file descriptors or memory; retrying")


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs each failed accept() with a traceback (2–6 MB/s under a flood): one line instead."""
    default = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message", "").startswith("socket.accept() out of system resource"):
            _ACCEPT_FAILED.emit(error=type(context.get("exception")).__name__)
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


# --------------------------------------------------------------------------- memory


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()
#: Give freed heap back once the connections fall to half a peak of at least this many.
TRIM_AFTER_PEAK = 64


def give_back_freed_memory() -> None:
    """After a flood of held bodies the RSS would stay at its peak: a connection cut mid-body
    leaves its buffers in reference cycles (an asyncio future holding the exception whose
    traceback holds the future) that only the cyclic collector frees, and glibc keeps freed
    64 KiB blocks (below its mmap threshold) in its heap. Collect, then `malloc_trim(0)`."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# --------------------------------------------------------------------------- connections


def _canned(error: BrokerError) -> bytes:
    """A complete HTTP/1.1 reply written before any request was parsed (then the connection closes)."""
    body = json.dumps(error.envelope()).encode()
    head = (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
        f"Content-Type: application/json; charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ConnectionGuard:
    """The connection cap and its eviction order (oldest connection waiting on its client first)."""

    def __init__(self, limit: int, header_timeout: float, metrics: BrokerMetrics) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.metrics = metrics
        self._open: dict[GuardedRequestHandler, None] = {}  # insertion order = age
        self._busy_reply = _canned(errors.too_many_connections(limit))
        self._timeout_reply = _canned(errors.request_timeout("headers", header_timeout))
        self._over_limit = RateLimitedLog(f"connection limit {limit} reached: refusing new connections")
        self._peak = 0  # most connections open since memory was last given back
        self._trimmed_at = float("-inf")

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, handler: GuardedRequestHandler) -> bool:
        if len(self._open) >= self.limit and not self._evict_one():
            self.metrics.connections_closed.labels("over_limit").inc()
            self._over_limit.emit(limit=self.limit)
            handler.refuse(self._busy_reply)
            return False
        self._open[handler] = None
        self._peak = max(self._peak, len(self._open))
        self.metrics.connections_open.set(len(self._open))
        return True

    def release(self, handler: GuardedRequestHandler) -> None:
        if self._open.pop(handler, False) is None:
            self.metrics.connections_open.set(len(self._open))
            self._maybe_give_back_memory()

    def _maybe_give_back_memory(self) -> None:
        """After a flood ebbs (half the peak gone), at most every `LOG_EVERY_SECONDS`; a second
        later, once the closed connections' handlers have dropped their buffers."""
        now = time.monotonic()
        ebbed = self._peak >= TRIM_AFTER_PEAK and len(self._open) <= self._peak // 2
        if ebbed and now - self._trimmed_at >= LOG_EVERY_SECONDS:
            self._trimmed_at = now
            self._peak = len(self._open)
            asyncio.get_running_loop().call_later(1.0, give_back_freed_memory)

    def _evict_one(self) -> bool:
        """Close the oldest connection waiting for its client's headers, else the oldest waiting
        for a body; False if every connection is running a handler."""
        reading_body: GuardedRequestHandler | None = None
        for candidate in self._open:
            if candidate.waiting_for_request():
                return self._evict(candidate)
            if reading_body is None and candidate.reading_body:
                reading_body = candidate
        return reading_body is not None and self._evict(reading_body)

    def _evict(self, handler: GuardedRequestHandler) -> bool:
        self.release(handler)
        self.metrics.connections_closed.labels("evicted").inc()
        handler.force_close()
        return True

    def header_timeout_reply(self) -> bytes:
        self.metrics.connections_closed.labels("header_timeout").inc()
        return self._timeout_reply


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with the cap, the header deadline and envelope-only errors."""

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, access_log: AccessLog, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self.access_logger = access_log
        self._logging_enabled = True  # our access log counts every request, malformed ones too
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial_request = False
        #: set by `http.read_body` while the handler waits for the client's body
        self.reading_body = False

    # ---- the cap and the header deadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._guard.admit(self):
            self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        self._guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages or self._request_in_progress:
            self._disarm_header_timer()
        elif data and not self._force_close:
            self._partial_request = True
            if self._header_timer is None:  # the first byte of a further request on this connection
                self._arm_header_timer()

    def waiting_for_request(self) -> bool:
        """Idle or still receiving headers: nothing of ours is running for this connection."""
        return not self._request_in_progress and not self._messages

    def refuse(self, reply: bytes) -> None:
        if self.transport is not None:
            self.transport.write(reply)
        self.force_close()

    def _arm_header_timer(self) -> None:
        # 80–100 % of the limit: connections opened in one burst (a flood, its reconnections) do
        # not all expire in the same instant, which paused the loop for everyone else.
        delay = self._guard.header_timeout * (0.8 + 0.2 * random.random())
        self._header_timer = self._loop.call_later(delay, self._header_deadline)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._partial_request = False

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self.waiting_for_request() or self._force_close:
            return
        if self._partial_request:
            self.refuse(self._guard.header_timeout_reply())
        else:  # never sent a byte: close quietly, as for an idle keep-alive connection
            self._guard.metrics.connections_closed.labels("header_timeout").inc()
            self.force_close()

    # ---- aiohttp's own errors, as envelopes and one line

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp calls this for a request its parser refused (and for a failure outside our
        middleware). The parser's message can hold the offending line, a bearer included: only the
        rule's name goes out."""
        rule = type(exc).__name__ if exc is not None else "HttpProcessingError"
        if status == 400:
            error = errors.malformed_request(rule)
        elif status >= 500:
            log.error("internal failure outside the handlers: %s", rule)
            error = errors.internal_error()
        else:
            error = errors.http_status(status, "Bad Request")
        if request.writer.output_size > 0:
            raise ConnectionError("a reply was already started; the connection is closed instead")
        response = error.response()
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's own failures: one line with the exception's type, never its text or traceback."""
        exc = kwargs.get("exc_info")
        name = type(exc).__name__ if isinstance(exc, BaseException) else "error"
        message = args[0] % args[1:] if args else "aiohttp error"
        self.logger.error("%s (%s)", message, name)


class GuardedServer(web.Server):
    """`web.Server` whose connections are `GuardedRequestHandler`s."""

    def __init__(
        self, handler: Any, *, guard: ConnectionGuard, access_log: AccessLog, handler_args: dict[str, Any], **kw: Any
    ) -> None:
        super().__init__(handler, **kw)
        self._guard = guard
        self._access_log = access_log
        self._handler_args = handler_args

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self, guard=self._guard, access_log=self._access_log, loop=self._loop, **self._handler_args
        )


class BrokerRunner(web.AppRunner):
    """`web.AppRunner` serving the app through a `GuardedServer` (the app's startup runs as usual)."""

    def __init__(self, app: web.Application, config: BrokerConfig, connection_cap: int) -> None:
        super().__init__(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        metrics = app[METRICS]
        self.guard = ConnectionGuard(connection_cap, config.header_timeout, metrics)
        self._access_log = AccessLog(metrics)
        self._handler_args = _handler_args(config)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup and freezes it
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            loop=asyncio.get_running_loop(),
            guard=self.guard,
            access_log=self._access_log,
            handler_args=self._handler_args,
        )


class BrokerServer:
    """The broker app served on `host`:`port` (0: a free port) with every limit above; what
    `agentkeys-broker run`, the tests and the benchmarks all use."""

    def __init__(self, config: BrokerConfig, host: str | None = None, port: int | None = None) -> None:
        self.config = config
        self.host = config.host if host is None else host
        self.port = config.port if port is None else port
        self.connection_cap = config.max_connections
        self.backlog = ACCEPT_BACKLOG
        self._runner: BrokerRunner | None = None

    async def start(self, app: web.Application) -> int:
        runner = BrokerRunner(app, self.config, self.connection_cap)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True, backlog=self.backlog).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def open_connections(self) -> int:
        return self._runner.guard.open_connections if self._runner is not None else 0


# --------------------------------------------------------------------------- agentkeys-broker run


async def serve_until_stopped(
    config: BrokerConfig, app: web.Application, on_listening: Callable[[str], None] | None = None
) -> str:
    """Serve until SIGTERM or SIGINT; returns the signal's name. Logs the limits, the listen
    address and the stop."""
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop)
    before, open_files = raise_open_file_limit()
    server = BrokerServer(config)
    server.connection_cap = connection_limit(config.max_connections, open_files)
    server.backlog = listen_backlog(open_files)
    stopped = asyncio.Event()
    received: list[str] = []

    def stop(sig: signal.Signals) -> None:
        received.append(sig.name)
        stopped.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    started = time.monotonic()
    await server.start(app)  # the app's start lines (version, database, key, clients, networks)
    # Everything loaded so far lives as long as the process: keep it out of the cyclic collector's
    # way, so that a collection (`give_back_freed_memory`) walks only what requests created
    # (2 ms instead of 45 ms; a pause that long showed in the p99 under a flood).
    gc.collect()
    gc.freeze()
    try:
        _log_limits(config, server.connection_cap, before, open_files)
        log.info("listening on %s", server.url, extra=fields(host=server.host, port=server.port))
        if on_listening is not None:
            on_listening(server.url)
        await stopped.wait()
        log.info("stopping on %s: finishing requests in flight (%g s at most)", received[0], SHUTDOWN_SECONDS)
    finally:
        stopping = time.monotonic()
        await server.close()
    now = time.monotonic()
    log.info(
        "stopped: up %.0f s, the shutdown took %.1f s",
        now - started,
        now - stopping,
        extra=fields(
            signal=received[0] if received else None, uptime_s=round(now - started), shutdown_s=round(now - stopping, 3)
        ),
    )
    return received[0] if received else "none"


def _log_limits(config: BrokerConfig, cap: int, before: int, open_files: int) -> None:
    if cap < config.max_connections:
        log.warning(
            "BROKER_MAX_CONNECTIONS %d lowered to %d to fit the open-file limit %d",
            config.max_connections,
            cap,
            open_files,
        )
    log.info(
        "limits: %d connections (open-file limit %d, was %d), headers %g s, body %g s and %d bytes, keep-alive %g s",
        cap,
        open_files,
        before,
        config.header_timeout,
        config.body_timeout,
        MAX_BODY,
        config.keepalive_timeout,
        extra=fields(
            max_connections=cap,
            open_file_limit=open_files,
            header_timeout_s=config.header_timeout,
            body_timeout_s=config.body_timeout,
            max_body_bytes=MAX_BODY,
            keepalive_timeout_s=config.keepalive_timeout,
        ),
    )
