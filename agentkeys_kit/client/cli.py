"""``agentkeys``: log in to an AgentKeys broker and keep the bearer.

::

    agentkeys [--broker-url URL] init wallet (--keystore FILE | --private-key-file FILE | --mnemonic-file FILE)
    agentkeys [--broker-url URL] init email ADDRESS          (asks for the code sent to ADDRESS)
    agentkeys [--broker-url URL] init google [--login-hint EMAIL]   (prints a URL to open, waits)
    agentkeys [--broker-url URL] whoami
    agentkeys [--broker-url URL] logout
    agentkeys [--broker-url URL] mint oidc-jwt | mint aws-creds [--format json|credential-process]
    agentkeys [--broker-url URL] creds aws        (AWS credential_process output)
    agentkeys [--broker-url URL] grant create --agent 0x… --scope S[/P] --expires-in 7d | grant list | grant revoke ID
    agentkeys [--broker-url URL] mint … | creds aws  --grant ID --service S [--scope-path P] KEY   (as an agent)

The broker URL comes from ``--broker-url``, else `AGENTKEYS_BROKER_URL`, else
``http://127.0.0.1:8091``; everything else (the login backend, the worker for ``heima``) the CLI
reads from the broker's ``GET /v1/auth/config``. Each command lives in its own module, listed in
`COMMAND_MODULES`; a module's ``register(commands, init)`` adds its parsers (``init`` holds the
``agentkeys init <method>`` parsers) and sets ``handler``, an async function of the parsed
arguments returning the exit status. Failures are one line on standard error: exit 1 when
something was refused or failed, 2 for a usage or configuration mistake. A secret (key, password,
bearer) is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence

from agentkeys_kit.client.api import CliError
from agentkeys_kit.console import quiet_broken_pipe

DEFAULT_BROKER_URL = "http://127.0.0.1:8091"
#: Modules that register commands (``register(commands, init)``); other login methods add theirs.
COMMAND_MODULES = (
    "agentkeys_kit.client.wallet",
    "agentkeys_kit.client.login_email",
    "agentkeys_kit.client.login_google",
    "agentkeys_kit.client.session",
    "agentkeys_kit.client.mint",
    "agentkeys_kit.client.grants",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentkeys", description="log in to an AgentKeys broker")
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("AGENTKEYS_BROKER_URL") or DEFAULT_BROKER_URL,
        help="the broker (default: AGENTKEYS_BROKER_URL, else %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init_parser = commands.add_parser("init", help="log in and keep the bearer")
    init = init_parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands, init)
    return parser


@quiet_broken_pipe
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = asyncio.run(args.handler(args))
        return status
    except CliError as exc:
        print(f"agentkeys: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("agentkeys: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
