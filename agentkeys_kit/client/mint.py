"""``agentkeys mint oidc-jwt``, ``agentkeys mint aws-creds`` and ``agentkeys creds aws``: credentials
minted by the broker for the stored bearer (`agentkeys init …`).

* ``mint oidc-jwt`` prints ``{jwt, wallet, expiration}`` (the broker's answer);
* ``mint aws-creds`` prints ``{access_key_id, secret_access_key, session_token, expiration,
  wallet}``, or with ``--format credential-process`` what ``creds aws`` prints;
* ``creds aws`` prints the AWS CLI's ``credential_process`` document (``Version`` 1,
  ``AccessKeyId``, ``SecretAccessKey``, ``SessionToken``, ``Expiration`` in ISO 8601 UTC), so that

      [profile agentkeys]
      credential_process = agentkeys creds aws

  in ``~/.aws/config`` lets any AWS tool use the broker's credentials. The AWS tools call it again
  when ``Expiration`` nears; nothing is cached on disk.

An agent acting within a grant its master gave it (``agentkeys grant create``) adds ``--grant
GRANT_ID --service SERVICE [--scope-path PATH]`` and its wallet's key (``--keystore``,
``--private-key-file`` or ``--mnemonic-file``, as for ``init wallet``): the CLI sends the signed
body of `broker/agent_mint.py` (a fresh ``request_id``, ``issued_at`` now, the EIP-191 signature
over the method, the path and the canonical body), with the bearer of the agent's own login. So
an agent's ``~/.aws/config`` reads, e.g.::

    credential_process = agentkeys creds aws --grant g_… --service s3 --scope-path reports --private-key-file k

These commands print credentials on standard output, which is what they are for; nothing else
(errors, notes) goes there, and the bearer and the key are never printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agentkeys_kit.client import credentials
from agentkeys_kit.client.api import CliError, normalise_url, timeout, unreachable
from agentkeys_kit.client.wallet import add_key_source, has_key_source, load_private_key
from agentkeys_kit.protocol.signatures import evm_address, sign_evm_personal

OIDC_PATH = "v1/mint-oidc-jwt"
AWS_PATH = "v1/mint-aws-creds"
FORMATS = ("json", "credential-process")


def register(commands: Any, init: Any) -> None:
    mint = commands.add_parser("mint", help="mint a credential for the stored bearer")
    kinds = mint.add_subparsers(dest="kind", required=True, metavar="KIND")
    oidc = kinds.add_parser("oidc-jwt", help="an OIDC JWT that AWS STS accepts ({jwt, wallet, expiration})")
    oidc.set_defaults(handler=mint_oidc_command)
    aws = kinds.add_parser("aws-creds", help="short-lived AWS credentials")
    aws.add_argument("--format", choices=FORMATS, default="json", help="json (default) or credential-process")
    aws.set_defaults(handler=mint_aws_command)
    creds = commands.add_parser("creds", help="credentials in the format a tool reads")
    tools = creds.add_subparsers(dest="tool", required=True, metavar="TOOL")
    creds_aws = tools.add_parser("aws", help="AWS credential_process output")
    creds_aws.set_defaults(handler=creds_aws_command)
    for parser in (oidc, aws, creds_aws):
        _agent_options(parser)


def _agent_options(parser: argparse.ArgumentParser) -> None:
    agent = parser.add_argument_group("as an agent within a grant (a signed mint)")
    agent.add_argument("--grant", metavar="GRANT_ID", help="the grant your master gave this wallet")
    agent.add_argument("--service", help="the grant's service (with --grant)")
    agent.add_argument("--scope-path", default="", help="a path inside the grant's scope (with --grant)")
    add_key_source(parser, required=False)


def agent_body(args: argparse.Namespace, url: str) -> bytes | None:
    """The signed agent body for `url` (None without ``--grant``); usage mistakes are exit 2."""
    if args.grant is None:
        if has_key_source(args) or args.service is not None or args.scope_path:
            raise CliError("--service, --scope-path and a key sign an agent mint: add --grant GRANT_ID", 2)
        return None
    if not args.service:
        raise CliError("--grant needs --service (the grant's service)", 2)
    if not has_key_source(args):
        raise CliError("--grant needs the agent wallet's key: --keystore, --private-key-file or --mnemonic-file", 2)
    from agentkeys_kit.broker.agent_mint import canonical_json, signing_input  # the broker's own rule

    key = load_private_key(args)
    body: dict[str, Any] = {
        "request_id": "cli-" + secrets.token_hex(16),
        "issued_at": int(time.time()),
        "intent": {"agent_id": args.grant, "service": args.service, "scope_path": args.scope_path},
        "auth": {"address": "0x" + evm_address(key).hex()},
    }
    signature = sign_evm_personal(signing_input("POST", urlsplit(url).path, body), key)
    body["auth"]["signature"] = "0x" + signature.hex()
    return canonical_json(body)


async def mint(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """POST with the stored bearer: an empty body (for the caller), or with ``--grant`` the agent's
    signed body; the broker's plain JSON answer, or a `CliError`."""
    url = normalise_url(args.broker_url)
    credential = credentials.load(url)
    if credential is None:
        raise CliError(f"not logged in to {url}: run agentkeys init wallet")
    body = agent_body(args, url + path) or b""
    headers = {"Authorization": f"Bearer {credential.bearer}"}
    if body:
        headers["Content-Type"] = "application/json"
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + path, data=body, headers=headers, timeout=timeout()) as response,
        ):
            status, text = response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise unreachable("broker", url, exc) from None
    try:
        reply = json.loads(text)
    except ValueError:
        raise CliError(f"the broker at {url} answered HTTP {status} without JSON (is it a broker?)") from None
    if status == 200 and isinstance(reply, dict) and "code" not in reply:
        return reply
    data = reply.get("data") if isinstance(reply, dict) else None
    error = data.get("error") if isinstance(data, dict) else None
    reason = data.get("reason") if isinstance(data, dict) else None
    message = reply.get("message") if isinstance(reply, dict) else None
    detail = f"{error}" + (f": {reason}" if reason else "") if error else f"HTTP {status}"
    raise CliError(f"the broker refused: {message or detail} ({detail})")


def credential_process(answer: dict[str, Any]) -> dict[str, Any]:
    """The AWS CLI's ``credential_process`` document for a ``mint-aws-creds`` answer."""
    try:
        expiration = dt.datetime.fromtimestamp(int(answer["expiration"]), dt.UTC)
        return {
            "Version": 1,
            "AccessKeyId": str(answer["access_key_id"]),
            "SecretAccessKey": str(answer["secret_access_key"]),
            "SessionToken": str(answer["session_token"]),
            "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    except (KeyError, TypeError, ValueError, OverflowError):
        raise CliError("the broker's answer is not a set of AWS credentials") from None


async def mint_oidc_command(args: argparse.Namespace) -> int:
    print(json.dumps(await mint(args, OIDC_PATH)))
    return 0


async def mint_aws_command(args: argparse.Namespace) -> int:
    answer = await mint(args, AWS_PATH)
    print(json.dumps(credential_process(answer) if args.format == "credential-process" else answer))
    return 0


async def creds_aws_command(args: argparse.Namespace) -> int:
    print(json.dumps(credential_process(await mint(args, AWS_PATH))))
    return 0
