"""The systems under test, chosen at run time, and what each can offer.

* TEE ``sim`` — the simulator started in-process for every case (fresh stores, its clock under the
  harness's control), in profile ``upstream`` or ``agentkeys-patch``, wired to the harness's
  parties. It signs with a fresh key, or with ``--tee-key FILE`` (a private key) so that a deployed
  broker pinned to that key accepts its tokens (``--tee sim --broker URL``).
* TEE URL — a worker someone else runs, configured with the lines ``conformance serve`` prints.
  Nothing about it is assumed: its JWT key comes with ``--tee-key`` (its ``auth_token_key.bin``,
  which also lets the harness sign as the worker, or only its public key) and what else it offers
  is declared (``--tee-mailer``, ``--tee-clock``, ``--tee-sim-endpoints`` or the target file).
* Broker ``local`` — started in-process for every case on a fresh SQLite database pinned to the
  TEE key; ``none``; or a URL.

Capabilities decide which cases apply (`model.CAPABILITIES`); `missing_reason` says in one
sentence why a target lacks one, and that sentence is the *not applicable* reason of the case.
``oauth2-provider`` (the worker exchanges OAuth2 codes at the harness's fake Google) is the in-process
simulator's, or an omni-sim URL's declared with ``--tee-oauth2-provider harness``, which then gets
the simulator-only ``OE_SIM_*`` endpoint lines; a real worker cannot offer it: it compiles in
Google's and Apple's endpoints (`oauth-providers/src/provider_config.rs@1c730467`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.app import create_app as create_broker_app
from agentkeys_kit.broker.config import config_from_env as broker_config
from agentkeys_kit.conformance.parties import MAILERS, Parties
from agentkeys_kit.omni_sim.config import config_from_env as sim_config
from agentkeys_kit.omni_sim.server import ServedApp, SimServer

KIT_VERSION = "0.1.0"
PROFILES = ("upstream", "agentkeys-patch")
#: the worker revisions whose error objects a target follows (`protocol.errors.ErrorEra`)
ERROR_ERAS = ("current", "legacy")
#: how a case may have the in-process simulator reach an API (`base_urls:`): the receiver's prefix
#: with (default) or without the trailing slash, or the receiver's root with or without it. The
#: worker joins every path with `Url::join`, so without the slash the prefix's last segment is
#: replaced and the call lands at the receiver's root.
BASE_URL_FORMS = ("prefix/", "prefix", "root/", "root")
BASE_URL_VARIABLES = {
    "pumpx": "OE_PUMPX_API_BASE_URL",
    "agentkeys": "OE_AGENTKEYS_API_BASE_URL",
    "wildmeta": "OE_WILDMETA_API_URL",
}
SIM_CALLBACK_TIMEOUT = "3"  # the in-process simulator gives up on a silent callback after 3 s


class TargetError(ValueError):
    """A target that cannot be used as given."""


# ---------------------------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class TeeKey:
    public: rsa.RSAPublicKey
    private: rsa.RSAPrivateKey | None
    source: str  # the file, or "generated"

    @property
    def kind(self) -> str:
        return "private key: the harness can sign as the worker" if self.private else "public key only"


def load_tee_key(path: str | Path) -> TeeKey:
    """The worker's JWT key from a file: its ``auth_token_key.bin`` (PKCS#1 DER private key, the
    worker's own format), any PEM/DER RSA private key, or a PEM/DER RSA public key (SPKI or PKCS#1).

    Unlike the broker, which refuses a private key (it must never be able to sign as the worker),
    the harness takes one: with it, it mints tokens as the worker for the token attack cases."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TargetError(f"--tee-key {source}: cannot read: {exc.strerror or exc}") from None
    loaded: object = None
    for load_private in (serialization.load_der_private_key, serialization.load_pem_private_key):
        try:
            loaded = load_private(data, None)
            break
        except (ValueError, TypeError):
            continue
    if loaded is not None:
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise TargetError(f"--tee-key {source}: not the worker's RSA key but {type(loaded).__name__}")
        return TeeKey(_sized(loaded.public_key(), source), loaded, source)
    for load_public in (serialization.load_der_public_key, serialization.load_pem_public_key):
        try:
            loaded = load_public(data)
            break
        except (ValueError, TypeError):
            continue
    if loaded is None:
        raise TargetError(
            f"--tee-key {source}: not an RSA key (expected the worker's auth_token_key.bin, "
            "or a PEM/DER RSA private or public key)"
        )
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise TargetError(f"--tee-key {source}: not the worker's RSA key but {type(loaded).__name__}")
    return TeeKey(_sized(loaded, source), None, source)


def _sized(key: rsa.RSAPublicKey, source: str) -> rsa.RSAPublicKey:
    if key.key_size < 2048:
        raise TargetError(f"--tee-key {source}: RSA-{key.key_size} is too small for the worker's RS256 key")
    return key


def generated_tee_key() -> TeeKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return TeeKey(private.public_key(), private, "generated")


# ---------------------------------------------------------------------------------------------- TEE


@dataclass(slots=True)
class TeeTarget:
    kind: str  # "sim" or "url"
    url: str | None
    profile: str
    key: TeeKey
    #: how the worker delivers verification mails: sendgrid / smtp (to the harness), console, none
    mailer: str = "none"
    #: the worker's clock can be moved through the simulator's /_sim/clock
    clock: bool = False
    #: the worker serves the simulator's /_sim/ endpoints
    sim_endpoints: bool = False
    #: the worker exchanges OAuth2 codes at the harness's fake Google (an omni-sim given the
    #: simulator-only OE_SIM_* endpoint lines; never a real worker)
    oauth2_provider: bool = False
    #: the error era: the simulator's ``--error-era``; declared for a URL (which worker revision)
    error_era: str = "current"
    local_dir: Path | None = None  # the in-process simulator's (set by the harness)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.key.public

    @property
    def private_key(self) -> rsa.RSAPrivateKey | None:
        return self.key.private

    @property
    def label(self) -> str:
        era = "" if self.error_era == "current" else f", {self.error_era} era"
        return f"sim ({self.profile}{era})" if self.kind == "sim" else f"{self.url} ({self.profile}{era})"

    @property
    def version(self) -> str:
        return f"omni_sim {KIT_VERSION}" if self.kind == "sim" else "unknown (the worker exposes no version RPC)"

    @property
    def capabilities(self) -> set[str]:
        if self.kind == "sim":
            return {"sim-clock", "mail", "tee-signing-key", "sim-internals", "oauth2-provider", "sim-config"}
        offered = {"mail"} if self.mailer in ("sendgrid", "smtp") else set()
        offered |= {"sim-clock"} if self.clock else set()
        offered |= {"sim-internals"} if self.sim_endpoints else set()
        offered |= {"oauth2-provider"} if self.oauth2_provider else set()
        return offered | ({"tee-signing-key"} if self.key.private is not None else set())

    def declared(self) -> dict[str, str]:
        """What the run was told about the worker (for the reports)."""
        if self.kind == "sim":
            return {
                "worker": "in-process simulator, configured by the harness",
                "JWT key": self.key.source,
                "error era": self.error_era,
            }
        return {
            "error era": self.error_era,
            "JWT key": f"{self.key.source} ({self.key.kind})",
            "mailer": self.mailer,
            "clock": "movable (/_sim/clock)" if self.clock else "not movable",
            "simulator endpoints": "yes" if self.sim_endpoints else "no",
            "OAuth2 provider": (
                "the harness's fake Google (omni-sim's OE_SIM_* endpoints)"
                if self.oauth2_provider
                else "Google's and Apple's own (compiled into the worker)"
            ),
        }


def tee_target(
    spec: str,
    profile: str,
    key_file: str | Path | None,
    *,
    mailer: str | None = None,
    clock: bool = False,
    sim_endpoints: bool = False,
    oauth2_provider: bool = False,
    error_era: str = "current",
) -> TeeTarget:
    if profile not in PROFILES:
        raise TargetError(f"profile {profile!r}: expected upstream or agentkeys-patch")
    if error_era not in ERROR_ERAS:
        raise TargetError(f"error era {error_era!r}: expected current or legacy")
    if mailer is not None and mailer not in MAILERS:
        raise TargetError(f"mailer {mailer!r}: expected one of {', '.join(MAILERS)}")
    if spec == "sim":
        if mailer is not None or clock or sim_endpoints or oauth2_provider:
            raise TargetError(
                "the in-process simulator's mailer, clock, endpoints and OAuth2 provider are the harness's: "
                "declare them for a URL"
            )
        if key_file is None:
            return TeeTarget("sim", None, profile, generated_tee_key(), error_era=error_era)
        key = load_tee_key(key_file)
        if key.private is None:
            raise TargetError(
                f"--tee sim --tee-key {key_file}: the simulator signs with this key, so it must be a private key"
            )
        return TeeTarget("sim", None, profile, key, error_era=error_era)
    if not spec.startswith(("http://", "https://")):
        raise TargetError(f"--tee must be 'sim' or an http(s) URL, not {spec!r}")
    if key_file is None:
        raise TargetError("--tee URL needs --tee-key: the worker's auth_token_key.bin or its JWT public key")
    key = load_tee_key(key_file)
    return TeeTarget(
        "url",
        spec.rstrip("/") + "/",
        profile,
        key,
        mailer or "none",
        clock,
        sim_endpoints,
        oauth2_provider=oauth2_provider,
        error_era=error_era,
    )


@dataclass(slots=True)
class TeeSession:
    url: str
    ws_url: str
    sim: SimServer | None = None

    def info(self) -> dict[str, Any]:
        return {"url": self.url, "ws_url": self.ws_url}


def base_url(receiver_url: str, api: str, form: str) -> str:
    """The base URL of `api` at the receiver (which ends in ``/``) in one of `BASE_URL_FORMS`."""
    if form not in BASE_URL_FORMS:
        raise TargetError(f"base URL form {form!r}: expected one of {', '.join(BASE_URL_FORMS)}")
    root = receiver_url.rstrip("/")
    if form.startswith("root"):
        return root + ("/" if form.endswith("/") else "")
    return f"{root}/{api}" + ("/" if form.endswith("/") else "")


async def start_tee(target: TeeTarget, parties: Parties, base_urls: dict[str, str] | None = None) -> TeeSession:
    """`base_urls` (API → one of `BASE_URL_FORMS`) changes where the in-process simulator calls."""
    if target.kind == "url":
        assert target.url is not None
        return TeeSession(target.url, "ws" + target.url[4:])
    assert target.local_dir is not None, "the harness gives the in-process simulator its directory"
    env = {
        **parties.worker_env("sendgrid", oauth2_provider=True),
        "OE_SIM_CALLBACK_TIMEOUT_SECONDS": SIM_CALLBACK_TIMEOUT,
    }
    for api, form in (base_urls or {}).items():
        env[BASE_URL_VARIABLES[api]] = base_url(parties.receiver.url, api, form)
    config = sim_config(
        env,
        host="127.0.0.1",
        port=0,
        profile=target.profile,
        error_era=target.error_era,
        local_dir=target.local_dir,
    )
    sim = SimServer(config, jwt_key=target.key.private)
    await sim.start()
    return TeeSession(sim.url, sim.ws_url, sim)


# ---------------------------------------------------------------------------------------------- broker


#: The broker's login backends (`BROKER_LOGIN_BACKEND`); a case that logs in at the broker needs
#: the capability ``broker-login-<backend>``.
BROKER_LOGIN_BACKENDS = ("heima", "local")


@dataclass(slots=True)
class BrokerTarget:
    kind: str  # "local", "url" or "none"
    url: str | None
    #: the login backend a URL broker was declared with (``--broker-login``); a local broker is
    #: started with whichever backend the case needs
    login: str | None = None

    @property
    def label(self) -> str:
        return {"local": "local (in-process, SQLite)", "none": "none"}.get(self.kind, self.url or "?")

    @property
    def capabilities(self) -> set[str]:
        if self.kind == "none":
            return set()
        if self.kind == "local":
            logins = (f"broker-login-{backend}" for backend in BROKER_LOGIN_BACKENDS)
            return {"broker", "broker-clock", "broker-internals", *logins}
        return {"broker", *([f"broker-login-{self.login}"] if self.login else [])}


def broker_target(spec: str | None, login: str | None = None) -> BrokerTarget:
    if login is not None and login not in BROKER_LOGIN_BACKENDS:
        raise TargetError(f"--broker-login must be one of {', '.join(BROKER_LOGIN_BACKENDS)}, not {login!r}")
    if spec in (None, "none"):
        return BrokerTarget("none", None)
    if spec == "local":
        return BrokerTarget("local", None)
    assert spec is not None
    if not spec.startswith(("http://", "https://")):
        raise TargetError(f"--broker must be 'local', 'none' or an http(s) URL, not {spec!r}")
    return BrokerTarget("url", spec.rstrip("/") + "/", login)


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    """How a local broker is started for a case: its login backend and where it reaches the
    harness (the worker it names in ``/v1/auth/config``, the SMTP sink its e-mail codes go to)."""

    backend: str = "heima"
    worker_url: str | None = None
    smtp_url: str | None = None

    def env(self) -> dict[str, str]:
        env = {"BROKER_LOGIN_BACKEND": self.backend}
        if self.worker_url:
            env["BROKER_HEIMA_WORKER_URL"] = self.worker_url
        if self.backend == "local" and self.smtp_url:
            env["BROKER_SMTP_URL"] = self.smtp_url
        return env


@dataclass(slots=True)
class BrokerSession:
    url: str
    served: ServedApp | None = None
    app: web.Application | None = None
    directory: Path | None = None
    clock_offset: list[float] = field(default_factory=lambda: [0.0])
    #: once `set`, the clock stands at this instant (plus what `advance` adds) instead of running
    frozen_at: list[float | None] = field(default_factory=lambda: [None])

    def now(self) -> float:
        base = self.frozen_at[0]
        return (time.time() if base is None else base) + self.clock_offset[0]

    def advance(self, seconds: float) -> None:
        """Move the local broker's clock forward (grant expiry, token expiry)."""
        self.clock_offset[0] += seconds

    def set(self, at: float) -> None:
        """Stand the local broker's clock at `at` (unix seconds) until the case ends: a case can
        then check a boundary at exactly the instant, which a running clock cannot promise."""
        self.frozen_at[0] = at
        self.clock_offset[0] = 0.0


async def start_broker(
    target: BrokerTarget, tee_public_key_pem: Path, directory: Path, login: BrokerLogin | None = None
) -> BrokerSession | None:
    """`directory` (created here, removed by `stop_broker`) holds the local broker's database and
    its session key."""
    if target.kind == "none":
        return None
    if target.kind == "url":
        assert target.url is not None
        return BrokerSession(target.url)
    directory.mkdir(parents=True)  # noqa: ASYNC240 - one small mkdir per case, before the broker serves
    config = broker_config(
        {
            "BROKER_DB_URL": f"sqlite:///{directory / 'broker.sqlite3'}",
            "BROKER_TEE_JWT_PUBLIC_KEY": str(tee_public_key_pem),
            **(login or BrokerLogin()).env(),
        }
    )
    session = BrokerSession("", ServedApp(), directory=directory)
    session.app = create_broker_app(config, clock=session.now)
    assert session.served is not None
    await session.served.start(session.app)
    session.url = session.served.url
    return session


async def stop_broker(session: BrokerSession | None) -> None:
    if session is None:
        return
    if session.served is not None:
        await session.served.close()
    if session.directory is not None:
        shutil.rmtree(session.directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- capabilities


def missing_reason(capability: str, tee: TeeTarget, broker: BrokerTarget) -> str:
    """Why the target lacks `capability`, in one sentence (the case's *not applicable* reason)."""
    if capability == "mail":
        if tee.mailer == "console":
            return "the worker's mailer is console: its codes go to its log, which the harness cannot read"
        return (
            "no mailer declared that delivers to the harness (declare mailer sendgrid and configure the "
            "worker's OE_MAILER_* lines; the harness serves a SendGrid stand-in)"
        )
    if capability == "tee-signing-key":
        return "needs the worker's private key (--tee-key auth_token_key.bin): the case signs tokens as the worker"
    if capability == "sim-clock":
        return (
            "needs a worker clock the harness can move (only the simulator's /_sim/clock; "
            "declare clock: sim for an omni-sim URL)"
        )
    if capability == "sim-internals":
        return "needs the simulator's /_sim/ endpoints"
    if capability == "oauth2-provider":
        return (
            "needs a worker that exchanges OAuth2 codes at the harness's fake Google: a real worker posts them to "
            "Google's and Apple's own token endpoints (only an omni-sim can be pointed elsewhere: "
            "declare --tee-oauth2-provider harness)"
        )
    if capability == "broker":
        return "no broker (--broker none)"
    if capability == "broker-clock":
        return "needs a broker clock the harness can move (only with --broker local)"
    if capability.startswith("broker-login-"):
        backend = capability.removeprefix("broker-login-")
        return (
            f"needs a broker whose login backend is {backend} (--broker local, or declare a URL broker's "
            f"with --broker-login {backend})"
        )
    if capability == "broker-internals":
        return "needs the broker's database (its audit rows, a user's second factor): only with --broker local"
    if capability == "sim-config":
        return (
            "needs a worker the harness configures per case (its API base URLs): only the in-process "
            "simulator (--tee sim)"
        )
    return f"the target lacks {capability}"
