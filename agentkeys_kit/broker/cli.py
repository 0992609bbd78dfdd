"""`agentkeys-broker run --host --port [--skip-startup-check]` and the operator commands
`agentkeys-broker grants …`, `agentkeys-broker audit verify|tail|export` (the audit chain, JSON
lines; `verify` exits 1 when the chain is broken) and `agentkeys-broker oidc rotate` (a new OIDC
signing key; running brokers pick it up within seconds, see `broker.oidc`).

Both read the `BROKER_*` variables (see `broker.config`); flags win. The grants command works on
the database directly (`BROKER_DB_URL`, `BROKER_DB_SCHEMA`) and writes the same audit rows as the
HTTP API, with ``remote_addr = "operator"``. It never creates or migrates anything: a database or
schema that does not exist, or that the broker has not migrated yet, is one line saying so.
Every failure is one line on stderr and a non-zero exit status: 1 for a refusal or a database
failure, 2 for a usage or configuration mistake.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from agentkeys_kit.broker import audit_chain
from agentkeys_kit.broker.app import StartupCheckFailed, create_app
from agentkeys_kit.broker.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    BrokerConfig,
    BrokerConfigError,
    config_from_env,
    database_from_env,
    oidc_keypair_path,
)
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.grants import validate_grant_request, validate_max_uses
from agentkeys_kit.broker.observability import configure_logging
from agentkeys_kit.broker.oidc import OidcKeyError, rotate
from agentkeys_kit.broker.server import serve_until_stopped
from agentkeys_kit.broker.sessions import SessionKeyError
from agentkeys_kit.broker.storage import AuditEvent, StorageError, open_database, store
from agentkeys_kit.broker.tee_keys import TeeKeyError
from agentkeys_kit.console import quiet_broken_pipe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentkeys-broker", description="AgentKeys credential broker")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the callbacks, grants and health endpoints")
    run.add_argument("--host", default=None)
    run.add_argument("--port", type=int, default=None)
    run.add_argument("--log-level", default=None, choices=LOG_LEVELS, help="overrides BROKER_LOG_LEVEL")
    run.add_argument("--log-format", default=None, choices=LOG_FORMATS, help="overrides BROKER_LOG_FORMAT")
    run.add_argument("--skip-startup-check", action="store_true", help="do not call sts:GetCallerIdentity at start")

    grants = sub.add_parser("grants", help="operator access to grants (works on BROKER_DB_URL)")
    gsub = grants.add_subparsers(dest="grants_command", required=True)
    listing = gsub.add_parser("list", help="list grants as JSON lines")
    listing.add_argument("--master-account", default=None, help="only this master's OmniAccount")
    create = gsub.add_parser("create", help="create a grant for a master that has logged in")
    create.add_argument("--master-wallet", required=True, help="the master's EVM address")
    create.add_argument("--agent-wallet", required=True)
    create.add_argument("--scope", required=True)
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument("--expires-at", type=int, help="unix seconds")
    when.add_argument("--ttl", type=int, help="seconds from now")
    create.add_argument(
        "--max-uses", type=int, default=None, help="mints the agent may make under it (default: no limit)"
    )
    revoke = gsub.add_parser("revoke", help="revoke a grant now")
    revoke.add_argument("grant_id")

    audit = sub.add_parser("audit", help="the audit chain of logins and mints (works on BROKER_DB_URL)")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    asub.add_parser("verify", help="check every row's hash and link; exit 1 if the chain is broken")
    tail = asub.add_parser("tail", help="the last rows as JSON lines")
    tail.add_argument("-n", "--lines", type=int, default=20)
    export = asub.add_parser("export", help="every row as JSON lines, oldest first")
    export.add_argument("--after", type=int, default=0, help="only rows after this seq")

    oidc_parser = sub.add_parser("oidc", help="the OIDC signing key (BROKER_OIDC_KEYPAIR_PATH)")
    osub = oidc_parser.add_subparsers(dest="oidc_command", required=True)
    osub.add_parser("rotate", help="a new signing key; the old one stays published until its tokens expired")
    return parser


@quiet_broken_pipe
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        try:
            config = config_from_env(
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                log_format=args.log_format,
                skip_startup_check=args.skip_startup_check or None,
            )
        except BrokerConfigError as exc:
            print(f"agentkeys-broker: configuration error: {exc}", file=sys.stderr)
            return 2
        configure_logging(config.log_level, config.log_format)
        return serve(config)
    if args.command == "oidc":
        return oidc_command(args)
    try:
        db_url, schema = database_from_env(os.environ)
    except BrokerConfigError as exc:
        print(f"agentkeys-broker: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "audit":
            return asyncio.run(audit_command(db_url, schema, args))
        return asyncio.run(grants_command(db_url, schema, args))
    except StorageError as exc:
        print(f"agentkeys-broker: {exc}", file=sys.stderr)
        return 1


def serve(config: BrokerConfig) -> int:
    """Serve until SIGTERM/SIGINT (`broker.server`); the start lines and the access log go to
    standard error, the listen address also to standard output."""

    def announce(url: str) -> None:
        print(f"agentkeys-broker listening on {url}", flush=True)

    try:
        asyncio.run(serve_until_stopped(config, create_app(config), announce))
    except (TeeKeyError, SessionKeyError, StorageError, OidcKeyError, StartupCheckFailed) as exc:
        print(f"agentkeys-broker: cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"agentkeys-broker: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def grants_command(db_url: str, schema: str | None, args: argparse.Namespace) -> int:
    db = open_database(db_url, schema=schema)
    await db.open(migrate=False)
    try:
        now = int(time.time())
        if args.grants_command == "list":
            for grant in await db.run(store.list_grants, args.master_account):
                print(json.dumps(grant.to_json(now)))
            return 0
        if args.grants_command == "revoke":
            audit = _operator_audit("grant_revoke", now, args.grant_id)
            outcome = await db.run(
                lambda: store.revoke_grant(grant_id=args.grant_id, master_omni_account=None, audit=audit)
            )
            print(outcome)
            return 0 if outcome == "revoked" else 1
        return await _create(db, args, now)
    finally:
        await db.close()


async def _create(db: Any, args: argparse.Namespace, now: int) -> int:
    expires_at = args.expires_at if args.expires_at is not None else now + args.ttl
    master_wallet = args.master_wallet.lower()
    master = await db.run(store.find_user_by_identity, "evm", master_wallet)
    if master is None:
        print(f"agentkeys-broker: no user has logged in with wallet {master_wallet}", file=sys.stderr)
        return 1
    try:  # the same rules as POST /v1/grant/create
        agent, scope, expires_at = validate_grant_request(
            {"agent_wallet": args.agent_wallet, "scope": args.scope, "expires_at": expires_at}, master_wallet, now
        )
        max_uses = validate_max_uses({"max_uses": args.max_uses})
    except BrokerError as exc:
        print(f"agentkeys-broker: {exc.message}", file=sys.stderr)
        return 2
    audit = _operator_audit("grant_create", now, f"{master_wallet}->{agent}")
    grant = await db.run(
        lambda: store.create_grant(
            master_omni_account=master.omni_account,
            master_wallet=master_wallet,
            agent_wallet=agent,
            scope=scope,
            expires_at=expires_at,
            max_uses=max_uses,
            audit=audit,
        )
    )
    if grant is None:
        existing = await db.run(store.find_open_grant, master_wallet, agent)
        which = f" ({existing.grant_id})" if existing is not None else ""
        print(
            f"agentkeys-broker: {master_wallet} already has an active grant for agent {agent}{which}: revoke it first",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(grant.to_json(now)))
    return 0


def oidc_command(args: argparse.Namespace) -> int:
    path = oidc_keypair_path(os.environ)
    try:
        keys, retired = rotate(path, int(time.time()))
    except OidcKeyError as exc:
        print(f"agentkeys-broker: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "path": str(path),
                "kid": keys.kid,
                "retired_kid": retired.kid,
                "retired_published_until": retired.publish_until,
            }
        )
    )
    return 0


async def audit_command(db_url: str, schema: str | None, args: argparse.Namespace) -> int:
    db = open_database(db_url, schema=schema)
    await db.open(migrate=False)
    try:
        if args.audit_command == "verify":
            verdict = await audit_chain.verify(db)
            print(json.dumps(verdict.to_json()))
            return 0 if verdict.intact else 1
        if args.audit_command == "tail":
            for row in await db.run(audit_chain.last_rows, max(1, min(args.lines, 100_000))):
                print(json.dumps(row.to_json()))
            return 0
        async for page in audit_chain.pages(db, args.after):
            for row in page:
                print(json.dumps(row.to_json()))
        return 0
    finally:
        await db.close()


def _operator_audit(event: str, now: int, detail: str) -> AuditEvent:
    return AuditEvent(event=event, outcome="ok", occurred_at=now, remote_addr="operator", detail=detail)


if __name__ == "__main__":
    raise SystemExit(main())
