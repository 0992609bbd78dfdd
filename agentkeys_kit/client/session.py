"""``agentkeys whoami`` and ``agentkeys logout``: the stored bearer, checked or revoked at the broker."""

from __future__ import annotations

import argparse
import json
from typing import Any

import aiohttp

from agentkeys_kit.client import credentials
from agentkeys_kit.client.api import BrokerApi, CliError, normalise_url


def register(commands: Any, init: Any) -> None:
    whoami = commands.add_parser("whoami", help="who the stored bearer is, as the broker sees it")
    whoami.set_defaults(handler=whoami_command)
    logout = commands.add_parser("logout", help="revoke the stored bearer at the broker and forget it")
    logout.set_defaults(handler=logout_command)


def _stored(url: str) -> credentials.Credential:
    credential = credentials.load(url)
    if credential is None:
        raise CliError(f"not logged in to {url}: run agentkeys init wallet")
    return credential


async def whoami_command(args: argparse.Namespace) -> int:
    url = normalise_url(args.broker_url)
    credential = _stored(url)
    async with aiohttp.ClientSession() as http:
        data = await BrokerApi(http, url).call("GET", "v1/whoami", token=credential.bearer)
    print(json.dumps({**data, "broker_url": url}, indent=2, sort_keys=True))
    return 0


async def logout_command(args: argparse.Namespace) -> int:
    url = normalise_url(args.broker_url)
    credential = _stored(url)
    try:
        async with aiohttp.ClientSession() as http:
            await BrokerApi(http, url).call("POST", "v1/auth/logout", token=credential.bearer)
    finally:
        credentials.forget(url)  # whatever the broker said, this host no longer holds it
    print(f"logged out of {url} ({credential.omni_account}); the bearer is revoked and forgotten")
    return 0
