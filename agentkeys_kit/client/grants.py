"""``agentkeys grant create|list|revoke``: a master wallet lets an agent wallet mint in a scope.

::

    agentkeys grant create --agent 0xAGENT --scope SERVICE[/PATH] (--expires-in 7d | --expires-at UNIX)
                           [--max-uses N]
    agentkeys grant list
    agentkeys grant revoke GRANT_ID

The stored bearer (``agentkeys init wallet``) is the master's; the broker's ``/v1/grant/*``
endpoints (`broker/grants.py`) decide. Each command prints the broker's grant (or grants) as JSON
on standard output. The agent then mints within the grant with ``agentkeys mint … --grant
GRANT_ID`` (`client/mint.py`), logged in with its own wallet.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

import aiohttp

from agentkeys_kit.client import credentials
from agentkeys_kit.client.api import BrokerApi, CliError, normalise_url

_DURATION = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """``90s``, ``30m``, ``12h``, ``7d`` → seconds (argparse type)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 12h or 7d")
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def register(commands: Any, init: Any) -> None:
    grant = commands.add_parser("grant", help="let an agent wallet mint for you in a scope (master wallet)")
    actions = grant.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="grant an agent wallet a scope until an expiry")
    create.add_argument("--agent", required=True, metavar="0xADDRESS", help="the agent's wallet address")
    create.add_argument("--scope", required=True, help="SERVICE or SERVICE/PATH-PREFIX, e.g. s3/reports")
    until = create.add_mutually_exclusive_group(required=True)
    until.add_argument("--expires-in", type=duration, metavar="DURATION", help="e.g. 12h or 7d")
    until.add_argument("--expires-at", type=int, metavar="UNIX", help="unix seconds")
    create.add_argument("--max-uses", type=int, default=None, help="mints allowed under it (default: no limit)")
    create.set_defaults(handler=create_command)
    actions.add_parser("list", help="your grants").set_defaults(handler=list_command)
    revoke = actions.add_parser("revoke", help="revoke a grant (the agent can no longer mint under it)")
    revoke.add_argument("grant_id", metavar="GRANT_ID")
    revoke.set_defaults(handler=revoke_command)


async def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> dict[str, Any]:
    url = normalise_url(args.broker_url)
    credential = credentials.load(url)
    if credential is None:
        raise CliError(f"not logged in to {url}: run agentkeys init wallet")
    async with aiohttp.ClientSession() as http:
        return await BrokerApi(http, url).call(method, path, token=credential.bearer, body=body)


def _field(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise CliError(f"the broker's answer has no {name} (is it an AgentKeys broker?)")
    return data[name]


async def create_command(args: argparse.Namespace) -> int:
    expires_at = args.expires_at if args.expires_at is not None else int(time.time()) + args.expires_in
    body: dict[str, Any] = {"agent_wallet": args.agent, "scope": args.scope, "expires_at": expires_at}
    if args.max_uses is not None:
        body["max_uses"] = args.max_uses
    data = await _call(args, "POST", "v1/grant/create", body)
    print(json.dumps(_field(data, "grant"), indent=2, sort_keys=True))
    return 0


async def list_command(args: argparse.Namespace) -> int:
    data = await _call(args, "GET", "v1/grant/list")
    print(json.dumps(_field(data, "grants"), indent=2, sort_keys=True))
    return 0


async def revoke_command(args: argparse.Namespace) -> int:
    data = await _call(args, "POST", "v1/grant/revoke", {"grant_id": args.grant_id})
    print(json.dumps(_field(data, "grant"), indent=2, sort_keys=True))
    return 0
