"""``agentkeys init wallet``: log in with an EVM wallet, by whichever backend the broker uses.

The key comes from exactly one of ``--keystore FILE`` (a Web3 Secret Storage JSON file; its
password from `AGENTKEYS_KEYSTORE_PASSWORD`, else asked on the terminal), ``--private-key-file
FILE`` (64 hex digits, ``0x`` optional) or ``--mnemonic-file FILE`` (a BIP-39 phrase; the account
``m/44'/60'/0'/0/<--account-index>``). Keystores and mnemonics are read by `eth-account`.

* ``heima`` backend: the CLI logs in at the worker the broker names, with client id ``agentkeys``
  (``omni_getWeb3SignInMessage`` for the account's OmniAccount, then ``omni_userLogin`` with an
  EIP-191 signature over the message), then presents the TEE access token to the broker
  (``GET /v1/whoami``): the broker accepts it only once the worker's ``post_heima_login`` reached it.
* ``local`` backend: ``POST /v1/auth/wallet/start``, an EIP-191 signature over the Sign-In with
  Ethereum message it returns (checked to name this address), ``POST /v1/auth/wallet/verify``.

Either way the bearer is stored (`credentials`) and the OmniAccount printed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp

from agentkeys_kit.client import credentials
from agentkeys_kit.client.api import (
    BrokerApi,
    CliError,
    heima_credential,
    heima_worker,
    normalise_url,
    session_credential,
)
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.signatures import evm_address, sign_evm_personal
from agentkeys_kit.protocol.web3_message import HeimaMessagePayload

DEFAULT_CHAIN_ID = 84532  # Base Sepolia, the AgentKeys CLI's default


def register(commands: Any, init: Any) -> None:
    wallet = init.add_parser("wallet", help="log in with an EVM wallet")
    add_key_source(wallet, required=True)
    wallet.add_argument("--chain-id", type=int, default=DEFAULT_CHAIN_ID, help="for the SIWE message (local)")
    wallet.set_defaults(handler=init_wallet)


# --------------------------------------------------------------------------- the key


def add_key_source(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--keystore | --private-key-file | --mnemonic-file`` (and ``--account-index``), read by
    `load_private_key`; `init wallet` and the agent's signed mints (`client/mint.py`) share them."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--keystore", type=Path, help="a keystore JSON file (password: AGENTKEYS_KEYSTORE_PASSWORD)")
    source.add_argument("--private-key-file", type=Path, help="a file holding the hex private key")
    source.add_argument("--mnemonic-file", type=Path, help="a file holding a BIP-39 mnemonic")
    parser.add_argument("--account-index", type=int, default=0, help="with --mnemonic-file (default 0)")


def has_key_source(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in ("keystore", "private_key_file", "mnemonic_file"))


def _read_secret_file(path: Path, what: str) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the {what} {path}: {getattr(exc, 'strerror', None) or exc}", 2) from None
    if mode & 0o077:
        print(
            f"agentkeys: warning: {path} is readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it",
            file=sys.stderr,
        )
    return text


def load_private_key(args: argparse.Namespace) -> bytes:
    from eth_account import Account

    if args.private_key_file is not None:
        text = _read_secret_file(args.private_key_file, "private key file").strip().removeprefix("0x")
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise CliError(f"{args.private_key_file} does not hold a private key (64 hex digits)", 2)
        return key
    if args.mnemonic_file is not None:
        words = " ".join(_read_secret_file(args.mnemonic_file, "mnemonic file").split())
        if args.account_index < 0:
            raise CliError("--account-index must not be negative", 2)
        Account.enable_unaudited_hdwallet_features()
        try:
            account = Account.from_mnemonic(words, account_path=f"m/44'/60'/0'/0/{args.account_index}")
        except Exception:
            raise CliError(f"{args.mnemonic_file} does not hold a valid BIP-39 mnemonic", 2) from None
        return bytes(account.key)
    document = _read_secret_file(args.keystore, "keystore")
    try:
        keystore = json.loads(document)
    except ValueError:
        raise CliError(f"{args.keystore} is not a keystore JSON file", 2) from None
    password = os.environ.get("AGENTKEYS_KEYSTORE_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise CliError("the keystore needs a password: set AGENTKEYS_KEYSTORE_PASSWORD", 2)
        password = getpass.getpass(f"password for {args.keystore}: ")
    try:
        return bytes(Account.decrypt(keystore, password))
    except ValueError:
        raise CliError(f"cannot decrypt {args.keystore}: wrong password?") from None
    except Exception:
        raise CliError(f"{args.keystore} is not a keystore this CLI can read", 2) from None


# --------------------------------------------------------------------------- the login


async def init_wallet(args: argparse.Namespace) -> int:
    key = load_private_key(args)
    address = "0x" + evm_address(key).hex()
    url = normalise_url(args.broker_url)
    async with aiohttp.ClientSession() as http:
        broker = BrokerApi(http, url)
        config = await broker.config()
        backend = config.get("backend")
        if backend == "heima":
            credential = await _heima_login(http, broker, config, key, address)
        elif backend == "local":
            credential = await _local_login(broker, key, address, args.chain_id)
        else:
            raise CliError(f"the broker names an unknown login backend {backend!r}")
    return credentials.keep(credential, f"evm {address}, {backend} backend")


async def _heima_login(
    http: aiohttp.ClientSession, broker: BrokerApi, config: dict[str, Any], key: bytes, address: str
) -> credentials.Credential:
    worker, client_id = heima_worker(http, config)
    account = omni_account_of(IdentityKind.EVM, address, client_id)
    result = await worker.call("omni_getWeb3SignInMessage", {"client_id": client_id, "omni_account": account})
    try:
        message = HeimaMessagePayload(**result)
    except TypeError:
        raise CliError("the worker's sign-in message is not {client_id, omni_account, message_code}") from None
    if message.omni_account != account or message.client_id != client_id:
        raise CliError("the worker's sign-in message names another account or client; not signing it")
    signature = sign_evm_personal(message.signing_bytes(), key)
    login = await worker.call(
        "omni_userLogin",
        {
            "user_id": {"type": "evm", "value": address},
            "user_auth": {"type": "evm", "value": "0x" + signature.hex()},
            "client_id": client_id,
        },
    )
    token = login.get("access_token") if isinstance(login, dict) else None
    if not isinstance(token, str):
        raise CliError("the worker's login answer carries no access_token")
    return await heima_credential(broker, token, account)


async def _local_login(broker: BrokerApi, key: bytes, address: str, chain_id: int) -> credentials.Credential:
    started = await broker.call("POST", "v1/auth/wallet/start", body={"address": address, "chain_id": chain_id})
    message = started.get("message")
    if not isinstance(message, str) or message.split("\n")[1:2] != [_eip55(address)]:
        raise CliError("the broker's sign-in message does not name this wallet; not signing it")
    signature = sign_evm_personal(message.encode("utf-8"), key)
    session = await broker.call(
        "POST",
        "v1/auth/wallet/verify",
        body={"request_id": started.get("request_id"), "signature": "0x" + signature.hex()},
    )
    return session_credential(broker.url, session)


def _eip55(address: str) -> str:
    """EIP-55: how a SIWE message writes the address (the CLI checks it names this wallet)."""
    from eth_hash.auto import keccak

    lower = address[2:].lower()
    digest = keccak(lower.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(lower, digest[:40], strict=True))
