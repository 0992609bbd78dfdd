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

These commands print credentials on standard output, which is what they are for; nothing else
(errors, notes) goes there, and the bearer is never printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

import aiohttp

from agentkeys_kit.client import credentials
from agentkeys_kit.client.api import TIMEOUT, CliError, normalise_url

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
    tools.add_parser("aws", help="AWS credential_process output").set_defaults(handler=creds_aws_command)


async def mint(broker_url: str, path: str) -> dict[str, Any]:
    """POST an empty body with the stored bearer; the broker's plain JSON answer, or a `CliError`."""
    url = normalise_url(broker_url)
    credential = credentials.load(url)
    if credential is None:
        raise CliError(f"not logged in to {url}: run agentkeys init wallet")
    headers = {"Authorization": f"Bearer {credential.bearer}"}
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + path, data=b"", headers=headers, timeout=TIMEOUT) as response,
        ):
            status, text = response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise CliError(f"cannot reach the broker at {url}: {type(exc).__name__}") from None
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
    print(json.dumps(await mint(args.broker_url, OIDC_PATH)))
    return 0


async def mint_aws_command(args: argparse.Namespace) -> int:
    answer = await mint(args.broker_url, AWS_PATH)
    print(json.dumps(credential_process(answer) if args.format == "credential-process" else answer))
    return 0


async def creds_aws_command(args: argparse.Namespace) -> int:
    print(json.dumps(credential_process(await mint(args.broker_url, AWS_PATH))))
    return 0
