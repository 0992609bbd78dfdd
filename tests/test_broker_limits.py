"""Connection limits (`broker/server.py`, issue 11 finding 4), over real sockets: header and body
deadlines, the body limit, the connection cap and its eviction order, the open-file limit, and a
flood of idle connections against a broker started as `agentkeys-broker run` under a low ulimit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import aiohttp
import pytest
from broker_client import CHECK_AGENT
from broker_process import BrokerProcess, open_file_limit
from conftest import BrokerFactory
from raw_http import address, exchange, parse_reply, read_reply, request_bytes
from test_broker_request_layer import assert_envelope

from agentkeys_kit.broker.server import connection_limit, listen_backlog

FAST = {
    "BROKER_HEADER_TIMEOUT_SECONDS": "0.5",
    "BROKER_BODY_TIMEOUT_SECONDS": "0.5",
}
CHECK_BODY = json.dumps({"main_address": "0x" + "1" * 40, "agent_address": "0x" + "2" * 40, "login_type": 1})


async def _until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), within)


async def test_a_slowloris_client_gets_408_and_is_closed(make_broker: BrokerFactory) -> None:
    broker = await make_broker(env={"BROKER_HEADER_TIMEOUT_SECONDS": "1"})
    reader, writer = await asyncio.open_connection(*address(broker.url))
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\n")
    for n in range(8):  # a header line every 0.1 s: aiohttp's keep-alive timer alone never fires
        await asyncio.sleep(0.1)
        writer.write(f"X-Drip-{n}: y\r\n".encode())
    reply = parse_reply(await _until_closed(reader, 5))
    writer.close()
    assert_envelope(reply, 408, "request_timeout")
    # The deadline (80-100 % of 1 s) counts from the connection's start: the drips did not move it.
    assert 0.75 < time.monotonic() - started < 1.7


async def test_a_silent_connection_is_closed_after_the_header_timeout(make_broker: BrokerFactory) -> None:
    broker = await make_broker(env=FAST)
    reader, writer = await asyncio.open_connection(*address(broker.url))
    started = time.monotonic()
    assert await _until_closed(reader, 5) == b""
    writer.close()
    assert 0.35 < time.monotonic() - started < 2.5


async def test_the_header_deadline_applies_to_every_request_on_a_kept_alive_connection(
    make_broker: BrokerFactory,
) -> None:
    broker = await make_broker(env=FAST)
    reader, writer = await asyncio.open_connection(*address(broker.url))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
    first = parse_reply(await asyncio.wait_for(read_reply(reader), 5))
    assert first.status == 200
    await asyncio.sleep(0.8)  # idle longer than the header timeout: only the keep-alive timer applies
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\n")
    started = time.monotonic()
    reply = parse_reply(await _until_closed(reader, 5))
    writer.close()
    assert_envelope(reply, 408, "request_timeout")
    assert time.monotonic() - started < 2.5


async def test_a_slow_body_gets_408_and_the_connection_is_released(make_broker: BrokerFactory) -> None:
    broker = await make_broker(env=FAST)
    reader, writer = await asyncio.open_connection(*address(broker.url))
    body = CHECK_BODY.encode()
    writer.write(request_bytes("POST", "/" + CHECK_AGENT, body=body)[: -len(body) + 10])
    await writer.drain()
    started = time.monotonic()
    reply = parse_reply(await _until_closed(reader, 5))
    writer.close()
    assert_envelope(reply, 408, "request_timeout")
    assert time.monotonic() - started < 2.5
    await asyncio.sleep(0.1)
    assert broker.served.open_connections == 0


async def test_a_body_over_the_limit_is_413_before_it_is_read(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    head = f"POST /{CHECK_AGENT} HTTP/1.1\r\nHost: b\r\nContent-Length: {64 * 1024 + 1}\r\n\r\n".encode()
    reply = await exchange(broker.url, head, within=3)  # no body sent at all
    assert_envelope(reply, 413, "body_too_large")
    chunk = b"%x\r\n%s\r\n" % (40000, b"x" * 40000)
    chunked = f"POST /{CHECK_AGENT} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + chunk * 2
    assert_envelope(await exchange(broker.url, chunked, within=3), 413, "body_too_large")


async def test_idle_and_slow_connections_beyond_the_cap_do_not_lock_others_out(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker(env={"BROKER_MAX_CONNECTIONS": "10"})
    held = [await asyncio.open_connection(*address(broker.url)) for _ in range(25)]
    for _, writer in held[::2]:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\n")  # headers never finished
    await asyncio.sleep(0.2)
    assert broker.served.open_connections <= 10
    for _ in range(5):
        async with http.get(broker.url + "healthz") as response:
            assert response.status == 200
    closed = 0
    for reader, writer in held:
        with contextlib.suppress(TimeoutError):
            closed += await asyncio.wait_for(reader.read(), 0.05) == b""
        writer.close()
    assert closed >= 15  # the oldest were displaced, in order
    assert await _metric(http, broker.url, 'agentkeys_broker_connections_closed_total{reason="evicted"}') >= 15


async def test_when_every_connection_runs_a_handler_a_new_one_gets_503(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def slow(request: object) -> aiohttp.web.Response:
        await release.wait()
        return aiohttp.web.Response(text="done")

    broker = await make_broker(env={"BROKER_MAX_CONNECTIONS": "3"}, routes=[("GET", "/_test/slow", slow)])
    busy = [asyncio.ensure_future(exchange(broker.url, request_bytes("GET", "/_test/slow"))) for _ in range(3)]
    await asyncio.sleep(0.3)
    refused = await exchange(broker.url, b"", within=3)
    assert_envelope(refused, 503, "too_many_connections")
    release.set()
    assert [reply.status for reply in await asyncio.gather(*busy)] == [200, 200, 200]
    async with http.get(broker.url + "healthz") as response:
        assert response.status == 200


async def _metric(http: aiohttp.ClientSession, url: str, line_prefix: str) -> float:
    async with http.get(url + "metrics") as response:
        text = await response.text()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix)]
    return values[0] if values else 0.0


def test_the_cap_fits_the_open_file_limit() -> None:
    assert connection_limit(1000, 1 << 20) == 1000
    assert (listen_backlog(256), listen_backlog(1024), listen_backlog(1 << 20)) == (16, 64, 128)
    assert connection_limit(1000, 256) == 256 - 64 - 3 * 16 == 144
    assert connection_limit(1000, 1024) == 1024 - 64 - 3 * 64 == 768
    assert connection_limit(1000, 10) == 1


# --------------------------------------------------------------------------- as an operator runs it


@pytest.fixture
def sqlite_db(tmp_path: Path) -> tuple[str, None]:
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}", None


def test_the_open_file_limit_is_raised_at_start(sqlite_db: tuple[str, None], tmp_path: Path) -> None:
    broker = BrokerProcess(sqlite_db, tmp_path, preexec=open_file_limit(256, 4096)).start()
    assert broker.stop() == 0
    [limits] = [line for line in broker.log_lines() if line["msg"].startswith("limits:")]
    assert limits["open_file_limit"] == 4096 and limits["max_connections"] == 1000


def test_a_flood_of_idle_connections_under_a_low_ulimit_neither_locks_out_nor_floods_the_log(
    sqlite_db: tuple[str, None], tmp_path: Path
) -> None:
    broker = BrokerProcess(sqlite_db, tmp_path, preexec=open_file_limit(256, 256)).start()
    try:
        served = asyncio.run(_flood_then_call(broker.url, connections=300))
    finally:
        code = broker.stop()
    assert code == 0
    assert served == 20
    lines = broker.log_lines()  # every line is JSON: no traceback, no plain-text aiohttp error
    assert any("lowered to 144" in line["msg"] for line in lines)
    assert not [line for line in lines if "accept()" in line["msg"] or line["level"] == "ERROR"]
    assert len(broker.stderr()) < 200_000


async def _flood_then_call(url: str, connections: int) -> int:
    held = []
    for _ in range(connections):
        try:
            held.append(await asyncio.open_connection(*address(url)))
        except OSError:
            break
    served = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(url + "readyz") as response:
                served += response.status == 200
    for _, writer in held:
        writer.close()
    return served


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_held_bodies_cost_a_bounded_amount_and_are_given_back(sqlite_db: tuple[str, None], tmp_path: Path) -> None:
    broker = BrokerProcess(sqlite_db, tmp_path, env={"BROKER_LOG_LEVEL": "WARNING"}).start()
    assert broker.process is not None
    pid = broker.process.pid
    try:
        before = _rss_bytes(pid)
        held, after = asyncio.run(_hold_bodies(broker.url, pid, connections=400))
    finally:
        broker.stop()
    rise = held - before
    assert rise < 400 * 150_000, f"{rise / 400:.0f} bytes per held 60 KiB body"
    assert after - before < rise * 0.4, (before, held, after)


async def _hold_bodies(url: str, pid: int, connections: int) -> tuple[int, int]:
    body = b"{" + b"x" * (60 * 1024)
    head = f"POST /{CHECK_AGENT} HTTP/1.1\r\nHost: b\r\nContent-Length: 65000\r\n\r\n".encode()
    held = []
    for _ in range(connections):
        _reader, writer = await asyncio.open_connection(*address(url))
        writer.write(head + body)
        held.append(writer)
    await asyncio.sleep(2)
    during = _rss_bytes(pid)
    for writer in held:
        writer.close()
    await asyncio.sleep(3)  # the broker gives freed memory back a second after a flood ebbs
    return during, _rss_bytes(pid)
