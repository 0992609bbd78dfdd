"""E-mail login (`broker/login/email.py`) on both databases: codes over real SMTP to an aiosmtpd
sink, stored only as an HMAC, 10 minutes, single use, 5 tries, rate limits per address and per
client, two brokers on one database, the console mailer, the purge."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from broker_client import Reply, assert_refused, call
from conftest import BrokerFactory, BrokerHandle

from agentkeys_kit.broker.config import BrokerConfigError, config_from_env
from agentkeys_kit.broker.login.email import ConsoleMailer, load_code_key
from agentkeys_kit.broker.storage import login as login_store
from agentkeys_kit.broker.storage.base import Query
from agentkeys_kit.conformance.mail_sink import Mailbox, SmtpSink
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of

REQUEST = "v1/auth/email/request"
VERIFY = "v1/auth/email/verify"
ALICE = "alice@example.com"


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def sink(mailbox: Mailbox) -> Iterator[SmtpSink]:
    server = SmtpSink(mailbox)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def email_env(tmp_path: Path, sink: SmtpSink, **extra: str) -> dict[str, str]:
    return {
        "BROKER_LOGIN_BACKEND": "local",
        "BROKER_SMTP_URL": sink.url,
        "BROKER_EMAIL_CODE_KEY_PATH": str(tmp_path / "email_code.key"),
        "BROKER_MAIL_FROM": "AgentKeys <login@agentkeys.test>",
        **extra,
    }


@pytest.fixture
async def broker(make_broker: BrokerFactory, tmp_path: Path, sink: SmtpSink, clock: Clock) -> BrokerHandle:
    return await make_broker(email_env(tmp_path, sink), clock=clock)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def request_code(http: aiohttp.ClientSession, broker: BrokerHandle, email: str) -> Reply:
    return await call(http, broker, REQUEST, json_body={"email": email})


async def verify(http: aiohttp.ClientSession, broker: BrokerHandle, email: str, code: str) -> Reply:
    return await call(http, broker, VERIFY, json_body={"email": email, "code": code})


async def code_for(http: aiohttp.ClientSession, broker: BrokerHandle, mailbox: Mailbox, email: str) -> tuple[str, Any]:
    before = len(mailbox.mails())
    reply = await request_code(http, broker, email)
    assert reply.status == 200, reply
    assert reply.body["data"] == {"sent": True, "expires_in_seconds": 600}
    mail = await mailbox.wait_for(email, before, 10)
    assert mail is not None, "no mail reached the sink"
    assert mail.code is not None and len(mail.code) == 6
    return mail.code, mail


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def rows(broker: BrokerHandle, sql: str, *args: Any) -> list[dict[str, Any]]:
    def operation() -> Any:
        found = yield Query.all(sql, *args)
        return found

    result: list[dict[str, Any]] = await broker.state.db.run(operation)
    return result


# --------------------------------------------------------------------------- the flow


async def test_code_over_smtp_logs_in_once(http: aiohttp.ClientSession, broker: BrokerHandle, mailbox: Mailbox) -> None:
    code, mail = await code_for(http, broker, mailbox, "Alice@Example.com")
    assert mail.to == ["Alice@Example.com"]
    assert mail.subject == "AgentKeys verification code"
    assert mail.sender == "AgentKeys <login@agentkeys.test>"
    # the address is keyed as the worker hashes it: lowercased
    reply = await verify(http, broker, "alice@EXAMPLE.com", code)
    assert reply.status == 200, reply
    assert reply.body["data"]["omni_account"] == omni_account_of(IdentityKind.EMAIL, ALICE, "agentkeys")
    assert_refused(await verify(http, broker, ALICE, code), 401, "code_used")


async def test_code_is_stored_only_as_an_hmac(
    http: aiohttp.ClientSession, broker: BrokerHandle, mailbox: Mailbox, tmp_path: Path
) -> None:
    code, _ = await code_for(http, broker, mailbox, ALICE)
    stored = await rows(broker, "SELECT * FROM email_codes")
    assert len(stored) == 1
    text = repr(stored)
    assert code not in text
    assert hashlib.sha256(code.encode()).hexdigest() not in text
    assert hashlib.sha256((ALICE + code).encode()).hexdigest() not in text
    key_file = tmp_path / "email_code.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32


async def test_wrong_code_counts_down_and_the_sixth_try_is_refused_even_if_right(
    http: aiohttp.ClientSession, broker: BrokerHandle, mailbox: Mailbox
) -> None:
    code, _ = await code_for(http, broker, mailbox, ALICE)
    for left in (4, 3, 2, 1, 0):
        reply = await verify(http, broker, ALICE, other_code(code))
        assert_refused(reply, 401, "wrong_code")
        assert reply.body["data"]["attempts_left"] == left
    assert_refused(await verify(http, broker, ALICE, code), 401, "too_many_attempts")


async def test_four_wrong_tries_then_the_right_code_logs_in(
    http: aiohttp.ClientSession, broker: BrokerHandle, mailbox: Mailbox
) -> None:
    code, _ = await code_for(http, broker, mailbox, ALICE)
    for _ in range(4):
        assert_refused(await verify(http, broker, ALICE, other_code(code)), 401, "wrong_code")
    assert (await verify(http, broker, ALICE, code)).status == 200


async def test_code_expires_after_ten_minutes(
    http: aiohttp.ClientSession, broker: BrokerHandle, mailbox: Mailbox, clock: Clock
) -> None:
    code, _ = await code_for(http, broker, mailbox, ALICE)
    clock.now += 600
    assert_refused(await verify(http, broker, ALICE, code), 401, "code_expired")
    code, _ = await code_for(http, broker, mailbox, ALICE)
    clock.now += 599
    assert (await verify(http, broker, ALICE, code)).status == 200


async def test_a_new_code_replaces_the_pending_one(
    http: aiohttp.ClientSession, broker: BrokerHandle, mailbox: Mailbox
) -> None:
    first, _ = await code_for(http, broker, mailbox, ALICE)
    second, _ = await code_for(http, broker, mailbox, ALICE)
    if first != second:
        assert_refused(await verify(http, broker, ALICE, first), 401, "wrong_code")
    assert (await verify(http, broker, ALICE, second)).status == 200


async def test_bad_input_is_a_400_and_no_code_is_401(http: aiohttp.ClientSession, broker: BrokerHandle) -> None:
    for body in ({"email": "no-at-sign"}, {"email": "a@localhost"}, {"email": 5}, {}, ["x"]):
        assert_refused(await call(http, broker, REQUEST, json_body=body), 400, "malformed_body")
    assert_refused(await request_code(http, broker, "x" * 60 + "@example.com"), 400, "malformed_body")
    for code in ("12345", "1234567", "12345a", " 123456", "١٢٣٤٥٦"):
        assert_refused(await verify(http, broker, ALICE, code), 400, "malformed_body")
    assert_refused(await verify(http, broker, "nobody@example.com", "123456"), 401, "no_code")


# --------------------------------------------------------------------------- rate limits


async def test_rate_limit_per_address(
    make_broker: BrokerFactory,
    tmp_path: Path,
    sink: SmtpSink,
    mailbox: Mailbox,
    clock: Clock,
    http: aiohttp.ClientSession,
) -> None:
    env = email_env(tmp_path, sink, BROKER_EMAIL_RATE_LIMIT_PER_EMAIL_HOURLY="2")
    broker = await make_broker(env, clock=clock)
    await code_for(http, broker, mailbox, ALICE)
    await code_for(http, broker, mailbox, "ALICE@example.com")  # the same address
    sent = len(mailbox.mails())
    reply = await request_code(http, broker, ALICE)
    assert_refused(reply, 429, "rate_limited")
    assert reply.body["data"]["limit"] == "e-mail address"
    assert 0 < reply.body["data"]["retry_after_seconds"] <= 3600
    assert len(mailbox.mails()) == sent
    await code_for(http, broker, mailbox, "bob@example.com")  # another address is not limited
    clock.now += reply.body["data"]["retry_after_seconds"]
    await code_for(http, broker, mailbox, ALICE)


async def test_rate_limit_per_client_address_comes_first(
    make_broker: BrokerFactory,
    tmp_path: Path,
    sink: SmtpSink,
    mailbox: Mailbox,
    clock: Clock,
    http: aiohttp.ClientSession,
) -> None:
    env = email_env(tmp_path, sink, BROKER_EMAIL_RATE_LIMIT_PER_IP_MINUTELY="3")
    broker = await make_broker(env, clock=clock)
    for n in range(3):
        await code_for(http, broker, mailbox, f"user{n}@example.com")
    async with http.post(broker.url + REQUEST, json={"email": "victim@example.com"}) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["data"]["limit"] == "client address"
    # refused by the client limit, the victim's own budget was not spent
    buckets = await rows(broker, "SELECT bucket, hits FROM rate_limit_buckets WHERE bucket LIKE 'email-addr:%'")
    assert len(buckets) == 3 and all(b["hits"] == 1 for b in buckets)
    assert "victim" not in repr(buckets)


# --------------------------------------------------------------------------- several replicas


async def test_code_requested_on_one_broker_is_used_on_another_once(
    make_broker: BrokerFactory,
    tmp_path: Path,
    sink: SmtpSink,
    mailbox: Mailbox,
    http: aiohttp.ClientSession,
) -> None:
    env = email_env(tmp_path, sink)
    first, second = await make_broker(env), await make_broker(env)
    code, _ = await code_for(http, first, mailbox, ALICE)
    assert (await verify(http, second, ALICE, code)).status == 200
    assert_refused(await verify(http, first, ALICE, code), 401, "code_used")


async def test_concurrent_tries_on_two_brokers_get_five_in_all(
    make_broker: BrokerFactory,
    tmp_path: Path,
    sink: SmtpSink,
    mailbox: Mailbox,
    http: aiohttp.ClientSession,
) -> None:
    env = email_env(tmp_path, sink)
    first, second = await make_broker(env), await make_broker(env)
    code, _ = await code_for(http, first, mailbox, ALICE)
    wrong = other_code(code)
    replies = await asyncio.gather(*(verify(http, (first, second)[n % 2], ALICE, wrong) for n in range(16)))
    errors = sorted(reply.body["data"]["error"] for reply in replies)
    assert errors.count("wrong_code") == 5, errors
    assert errors.count("too_many_attempts") == 11, errors
    assert_refused(await verify(http, second, ALICE, code), 401, "too_many_attempts")


# --------------------------------------------------------------------------- mailers and keys


async def test_mail_that_cannot_be_sent_is_a_502_and_leaves_no_code(
    make_broker: BrokerFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    from processes import free_port

    env = {
        "BROKER_LOGIN_BACKEND": "local",
        "BROKER_SMTP_URL": f"smtp://127.0.0.1:{free_port()}",
        "BROKER_EMAIL_CODE_KEY_PATH": str(tmp_path / "k"),
    }
    broker = await make_broker(env)
    reply = await request_code(http, broker, ALICE)
    assert reply.status == 502 and reply.body["data"]["error"] == "mail_not_sent", reply
    assert await rows(broker, "SELECT email FROM email_codes") == []


async def test_console_mailer_writes_the_code_to_a_private_file_and_never_logs_it(
    make_broker: BrokerFactory, tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = tmp_path / "outbox"
    env = {
        "BROKER_LOGIN_BACKEND": "local",
        "BROKER_MAILER": "console",
        "BROKER_MAIL_CONSOLE_DIR": str(outbox),
        "BROKER_EMAIL_CODE_KEY_PATH": str(tmp_path / "k"),
    }
    broker = await make_broker(env)
    assert (await request_code(http, broker, "Carol+tag@Example.com")).status == 200
    path = outbox / ConsoleMailer.file_name("carol+tag@example.com")
    code = path.read_text().strip()
    assert len(code) == 6 and code.isdigit()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    assert code not in caplog.text
    assert (await verify(http, broker, "carol+tag@example.com", code)).status == 200


def test_code_key_is_created_private_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "key"
    key = load_code_key(path)
    assert len(key) == 32 and load_code_key(path) == key
    os.chmod(path, 0o640)
    with pytest.raises(BrokerConfigError, match="readable by others"):
        load_code_key(path)
    short = tmp_path / "short"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    with pytest.raises(BrokerConfigError, match="fewer than 32"):
        load_code_key(short)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_MAILER": "smtp"}, "needs BROKER_SMTP_URL"),
        ({"BROKER_MAILER": "console"}, "needs BROKER_MAIL_CONSOLE_DIR"),
        ({"BROKER_MAILER": "pigeon"}, "must be one of"),
        ({"BROKER_SMTP_URL": "http://mail.example.com"}, "must be smtps://"),
        ({"BROKER_SMTP_URL": "smtp://mail.example.com:x"}, "not a valid URL"),
        ({"BROKER_SMTP_URL": "smtp://h:25", "BROKER_MAIL_SUBJECT": "a\r\nBcc: x"}, "one line"),
        ({"BROKER_SMTP_URL": "smtp://h:25", "BROKER_EMAIL_RATE_LIMIT_PER_IP_MINUTELY": "0"}, "positive"),
    ],
)
def test_email_configuration_refused(env: dict[str, str], message: str, tmp_path: Path) -> None:
    base = {"BROKER_TEE_JWT_PUBLIC_KEY": str(tmp_path / "k.pem"), "BROKER_DB_URL": f"sqlite:///{tmp_path}/db"}
    with pytest.raises(BrokerConfigError, match=message):
        config_from_env({**base, **env})


def test_the_code_key_sits_beside_a_sqlite_database_unless_named(tmp_path: Path) -> None:
    """Never in the user's home for a broker whose database is elsewhere (the harness's brokers)."""
    base = {
        "BROKER_TEE_JWT_PUBLIC_KEY": str(tmp_path / "k.pem"),
        "BROKER_DB_URL": f"sqlite:///{tmp_path}/sub/db.sqlite3",
        "BROKER_SMTP_URL": "smtp://127.0.0.1:25",
    }
    settings = config_from_env(base).email_login
    assert settings is not None and settings.code_key_path == tmp_path / "sub" / "email_code.key"
    named = config_from_env({**base, "BROKER_EMAIL_CODE_KEY_PATH": str(tmp_path / "k.key")}).email_login
    assert named is not None and named.code_key_path == tmp_path / "k.key"


def test_no_mailer_no_email_login(tmp_path: Path) -> None:
    base = {"BROKER_TEE_JWT_PUBLIC_KEY": str(tmp_path / "k.pem"), "BROKER_DB_URL": f"sqlite:///{tmp_path}/db"}
    assert config_from_env(base).email_login is None
    settings = config_from_env({**base, "BROKER_SMTP_URL": "smtps://user:pw@mail.example.com"}).email_login
    assert settings is not None and settings.mailer == "smtp"
    assert settings.smtp_description() == "smtps://mail.example.com"
    assert "pw" not in repr(config_from_env({**base, "BROKER_SMTP_URL": "smtps://user:pw@mail.example.com"}))


async def test_expired_rows_are_purged(
    http: aiohttp.ClientSession, broker: BrokerHandle, mailbox: Mailbox, clock: Clock
) -> None:
    await code_for(http, broker, mailbox, ALICE)
    counts = await broker.state.db.run(login_store.purge_expired, broker.state.now())
    assert counts["email_codes"] == 0
    clock.now += 3601
    counts = await broker.state.db.run(login_store.purge_expired, broker.state.now())
    assert counts["email_codes"] == 1 and counts["rate_limit_buckets"] == 2
    assert await rows(broker, "SELECT email FROM email_codes") == []


async def test_two_broker_processes_on_one_database_share_codes_and_tries(
    db_url: tuple[str, str | None], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """As an operator runs replicas: two `agentkeys-broker run` processes, one database and schema."""
    from broker_process import BrokerProcess

    outbox = tmp_path / "outbox"
    env = {
        "BROKER_LOGIN_BACKEND": "local",
        "BROKER_MAILER": "console",
        "BROKER_MAIL_CONSOLE_DIR": str(outbox),
        "BROKER_EMAIL_CODE_KEY_PATH": str(tmp_path / "email_code.key"),
    }
    first = BrokerProcess(db_url, tmp_path, env).start()
    try:
        second = BrokerProcess(db_url, tmp_path, env).start()
        try:
            for broker in (first, second):
                assert "e-mail login: mailer console" in broker.stderr()
            code_file = outbox / ConsoleMailer.file_name(ALICE)
            base_a, base_b = first.url, second.url
            async with http.post(base_a + REQUEST, json={"email": ALICE}) as response:
                assert response.status == 200
            code = code_file.read_text().strip()
            async with http.post(base_b + VERIFY, json={"email": ALICE, "code": code}) as response:
                assert response.status == 200, await response.text()
            async with http.post(base_a + VERIFY, json={"email": ALICE, "code": code}) as response:
                assert response.status == 401 and (await response.json())["data"]["error"] == "code_used"
            # tries are counted across processes too
            async with http.post(base_a + REQUEST, json={"email": ALICE}) as response:
                assert response.status == 200
            code = code_file.read_text().strip()
            for n in range(5):
                url = (base_a, base_b)[n % 2] + VERIFY
                async with http.post(url, json={"email": ALICE, "code": other_code(code)}) as response:
                    assert (await response.json())["data"]["error"] == "wrong_code"
            async with http.post(base_b + VERIFY, json={"email": ALICE, "code": code}) as response:
                assert (await response.json())["data"]["error"] == "too_many_attempts"
            assert code not in first.stderr() + second.stderr() + first.stdout() + second.stdout()
        finally:
            second.stop()
    finally:
        first.stop()


async def test_methods_follow_the_configuration_and_heima_serves_no_email_login(
    make_broker: BrokerFactory, tmp_path: Path, sink: SmtpSink, http: aiohttp.ClientSession
) -> None:
    google = {"BROKER_GOOGLE_CLIENT_ID": "id", "BROKER_GOOGLE_CLIENT_SECRET": "secret"}
    wallet_only = await make_broker({"BROKER_LOGIN_BACKEND": "local"})
    with_email = await make_broker(email_env(tmp_path, sink))
    with_both = await make_broker({**email_env(tmp_path, sink), **google})
    heima = await make_broker({**email_env(tmp_path, sink), "BROKER_LOGIN_BACKEND": "heima"})
    for broker, methods in (
        (wallet_only, ["wallet"]),
        (with_email, ["wallet", "email"]),
        (with_both, ["wallet", "email", "google"]),
        (heima, ["wallet", "email"]),  # the worker's methods: the CLI logs in there
    ):
        reply = await call(http, broker, "v1/auth/config", method="GET")
        assert reply.body["data"]["methods"] == methods
    for broker in (wallet_only, heima):
        assert_refused(await request_code(http, broker, ALICE), 404, "not_found")
    assert_refused(await call(http, heima, "v1/auth/google/start"), 404, "not_found")


def test_smtp_transport_security_follows_the_url() -> None:
    from agentkeys_kit.broker.config import EmailLoginSettings
    from agentkeys_kit.broker.login.email import SmtpMailer

    def mailer(url: str) -> SmtpMailer:
        return SmtpMailer(EmailLoginSettings(mailer="smtp", smtp_url=url))

    tls = mailer("smtps://user%40x:p%3Ass@mail.example.com")
    assert (tls.tls, tls.start_tls, tls.port, tls.username, tls.password) == (True, False, 465, "user@x", "p:ss")
    remote = mailer("smtp://mail.example.com")
    assert (remote.tls, remote.start_tls, remote.port) == (False, True, 587)
    local = mailer("smtp://127.0.0.1:2525")
    assert (local.tls, local.start_tls, local.port) == (False, None, 2525)
    assert "p:ss" not in tls.describe() and "user" not in tls.describe()


async def test_the_right_code_twice_at_once_on_two_brokers_makes_one_session(
    make_broker: BrokerFactory,
    tmp_path: Path,
    sink: SmtpSink,
    mailbox: Mailbox,
    http: aiohttp.ClientSession,
) -> None:
    env = email_env(tmp_path, sink)
    first, second = await make_broker(env), await make_broker(env)
    code, _ = await code_for(http, first, mailbox, ALICE)
    replies = await asyncio.gather(*(verify(http, broker, ALICE, code) for broker in (first, second, first, second)))
    assert sorted(reply.status for reply in replies) == [200, 401, 401, 401], replies
    refusals = {reply.body["data"]["error"] for reply in replies if reply.status == 401}
    assert refusals <= {"code_used", "login_refused"}, refusals
    sessions = await rows(first, "SELECT jti FROM broker_sessions")
    assert len(sessions) == 1
