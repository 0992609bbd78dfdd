"""The systems under test, chosen at run time.

* TEE: ``sim`` — the simulator started in-process for every case (fresh stores, its clock under
  the harness's control), in profile ``upstream`` or ``agentkeys-patch``, wired to the harness's
  callback receiver and SMTP sink; or a URL — a worker someone else runs, configured with the
  addresses the harness prints, whose JWT key is given with ``--tee-key`` (its public key, or its
  `auth_token_key.bin` to also let the harness mint tokens as the worker would).
* Broker: ``local`` — the broker started in-process for every case on a fresh SQLite database,
  pinned to the TEE key; or a URL.

Capabilities decide which cases apply: ``sim-clock`` (the harness can move the worker's clock),
``smtp`` (the worker mails codes to the harness's sink), ``tee-signing-key`` (the harness holds
the TEE private key), ``broker`` (a broker is configured), ``broker-clock`` (the local broker,
whose clock the harness moves), ``sim-internals``, ``oauth2-provider`` (the worker exchanges
OAuth2 codes at the harness's fake Google: the simulator only, since the worker compiles in
Google's and Apple's token endpoints).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.app import create_app as create_broker_app
from agentkeys_kit.broker.config import config_from_env as broker_config
from agentkeys_kit.broker.tee_keys import TeeKeyError, parse_public_key
from agentkeys_kit.conformance.fake_google import FakeGoogle
from agentkeys_kit.conformance.mail_sink import MailSink
from agentkeys_kit.conformance.receiver import CallbackReceiver
from agentkeys_kit.omni_sim.config import config_from_env as sim_config
from agentkeys_kit.omni_sim.keystore import load_auth_token_key
from agentkeys_kit.omni_sim.server import ServedApp, SimServer

KIT_VERSION = "0.1.0"


class TargetError(ValueError):
    """A target that cannot be used as given."""


@dataclass(slots=True)
class TeeTarget:
    kind: str  # "sim" or "url"
    url: str | None
    profile: str
    public_key: rsa.RSAPublicKey
    private_key: rsa.RSAPrivateKey | None
    local_dir: Path | None = None
    capabilities: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"sim ({self.profile})" if self.kind == "sim" else f"{self.url} ({self.profile})"

    @property
    def version(self) -> str:
        return f"omni_sim {KIT_VERSION}" if self.kind == "sim" else "unknown (the worker exposes no version RPC)"


def tee_target(spec: str, profile: str, key_file: str | None) -> TeeTarget:
    if spec == "sim":
        local = Path(tempfile.mkdtemp(prefix="conformance-sim-"))
        private = load_auth_token_key(local)
        return TeeTarget(
            "sim",
            None,
            profile,
            private.public_key(),
            private,
            local,
            {"sim-clock", "smtp", "tee-signing-key", "sim-internals", "oauth2-provider"},
        )
    if not spec.startswith(("http://", "https://")):
        raise TargetError(f"--tee must be 'sim' or an http(s) URL, not {spec!r}")
    if key_file is None:
        raise TargetError("--tee URL needs --tee-key (the worker's JWT public key or its auth_token_key.bin)")
    data = Path(key_file).read_bytes()
    signing_key = _maybe_private(data)
    try:
        public = parse_public_key(data, key_file)
    except TeeKeyError as exc:
        raise TargetError(str(exc)) from None
    capabilities = {"smtp"} | ({"tee-signing-key"} if signing_key is not None else set())
    return TeeTarget("url", spec.rstrip("/") + "/", profile, public, signing_key, None, capabilities)


def _maybe_private(data: bytes) -> rsa.RSAPrivateKey | None:
    from cryptography.hazmat.primitives import serialization

    for load in (serialization.load_der_private_key, serialization.load_pem_private_key):
        try:
            key = load(data, None)
        except (ValueError, TypeError):
            continue
        return key if isinstance(key, rsa.RSAPrivateKey) else None
    return None


@dataclass(slots=True)
class TeeSession:
    url: str
    ws_url: str
    sim: SimServer | None = None

    def info(self) -> dict[str, Any]:
        return {"url": self.url, "ws_url": self.ws_url}


async def start_tee(
    target: TeeTarget,
    receiver: CallbackReceiver,
    sink: MailSink,
    google: FakeGoogle | None = None,
    backend_pubkey: str | None = None,
) -> TeeSession:
    if target.kind == "url":
        assert target.url is not None
        return TeeSession(target.url, "ws" + target.url[4:])
    env = sim_env(receiver, sink, google, backend_pubkey)
    config = sim_config(env, host="127.0.0.1", port=0, profile=target.profile, local_dir=target.local_dir)
    sim = SimServer(config, jwt_key=target.private_key)
    await sim.start()
    return TeeSession(sim.url, sim.ws_url, sim)


def sim_env(
    receiver: CallbackReceiver,
    sink: MailSink,
    google: FakeGoogle | None = None,
    backend_pubkey: str | None = None,
) -> dict[str, str]:
    """What a worker under test must be configured with to call the harness."""
    env = {
        "OE_PUMPX_API_BASE_URL": receiver.api_url("pumpx"),
        "OE_AGENTKEYS_API_BASE_URL": receiver.api_url("agentkeys"),
        "OE_WILDMETA_API_URL": receiver.url,
        "OE_SIM_CALLBACK_TIMEOUT_SECONDS": "3",
    }
    for client in ("WILDMETA", "AGENTKEYS"):
        env[f"OE_MAILER_TYPE_{client}"] = "smtp"
        env[f"OE_MAILER_SMTP_URL_{client}"] = sink.url
        # OAuth2 clients registered at the fake Google (`Harness.__aenter__`); Apple's token
        # endpoint is pointed at the same provider, which issues the claims Apple's IdToken needs.
        for provider in ("GOOGLE", "APPLE"):
            env[f"OE_{provider}_CLIENT_ID_{client}"] = f"{client.lower()}-conformance"
            env[f"OE_{provider}_CLIENT_SECRET_{client}"] = f"{client.lower()}-secret"
        if backend_pubkey is not None:
            env[f"OE_{client}_BACKEND_ECDSA_PUBKEY"] = backend_pubkey
    if google is not None:
        for provider in ("GOOGLE", "APPLE"):
            env[f"OE_SIM_{provider}_AUTHORIZE_URL"] = google.authorization_endpoint
            env[f"OE_SIM_{provider}_TOKEN_URL"] = google.token_endpoint
    return env


@dataclass(slots=True)
class BrokerTarget:
    kind: str  # "local", "url" or "none"
    url: str | None

    @property
    def label(self) -> str:
        return {"local": "local (in-process, SQLite)", "none": "none"}.get(self.kind, self.url or "?")


def broker_target(spec: str | None) -> BrokerTarget:
    if spec in (None, "none"):
        return BrokerTarget("none", None)
    if spec == "local":
        return BrokerTarget("local", None)
    assert spec is not None
    if not spec.startswith(("http://", "https://")):
        raise TargetError(f"--broker must be 'local', 'none' or an http(s) URL, not {spec!r}")
    return BrokerTarget("url", spec.rstrip("/") + "/")


@dataclass(slots=True)
class BrokerSession:
    url: str
    served: ServedApp | None = None
    app: web.Application | None = None
    clock_offset: list[float] = field(default_factory=lambda: [0.0])

    def now(self) -> float:
        return time.time() + self.clock_offset[0]

    def advance(self, seconds: float) -> None:
        """Move the local broker's clock forward (grant expiry, token expiry)."""
        self.clock_offset[0] += seconds


async def start_broker(target: BrokerTarget, tee_public_key_pem: Path) -> BrokerSession | None:
    if target.kind == "none":
        return None
    if target.kind == "url":
        assert target.url is not None
        return BrokerSession(target.url)
    directory = Path(tempfile.mkdtemp(prefix="conformance-broker-"))
    config = broker_config(
        {
            "BROKER_DB_URL": f"sqlite:///{directory / 'broker.sqlite3'}",
            "BROKER_TEE_JWT_PUBLIC_KEY": str(tee_public_key_pem),
        }
    )
    session = BrokerSession("", ServedApp())
    session.app = create_broker_app(config, clock=session.now)
    assert session.served is not None
    await session.served.start(session.app)
    session.url = session.served.url
    return session


async def stop_broker(session: BrokerSession | None) -> None:
    if session is not None and session.served is not None:
        await session.served.close()
