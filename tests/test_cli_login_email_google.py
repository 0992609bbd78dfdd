"""`agentkeys init email` and `agentkeys init google` run as a user runs them (a subprocess, HOME,
XDG dirs and the keychain in tmp_path), on both databases: e-mail against a ``local`` broker with
real SMTP to an aiosmtpd sink, e-mail through the simulator (agentkeys-patch, its console mailer)
with a ``heima`` broker, Google against the fake provider; then ``whoami`` names the OmniAccount
the worker computes. Failures are one line, and neither a code nor a bearer is ever printed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import BrokerFactory, SimFactory
from cryptography.hazmat.primitives.asymmetric import rsa
from test_cli_login import AGENTKEYS, Ran, User

from agentkeys_kit.conformance.fake_google import FakeGoogle, default_sub
from agentkeys_kit.conformance.mail_sink import Mailbox, SmtpSink
from agentkeys_kit.omni_sim.server import SimServer
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.tee_jwt import unverified_claims

ADDRESS = "Dana@Example.org"
CLIENT_ID = "agentkeys-cli-test.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-cli-test"
GOOGLE_USER = "erin@gmail.test"


class Running:
    """`agentkeys` started with a pipe on standard input (where the code is typed)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, user: User, *args: str) -> Running:
        process = await asyncio.create_subprocess_exec(
            AGENTKEYS,
            *args,
            env=user.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def type_line(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()

    async def finish(self) -> Ran:
        out, err = await asyncio.wait_for(self.process.communicate(), 60)
        assert self.process.returncode is not None
        return Ran(self.process.returncode, out.decode(), err.decode())


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def sink(mailbox: Mailbox) -> Iterator[SmtpSink]:
    server = SmtpSink(mailbox)
    server.start()
    yield server
    server.stop()


def local_email_env(tmp_path: Path, sink: SmtpSink) -> dict[str, str]:
    return {
        "BROKER_LOGIN_BACKEND": "local",
        "BROKER_SMTP_URL": sink.url,
        "BROKER_EMAIL_CODE_KEY_PATH": str(tmp_path / "email_code.key"),
    }


async def mailed_code(mailbox: Mailbox, after: int) -> str:
    mail = await mailbox.wait_for(ADDRESS, after, 20)
    assert mail is not None and mail.code is not None, "no code reached the sink"
    return mail.code


async def sim_code(sim: SimServer, address: str) -> str:
    for _ in range(400):
        mails = sim.context.outbox.list(address)
        if mails:
            return str(mails[-1].code)
        await asyncio.sleep(0.05)
    raise AssertionError("the simulator sent no code")


async def workers_email_account(http: aiohttp.ClientSession, sim_url: str, address: str) -> str:
    params = {"client_id": "agentkeys", "user_email": address}
    async with http.get(sim_url + "_sim/omni-account", params=params) as response:
        return str((await response.json())["omni_account"])


def stored_bearer(user: User) -> str:
    entry = next(iter(json.loads(user.credentials_file.read_text()).values()))
    return str(entry["bearer"])


# --------------------------------------------------------------------------- e-mail, local backend


async def test_init_email_against_the_local_broker_over_smtp(
    make_broker: BrokerFactory,
    make_sim: SimFactory,
    tmp_path: Path,
    sink: SmtpSink,
    mailbox: Mailbox,
    http: aiohttp.ClientSession,
) -> None:
    broker = await make_broker(local_email_env(tmp_path, sink))
    user = User(tmp_path / "home", keychain=False)
    running = await Running.start(user, "--broker-url", broker.url, "init", "email", ADDRESS)
    code = await mailed_code(mailbox, 0)
    await running.type_line(f"{(int(code) + 1) % 1_000_000:06d}")  # a typo first
    await running.type_line(code)
    ran = await running.finish()
    assert ran.status == 0, ran
    assert "Wrong code (4 tries left)" in ran.stderr
    assert "local backend" in ran.stdout and "email dana@example.org" in ran.stdout
    bearer = stored_bearer(user)
    assert code not in ran.stdout and bearer not in ran.stdout + ran.stderr

    me = await user.run("--broker-url", broker.url, "whoami")
    assert me.status == 0, me
    data = json.loads(me.stdout)
    assert data["via"] == "session" and data["identity_type"] == "email"
    sim = await make_sim(profile="agentkeys-patch")
    assert data["omni_account"] == await workers_email_account(http, sim.url, ADDRESS)
    assert data["omni_account"] == omni_account_of(IdentityKind.EMAIL, ADDRESS.lower(), "agentkeys")


async def test_init_email_errors_are_one_line(
    make_broker: BrokerFactory, tmp_path: Path, sink: SmtpSink, mailbox: Mailbox
) -> None:
    broker = await make_broker(local_email_env(tmp_path, sink))
    user = User(tmp_path / "home", keychain=False)
    running = await Running.start(user, "--broker-url", broker.url, "init", "email", ADDRESS)
    code = await mailed_code(mailbox, 0)
    for _ in range(5):
        await running.type_line("000000" if code != "000000" else "111111")
    exhausted = await running.finish()
    assert exhausted.status == 1 and exhausted.stderr.splitlines()[-1].startswith("agentkeys: wrong code, and no")

    used = await Running.start(user, "--broker-url", broker.url, "init", "email", ADDRESS)
    code = await mailed_code(mailbox, 1)
    await used.type_line(code)
    assert (await used.finish()).status == 0
    nothing = await Running.start(user, "--broker-url", broker.url, "init", "email", ADDRESS)
    await mailed_code(mailbox, 2)
    await nothing.type_line("")
    empty = await nothing.finish()
    assert empty.status == 1 and empty.stderr.splitlines()[-1] == "agentkeys: no code was entered"

    unreachable = await user.run("--broker-url", "http://127.0.0.1:1/", "init", "email", ADDRESS)
    assert unreachable.status == 1 and unreachable.stderr.startswith("agentkeys: cannot reach the broker at")
    invalid = await user.run("--broker-url", broker.url, "init", "email", "not-an-address")
    assert invalid.status == 2 and "not an e-mail address" in invalid.stderr
    no_mailer = await make_broker({"BROKER_LOGIN_BACKEND": "local"})
    refused = await user.run("--broker-url", no_mailer.url, "init", "email", ADDRESS)
    assert refused.status == 1 and "does not offer e-mail login" in refused.stderr
    google = await user.run("--broker-url", no_mailer.url, "init", "google")
    assert google.status == 1 and "does not offer Google login" in google.stderr
    for ran in (exhausted, empty, unreachable, invalid, refused, google):
        assert len([line for line in ran.stderr.splitlines() if line.startswith("agentkeys:")]) == 1, ran
        assert "Traceback" not in ran.stderr


# --------------------------------------------------------------------------- e-mail through the worker


async def test_init_email_through_the_worker(
    make_sim: SimFactory,
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    broker = await make_broker(env={"BROKER_LOGIN_BACKEND": "heima"})
    sim = await make_sim(profile="agentkeys-patch", env={"OE_AGENTKEYS_API_BASE_URL": broker.url}, jwt_key=tee_key)
    # the worker's URL is known once it listens; a deployment sets BROKER_HEIMA_WORKER_URL
    broker.state.config = dataclasses.replace(broker.state.config, heima_worker_url=sim.url)
    user = User(tmp_path / "home", keychain=True)
    running = await Running.start(user, "--broker-url", broker.url, "init", "email", ADDRESS)
    await running.type_line(await sim_code(sim, ADDRESS))
    ran = await running.finish()
    assert ran.status == 0, ran
    assert "heima backend" in ran.stdout and "OS keychain (FileKeyring)" in ran.stdout
    stored = json.loads(next(iter(json.loads(user.keyring_file.read_text()).values())))
    bearer = stored["bearer"]
    assert unverified_claims(bearer)["typ"] == "access" and bearer not in ran.stdout + ran.stderr

    me = await user.run("--broker-url", broker.url, "whoami")
    assert me.status == 0, me
    data = json.loads(me.stdout)
    assert data["via"] == "tee"
    assert data["omni_account"] == unverified_claims(bearer)["sub"]
    assert data["omni_account"] == await workers_email_account(http, sim.url, ADDRESS)

    wrong = await Running.start(user, "--broker-url", broker.url, "init", "email", ADDRESS)
    code = await sim_code(sim, ADDRESS)
    await wrong.type_line(f"{(int(code) + 1) % 1_000_000:06d}")
    refused = await wrong.finish()
    assert refused.status == 1 and "the worker refused the code" in refused.stderr
    assert len(refused.stderr.splitlines()) == 2  # the prompt, then one line


# --------------------------------------------------------------------------- Google


@pytest.fixture
async def google() -> AsyncIterator[FakeGoogle]:
    async with FakeGoogle() as provider:
        provider.add_user(GOOGLE_USER)
        yield provider


async def test_init_google_against_the_fake_provider(
    make_broker: BrokerFactory, google: FakeGoogle, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    env = {
        "BROKER_LOGIN_BACKEND": "local",
        "BROKER_GOOGLE_CLIENT_ID": CLIENT_ID,
        "BROKER_GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
        "BROKER_GOOGLE_ISSUER": google.issuer,
    }
    broker = await make_broker(env)
    google.register_client(CLIENT_ID, CLIENT_SECRET, [broker.url + "auth/google/callback"])
    user = User(tmp_path / "home", keychain=False)
    running = await Running.start(user, "--broker-url", broker.url, "init", "google", "--login-hint", GOOGLE_USER)
    assert running.process.stdout is not None
    lines: list[str] = []
    while not (lines and lines[-1].startswith("http")):
        line = (await asyncio.wait_for(running.process.stdout.readline(), 30)).decode()
        assert line, f"the CLI printed no URL: {lines}"
        lines.append(line.strip())
    async with http.get(lines[-1]) as response:  # the user's browser
        page = await response.text()
        assert response.status == 200 and "Signed in with Google" in page
    code = re.search(r'id="confirmation-code">([A-Z-]+)<', page)
    assert code, page
    await running.type_line("BBBB-BBBB" if code.group(1) != "BBBB-BBBB" else "CCCC-CCCC")  # mistyped once
    await running.type_line(code.group(1))  # then read off the page
    ran = await running.finish()
    assert "not the code on the page (4 tries left)" in ran.stderr
    assert ran.status == 0, ran
    assert "logged in to" in ran.stdout and "(google, local backend)" in ran.stdout
    bearer = stored_bearer(user)
    assert bearer not in "".join(lines) + ran.stdout + ran.stderr

    me = await user.run("--broker-url", broker.url, "whoami")
    assert me.status == 0, me
    data: dict[str, Any] = json.loads(me.stdout)
    assert data["identity_type"] == "google"
    assert data["omni_account"] == omni_account_of(IdentityKind.GOOGLE, default_sub(GOOGLE_USER), "agentkeys")
