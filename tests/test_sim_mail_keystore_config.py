"""SMTP delivery to a real aiosmtpd server, the keystore file format, configuration and CLI."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from conftest import SimFactory, rpc
from cryptography.hazmat.primitives import serialization

from agentkeys_kit.omni_sim.config import ConfigError, MailerType, config_from_env
from agentkeys_kit.omni_sim.keystore import KeystoreError, load_auth_token_key
from agentkeys_kit.omni_sim.server import ServedApp
from agentkeys_kit.protocol.tee_jwt import AuthTokenClaims, encode_auth_token

ROOT = Path(__file__).parent.parent


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_sink() -> Any:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


async def test_smtp_mailer_delivers_the_code_to_a_real_smtp_server(
    make_sim: SimFactory, http: aiohttp.ClientSession, smtp_sink: Any
) -> None:
    controller, inbox = smtp_sink
    sim = await make_sim(
        env={
            "OE_MAILER_TYPE_WILDMETA": "smtp",
            "OE_MAILER_SMTP_URL_WILDMETA": f"smtp://127.0.0.1:{controller.port}",
            "OE_MAILER_FROM_EMAIL_WILDMETA": "codes@wildmeta.test",
        }
    )
    params = {"client_id": "wildmeta", "user_email": "carol@example.com"}
    assert (await rpc(http, sim.url, "omni_requestEmailVerificationCode", params))["result"] is None
    [mail] = inbox.messages
    assert mail["Subject"] == "Email Verification - Wildmeta"
    assert mail["To"] == "carol@example.com"
    [stored] = sim.context.outbox.list("carol@example.com")
    assert stored.code in mail.get_payload()


async def test_generic_subject_for_other_clients(
    make_sim: SimFactory, http: aiohttp.ClientSession, smtp_sink: Any
) -> None:
    controller, inbox = smtp_sink
    sim = await make_sim(
        env={
            "OE_MAILER_TYPE_AGENTKEYS": "smtp",
            "OE_MAILER_SMTP_URL_AGENTKEYS": f"smtp://127.0.0.1:{controller.port}",
        }
    )
    await rpc(
        http,
        sim.url,
        "omni_requestEmailVerificationCode",
        {"client_id": "agentkeys", "user_email": "d@e.io"},
    )
    assert inbox.messages[0]["Subject"] == "Verify your email"


async def test_unreachable_smtp_server_gives_email_service_error_and_keeps_the_code(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(
        env={
            "OE_MAILER_TYPE_WILDMETA": "smtp",
            "OE_MAILER_SMTP_URL_WILDMETA": f"smtp://127.0.0.1:{free_port()}",
        }
    )
    answer = await rpc(
        http,
        sim.url,
        "omni_requestEmailVerificationCode",
        {"client_id": "wildmeta", "user_email": "e@f.io"},
    )
    assert answer["error"] == {
        "code": -32162,
        "message": "Email service error",
        "data": {
            "field": "email",
            "received": "e@f.io",
            "suggestion": "Failed to send verification email. Please try again later.",
        },
    }
    assert len(sim.context.codes) == 1  # stored before the mailer ran, as in the worker


class SendGridApi:
    """A stand-in for SendGrid's v3 mail-send endpoint that records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 202
        self.served = ServedApp()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v3/mail/send", self._send)
        await self.served.start(app)
        return self.served.url + "v3/mail/send"

    async def _send(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status)


@pytest.fixture
async def sendgrid() -> AsyncIterator[tuple[SendGridApi, str]]:
    api = SendGridApi()
    url = await api.start()
    yield api, url
    await api.served.close()


async def test_sendgrid_mailer_posts_what_the_worker_posts_to_the_configured_host(
    make_sim: SimFactory, http: aiohttp.ClientSession, sendgrid: tuple[SendGridApi, str]
) -> None:
    api, url = sendgrid
    sim = await make_sim(
        env={
            "OE_MAILER_TYPE_WILDMETA": "sendgrid",
            "OE_MAILER_API_HOST_WILDMETA": url,
            "OE_MAILER_API_KEY_WILDMETA": "SG.test",
        }
    )
    params = {"client_id": "wildmeta", "user_email": "Carol@Example.com"}
    assert (await rpc(http, sim.url, "omni_requestEmailVerificationCode", params))["result"] is None
    [(headers, body)] = api.requests
    assert headers["Authorization"] == "Bearer SG.test"
    assert headers["Content-Type"] == "application/json" and headers["User-Agent"] == "sendgrid-rs"
    [stored] = sim.context.outbox.list("carol@example.com")
    html_value = (
        '<!DOCTYPE html><html><body><p>Your verification code is:</p><p style="font-size: 16px; font-weight: 600;">'
        + stored.code
        + "</p></body></html>"
    )
    expected = {
        "from": {"email": "no-reply@example.com", "name": "Heima Verify"},
        "subject": "Email Verification - Wildmeta",
        "personalizations": [{"to": [{"email": "Carol@Example.com"}]}],
        "content": [{"type": "text/html", "value": html_value}],
    }
    assert body == json.dumps(expected, separators=(",", ":")).encode()  # compact, serde's field order


@pytest.mark.parametrize("status", [400, 401, 500])
async def test_sendgrid_refusal_is_an_email_service_error(
    make_sim: SimFactory, http: aiohttp.ClientSession, sendgrid: tuple[SendGridApi, str], status: int
) -> None:
    api, url = sendgrid
    api.status = status
    sim = await make_sim(env={"OE_MAILER_TYPE_AGENTKEYS": "sendgrid", "OE_MAILER_API_HOST_AGENTKEYS": url})
    answer = await rpc(
        http, sim.url, "omni_requestEmailVerificationCode", {"client_id": "agentkeys", "user_email": "a@b.io"}
    )
    assert answer["error"]["code"] == -32162 and len(api.requests) == 1
    assert sim.context.outbox.list() == []


async def test_unreachable_sendgrid_host_is_an_email_service_error(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(
        env={
            "OE_MAILER_TYPE_WILDMETA": "sendgrid",
            "OE_MAILER_API_HOST_WILDMETA": f"http://127.0.0.1:{free_port()}/v3/mail/send",
        }
    )
    answer = await rpc(
        http, sim.url, "omni_requestEmailVerificationCode", {"client_id": "wildmeta", "user_email": "e@f.io"}
    )
    assert answer["error"]["code"] == -32162


async def test_client_without_mailer_gets_external_api_error(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    answer = await rpc(
        http,
        sim.url,
        "omni_requestEmailVerificationCode",
        {"client_id": "pumpx", "user_email": "a@b.io"},
    )
    assert answer["error"] == {
        "code": -32164,
        "message": "Failed to initialize email service",
        "data": {
            "field": "client_id",
            "received": "pumpx",
            "reason": "Error: No mailer configuration found for client 'pumpx'",
        },
    }


# --------------------------------------------------------------------------- keystore


def test_keystore_is_created_as_pkcs1_der_rsa_2048(tmp_path: Path) -> None:
    key = load_auth_token_key(tmp_path)
    path = tmp_path / "keystore" / "auth_token_key.bin"
    assert key.key_size == 2048
    assert path.read_bytes() == key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert path.read_bytes()[:2] == b"\x30\x82"  # DER SEQUENCE, not PEM
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_existing_key_file_is_used_as_is(tmp_path: Path) -> None:
    fixture = Path(__file__).parent.parent / "fixtures" / "keys" / "auth_token_key.test.bin"
    (tmp_path / "keystore").mkdir()
    (tmp_path / "keystore" / "auth_token_key.bin").write_bytes(fixture.read_bytes())
    claims = AuthTokenClaims("0x" + "ab" * 32, "id", 1_800_000_000, "wildmeta")
    first = encode_auth_token(claims, load_auth_token_key(tmp_path))
    assert first == encode_auth_token(claims, load_auth_token_key(tmp_path))
    assert (tmp_path / "keystore" / "auth_token_key.bin").read_bytes() == fixture.read_bytes()


def test_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "keystore").mkdir()
    (tmp_path / "keystore" / "auth_token_key.bin").write_bytes(b"not a key")
    with pytest.raises(KeystoreError, match="PKCS#1 DER"):
        load_auth_token_key(tmp_path)


# --------------------------------------------------------------------------- configuration


def test_worker_url_port_is_the_rpc_port_and_flags_win() -> None:
    assert config_from_env({"OE_PUMPX_WORKER_URL": "wss://w.example"}).port == 443
    assert config_from_env({"OE_PUMPX_WORKER_URL": "ws://w:2101"}).port == 2101
    assert config_from_env({"OE_PUMPX_WORKER_URL": "ws://w:2101"}, port=9).port == 9
    assert config_from_env({"OE_SIM_PROFILE": "upstream"}, profile="agentkeys-patch").profile == "agentkeys-patch"


def test_patch_variables_are_read() -> None:
    config = config_from_env(
        {
            "OE_AGENTKEYS_API_BASE_URL": "http://broker:8091/",
            "OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY": "03" + "11" * 32,
        }
    )
    assert config.agentkeys_api_base_url == "http://broker:8091/"
    assert config.agentkeys_backend_ecdsa_pubkey == bytes.fromhex("03" + "11" * 32)


def test_without_mailer_variables_only_a_console_client_exists_with_the_workers_fallback_sender() -> None:
    config = config_from_env({})
    assert config.mailer_for("wildmeta") is None
    console = config.mailer_for("console")
    assert console is not None and console.type is MailerType.CONSOLE
    assert (console.from_email, console.from_name) == ("test@example.com", "Default Console Mailer")


def test_mailer_sender_defaults_are_the_workers() -> None:
    mailer = config_from_env({"OE_MAILER_TYPE_WILDMETA": "console"}).mailer_for("wildmeta")
    assert mailer is not None
    assert (mailer.from_email, mailer.from_name) == ("no-reply@example.com", "Heima Verify")


@pytest.mark.parametrize("value", ["pigeon", " console", "smtp2", ""])
def test_an_unknown_mailer_type_falls_back_to_sendgrid_as_in_the_worker(value: str) -> None:
    mailer = config_from_env({"OE_MAILER_TYPE_AGENTKEYS": value}).mailer_for("AgentKeys")
    assert mailer is not None and mailer.type is MailerType.SENDGRID and mailer.unknown_type == value
    assert mailer.sendgrid_url == "https://api.sendgrid.com/v3/mail/send"
    assert "falls back to sendgrid" in mailer.describe()


def test_mailer_type_is_case_insensitive_and_clients_are_keyed_lowercase() -> None:
    config = config_from_env({"OE_MAILER_TYPE_WILDMETA": "CONSOLE"})
    assert config.mailer_for("WildMeta") is config.mailer_for("wildmeta")
    assert config.mailer_for("wildmeta").type is MailerType.CONSOLE  # type: ignore[union-attr]


def test_a_lowercase_mailer_variable_names_a_client_whose_settings_are_read_uppercase() -> None:
    # The worker lowercases the suffix, then reads OE_MAILER_TYPE_WILDMETA, which is not set:
    # the client exists with the default type, sendgrid.
    mailer = config_from_env({"OE_MAILER_TYPE_wildmeta": "console"}).mailer_for("wildmeta")
    assert mailer is not None and mailer.type is MailerType.SENDGRID and mailer.unknown_type is None


def test_sendgrid_host_key_and_sender_are_read_and_the_key_never_shown() -> None:
    env = {
        "OE_MAILER_TYPE_WILDMETA": "sendgrid",
        "OE_MAILER_API_HOST_WILDMETA": "http://127.0.0.1:9/v3/mail/send",
        "OE_MAILER_API_KEY_WILDMETA": "SG.secret-key",
        "OE_MAILER_FROM_EMAIL_WILDMETA": "codes@wildmeta.test",
        "OE_MAILER_FROM_NAME_WILDMETA": "Wildmeta",
    }
    mailer = config_from_env(env).mailer_for("wildmeta")
    assert mailer is not None and mailer.sendgrid_url == "http://127.0.0.1:9/v3/mail/send"
    assert mailer.api_key == "SG.secret-key" and (mailer.from_email, mailer.from_name) == (
        "codes@wildmeta.test",
        "Wildmeta",
    )
    assert "SG.secret-key" not in repr(mailer) and "SG.secret-key" not in mailer.describe()
    empty_host = config_from_env({**env, "OE_MAILER_API_HOST_WILDMETA": ""}).mailer_for("wildmeta")
    assert empty_host is not None and empty_host.api_host is None


def test_the_rpc_port_defaults_to_the_simulators_2100_and_the_workers_default_url_gives_443() -> None:
    assert config_from_env({}).port == 2100
    assert config_from_env({"OE_PUMPX_WORKER_URL": "wss://dev-dex-worker.heima.network"}).port == 443


@pytest.mark.parametrize(
    "env",
    [
        {"OE_WILDMETA_BACKEND_ECDSA_PUBKEY": "02"},
        {"OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY": "zz" * 33},
        {"OE_MAILER_TYPE_WILDMETA": "smtp"},
        {"OE_MAILER_TYPE_WILDMETA": "sendgrid", "OE_MAILER_API_HOST_WILDMETA": "api.sendgrid.com"},
        {"OE_SIM_PROFILE": "downstream"},
        {"OE_RPC_SERVER_MAX_CONNECTIONS": "-1"},
    ],
)
def test_bad_configuration_is_refused_with_a_message(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        config_from_env(env)


def test_cli_reports_configuration_errors(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "agentkeys_kit.omni_sim.cli", "run", "--local-dir", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OE_SIM_ERROR_ERA": "bronze"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "OE_SIM_ERROR_ERA" in bad.stderr


async def test_cli_serves_json_rpc_and_the_sim_endpoints(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentkeys_kit.omni_sim.cli", "run", "--port", "0", "--local-dir", str(tmp_path),
        "--profile", "agentkeys-patch", env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url = banner.split()[3]
        async with aiohttp.ClientSession() as http:
            assert (await rpc(http, url, "omni_getHealth"))["result"] == "OK"
            async with http.get(url + "_sim/info") as response:
                assert (await response.json())["profile"] == "agentkeys-patch"
    finally:
        proc.terminate()
        await proc.wait()
