"""The `agentkeys` CLI run as a user runs it (a subprocess, HOME and the keychain in tmp_path):
``init wallet`` against a broker whose backend is ``heima`` (the simulator in the agentkeys-patch
profile plays the worker) and against a ``local`` broker; ``whoami`` then names the OmniAccount
the worker computes; ``logout`` revokes the bearer. Both databases."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest
from conftest import BrokerFactory, BrokerHandle, SimFactory
from cryptography.hazmat.primitives.asymmetric import rsa
from eth_account import Account

from agentkeys_kit.conformance.worker_client import WorkerClient
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.tee_jwt import unverified_claims
from fixtures.wallets import EVM_ALICE_KEY, EVM_BOB_KEY, evm_user_id_value

AGENTKEYS = str(Path(sys.executable).parent / "agentkeys")
ROOT = Path(__file__).parent.parent
#: Hardhat's well-known test mnemonic and its first account (m/44'/60'/0'/0/0).
MNEMONIC = "test test test test test test test test test test test junk"
MNEMONIC_ADDRESS = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"


class Ran(NamedTuple):
    status: int
    stdout: str
    stderr: str


class User:
    """A user's home in tmp_path: HOME, XDG dirs, and which keyring backend the CLI finds."""

    def __init__(self, home: Path, keychain: bool) -> None:
        self.home = home
        home.mkdir(exist_ok=True)
        self.keyring_file = home / "test-keyring.json"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "PYTHONPATH": str(ROOT),
            "PYTHON_KEYRING_BACKEND": (
                "fixtures.file_keyring.FileKeyring" if keychain else "keyring.backends.fail.Keyring"
            ),
            "AGENTKEYS_TEST_KEYRING_FILE": str(self.keyring_file),
        }

    async def run(self, *args: str, **env: str) -> Ran:
        process = await asyncio.create_subprocess_exec(
            AGENTKEYS,
            *args,
            env={**self.env, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return Ran(process.returncode, out.decode(), err.decode())

    def key_file(self, key: bytes) -> Path:
        path = self.home / "wallet.key"
        path.write_text("0x" + key.hex() + "\n")
        path.chmod(0o600)
        return path

    @property
    def credentials_file(self) -> Path:
        return self.home / ".config" / "agentkeys" / "credentials.json"


async def heima_pair(
    make_sim: SimFactory, make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey
) -> tuple[str, BrokerHandle]:
    broker = await make_broker(env={"BROKER_LOGIN_BACKEND": "heima"})
    sim = await make_sim(profile="agentkeys-patch", env={"OE_AGENTKEYS_API_BASE_URL": broker.url}, jwt_key=tee_key)
    # the worker's URL is known once it listens; a deployment sets BROKER_HEIMA_WORKER_URL
    broker.state.config = dataclasses.replace(broker.state.config, heima_worker_url=sim.url)
    return sim.url, broker


async def workers_omni_account(http: aiohttp.ClientSession, sim_url: str, key: bytes) -> str:
    """The OmniAccount the worker computes for this wallet: the ``sub`` of its access token."""
    login = await WorkerClient(http, sim_url).evm_login(key, "agentkeys")
    return str(unverified_claims(login["result"]["access_token"])["sub"])


@pytest.mark.parametrize("keychain", [True, False], ids=["keychain", "file"])
async def test_init_wallet_through_the_worker_then_whoami_and_logout(
    keychain: bool,
    make_sim: SimFactory,
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    sim_url, broker = await heima_pair(make_sim, make_broker, tee_key)
    user = User(tmp_path / "home", keychain)
    init = await user.run(
        "--broker-url", broker.url, "init", "wallet", "--private-key-file", str(user.key_file(EVM_ALICE_KEY))
    )
    assert init.status == 0, init
    assert "heima backend" in init.stdout
    if keychain:
        assert "OS keychain (FileKeyring)" in init.stdout and not user.credentials_file.exists()
        stored = json.loads(user.keyring_file.read_text())
    else:
        assert str(user.credentials_file) in init.stdout and "no usable OS keychain" in init.stdout
        assert user.credentials_file.stat().st_mode & 0o777 == 0o600
        stored = json.loads(user.credentials_file.read_text())
    bearer = next(iter(stored.values()))
    bearer = json.loads(bearer)["bearer"] if isinstance(bearer, str) else bearer["bearer"]
    assert bearer not in init.stdout + init.stderr  # never printed
    assert unverified_claims(bearer)["typ"] == "access"  # the TEE access token is the bearer

    me = await user.run("whoami", AGENTKEYS_BROKER_URL=broker.url)
    assert me.status == 0, me
    data = json.loads(me.stdout)
    expected = omni_account_of(IdentityKind.EVM, evm_user_id_value(EVM_ALICE_KEY), "agentkeys")
    assert data["omni_account"] == expected == unverified_claims(bearer)["sub"]
    assert data["via"] == "tee" and data["wallet"] == evm_user_id_value(EVM_ALICE_KEY)
    assert data["omni_account"] == await workers_omni_account(http, sim_url, EVM_ALICE_KEY)

    out = await user.run("--broker-url", broker.url, "logout")
    assert out.status == 0, out
    again = await user.run("--broker-url", broker.url, "whoami")
    assert again.status == 1 and "not logged in" in again.stderr
    async with http.get(broker.url + "v1/whoami", headers={"Authorization": f"Bearer {bearer}"}) as response:
        assert response.status == 401  # revoked at the broker, not only forgotten here


async def test_init_wallet_against_the_local_backend_names_the_workers_omni_account(
    make_sim: SimFactory,
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    broker = await make_broker(env={"BROKER_LOGIN_BACKEND": "local"})
    other = await make_broker(env={"BROKER_LOGIN_BACKEND": "heima"})
    sim = await make_sim(profile="agentkeys-patch", env={"OE_AGENTKEYS_API_BASE_URL": other.url}, jwt_key=tee_key)
    user = User(tmp_path / "home", keychain=False)
    init = await user.run(
        "--broker-url", broker.url, "init", "wallet", "--private-key-file", str(user.key_file(EVM_BOB_KEY))
    )
    assert init.status == 0, init
    assert "local backend" in init.stdout
    me = await user.run("--broker-url", broker.url, "whoami")
    assert me.status == 0, me
    data = json.loads(me.stdout)
    assert data["via"] == "session" and data["identity_type"] == "evm"
    assert data["omni_account"] == await workers_omni_account(http, sim.url, EVM_BOB_KEY)


async def test_init_wallet_from_a_mnemonic_and_from_a_keystore(make_broker: BrokerFactory, tmp_path: Path) -> None:
    broker = await make_broker(env={"BROKER_LOGIN_BACKEND": "local"})
    user = User(tmp_path / "home", keychain=False)
    mnemonic = user.home / "mnemonic.txt"
    mnemonic.write_text(MNEMONIC + "\n")
    mnemonic.chmod(0o600)
    ran = await user.run("--broker-url", broker.url, "init", "wallet", "--mnemonic-file", str(mnemonic))
    assert ran.status == 0, ran
    assert f"evm {MNEMONIC_ADDRESS}" in ran.stdout

    keystore = user.home / "keystore.json"
    keystore.write_text(json.dumps(Account.encrypt(EVM_ALICE_KEY, "correct horse", iterations=2)))
    keystore.chmod(0o600)
    wrong = await user.run(
        "--broker-url", broker.url, "init", "wallet", "--keystore", str(keystore), AGENTKEYS_KEYSTORE_PASSWORD="nope"
    )
    assert wrong.status == 1 and "wrong password" in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    ran = await user.run(
        "--broker-url",
        broker.url,
        "init",
        "wallet",
        "--keystore",
        str(keystore),
        AGENTKEYS_KEYSTORE_PASSWORD="correct horse",
    )
    assert ran.status == 0, ran
    assert f"evm {evm_user_id_value(EVM_ALICE_KEY)}" in ran.stdout
    assert "correct horse" not in ran.stdout + ran.stderr


async def test_clear_one_line_errors(make_broker: BrokerFactory, tmp_path: Path) -> None:
    user = User(tmp_path / "home", keychain=False)
    key = str(user.key_file(EVM_ALICE_KEY))
    unreachable = await user.run("--broker-url", "http://127.0.0.1:1/", "init", "wallet", "--private-key-file", key)
    assert unreachable.status == 1 and unreachable.stderr.startswith("agentkeys: cannot reach the broker at")
    assert len(unreachable.stderr.splitlines()) == 1
    bad_key = user.home / "bad.key"
    bad_key.write_text("not hex")
    broker = await make_broker(env={"BROKER_LOGIN_BACKEND": "local"})
    ran = await user.run("--broker-url", broker.url, "init", "wallet", "--private-key-file", str(bad_key))
    assert ran.status == 2 and "does not hold a private key" in ran.stderr
    not_in = await user.run("--broker-url", broker.url, "whoami")
    assert not_in.status == 1 and "not logged in" in not_in.stderr
    heima = await make_broker()
    no_worker = await user.run("--broker-url", heima.url, "init", "wallet", "--private-key-file", key)
    assert no_worker.status == 1 and "names no worker" in no_worker.stderr
    assert "Traceback" not in unreachable.stderr + ran.stderr + no_worker.stderr


async def test_a_silent_broker_is_no_answer_within_the_timeout(tmp_path: Path) -> None:
    """A broker that accepts and never answers: not "cannot reach" but "no answer within", after
    `AGENTKEYS_HTTP_TIMEOUT_SECONDS`; a bad value there is one line, exit 2."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    user = User(tmp_path / "home", keychain=False)
    try:
        key = str(user.key_file(EVM_ALICE_KEY))
        args = ("--broker-url", f"http://127.0.0.1:{port}/", "init", "wallet", "--private-key-file", key)
        ran = await user.run(*args, AGENTKEYS_HTTP_TIMEOUT_SECONDS="1")
        assert ran.status == 1, ran
        assert ran.stderr == f"agentkeys: no answer from the broker at http://127.0.0.1:{port}/ within 1 s\n"
        bad = await user.run(*args, AGENTKEYS_HTTP_TIMEOUT_SECONDS="soon")
        assert bad.status == 2 and bad.stderr.count("\n") == 1 and "AGENTKEYS_HTTP_TIMEOUT_SECONDS" in bad.stderr
    finally:
        server.close()
        await server.wait_closed()


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``agentkeys … | head -c 10``: the pipe's reader leaves before the command writes; no
    traceback, the status a shell gives such a command (141)."""
    user = User(tmp_path / "home", keychain=False)
    process = subprocess.Popen(
        [AGENTKEYS, "--help"], env=user.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the interpreter has even imported the CLI
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 141, stderr
    assert stderr == ""
