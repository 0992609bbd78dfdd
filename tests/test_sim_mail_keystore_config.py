"""SMTP delivery to a real aiosmtpd server, the keystore file format, configuration and CLI."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from conftest import SimFactory, rpc
from cryptography.hazmat.primitives import serialization

from agentkeys_kit.omni_sim.config import ConfigError, config_from_env
from agentkeys_kit.omni_sim.keystore import KeystoreError, load_auth_token_key
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


def test_without_mailer_variables_only_a_console_client_exists() -> None:
    config = config_from_env({})
    assert config.mailer_for("console") is not None and config.mailer_for("wildmeta") is None


@pytest.mark.parametrize(
    "env",
    [
        {"OE_WILDMETA_BACKEND_ECDSA_PUBKEY": "02"},
        {"OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY": "zz" * 33},
        {"OE_MAILER_TYPE_WILDMETA": "sendgrid"},
        {"OE_MAILER_TYPE_WILDMETA": "smtp"},
        {"OE_MAILER_TYPE_WILDMETA": "pigeon"},
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
