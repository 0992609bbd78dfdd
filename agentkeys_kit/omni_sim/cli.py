"""`omni-sim run --host --port --profile --error-era --local-dir`.

Configuration comes from the worker's own `OE_*` variables (see `omni_sim.config`); flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from agentkeys_kit.omni_sim.config import ConfigError, SimConfig, config_from_env
from agentkeys_kit.omni_sim.keystore import KeystoreError
from agentkeys_kit.omni_sim.server import SimServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni-sim", description="Simulator of the Heima omni-executor JSON-RPC")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve JSON-RPC over HTTP and WebSocket on one port")
    run.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=None, help="port (default: OE_PUMPX_WORKER_URL's, else 2100)")
    run.add_argument("--profile", choices=["upstream", "agentkeys-patch"], default=None)
    run.add_argument("--error-era", choices=["current", "legacy"], default=None)
    run.add_argument("--local-dir", default=None, help="worker local directory (keystore/ lives here)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_env(
            host=args.host,
            port=args.port,
            profile=args.profile,
            error_era=args.error_era,
            local_dir=args.local_dir,
        )
    except ConfigError as exc:
        print(f"omni-sim: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config))
    except KeystoreError as exc:
        print(f"omni-sim: keystore error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"omni-sim: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(config: SimConfig) -> None:
    async with SimServer(config) as sim:
        ctx = sim.context
        print(
            f"omni-sim listening on {sim.url} (ws: {sim.ws_url})\n"
            f"  profile={ctx.profile.name} error-era={ctx.errors.era}"
            f" local-dir={config.local_dir}\n"
            f"  pumpx API={config.pumpx_api_base_url}"
            f" agentkeys API={config.agentkeys_api_base_url}\n"
            f"  JWT public key: {sim.url}_sim/jwt-public-key\n"
            f"{login_summary(config)}\n"
            + "".join(f"  mailer {mailer.describe()}\n" for mailer in config.mailers.values()),
            end="",
            flush=True,
        )
        await asyncio.Event().wait()


def login_summary(config: SimConfig) -> str:
    """OAuth2 clients (ids only, never secrets), provider token endpoints, passkey overrides, the
    EntryPoint and the backend signers of ``omni_submitUserOpWithAuth``."""
    oauth = ", ".join(
        f"{client}:{'+'.join(sorted(providers))}" for client, providers in sorted(config.oauth2_clients.items())
    )
    endpoints = ", ".join(f"{provider}={ep.token_url}" for provider, ep in config.oauth2_providers.items())
    passkeys = ", ".join(
        f"{client}: rp_id={pk.rp_id} origins={','.join(pk.allowed_origins)}"
        for client, pk in sorted(config.passkey_overrides.items())
    )
    return (
        f"  OAuth2 clients: {oauth or 'none'}; token endpoints: {endpoints}\n"
        f"  passkey overrides: {passkeys or 'none (compiled-in RP ids and origins)'}\n"
        f"  wildmeta API={config.wildmeta_api_url} EntryPoint=0x{config.entry_point_address.hex()}\n"
        f"  wildmeta backend key: {config.wildmeta_backend_ecdsa_pubkey.hex()}"
        f" agentkeys backend key: {config.agentkeys_backend_ecdsa_pubkey.hex()}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
